#!/usr/bin/env python
"""The objective ablation in miniature: same start, same steps, same data; only the loss changes.

For each seed, ``hf-cf train``'s embedded default (the same code path as a real
fine-tune) pre-trains a tiny CLIP with InfoNCE (a tiny SigLIP with its sigmoid loss) on factual pairs (the stand-in for a pretrained
model, made once per seed and shared by every objective), then fine-tunes it once per objective
with identical hyper-parameters. It prints Markdown tables of the group score per edit kind, mean
and spread over seeds, on the held-out test split (novel colour-shape compositions) and on the
same test scenes drawn in a rendering style training never saw, and writes ``ablation.json``::

    python examples/run_ablation.py                       # 3 seeds
    python examples/run_ablation.py --seeds 0 1 --objectives clip grouping --output_dir runs/ablation
    python examples/run_ablation.py --seeds 0 1 --objectives negclip read "read w/o reconstruction" "read w/o paraphrase" --output_dir runs/ablation-read
    python examples/run_ablation.py --model_type siglip --seeds 0 1 --objectives sigmoid sigmoid-grouping grouping --output_dir runs/ablation-siglip
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from hf_counterfactual.commands.train import main as train

# Row name -> hf-cf train arguments. "cf-vlm w/o csd" isolates CF-VLM's L_csd (see the README).
OBJECTIVES = {
    "clip": ["--objective", "clip"],
    "negclip": ["--objective", "negclip"],
    "grouping": ["--objective", "grouping"],
    "cf-vlm": ["--objective", "cf-vlm"],
    "cf-vlm w/o csd": ["--objective", "cf-vlm", "--loss_weights", "csd=0"],
    # READ-CLIP and its two additions to NegCLIP each alone (the tiny T5 decoder is pre-trained once per seed).
    "read": ["--objective", "read"],
    "read w/o reconstruction": ["--objective", "read", "--loss_weights", "reconstruction=0"],
    "read w/o paraphrase": ["--objective", "read", "--loss_weights", "paraphrase=0"],
    # READ with the counterfactual captions as negatives of the paraphrase term too (its use_negative_in_text_contrastive).
    "read, hard paraphrase": ["--objective", "read", "--loss_weights", "paraphrase=0,paraphrase_hard=0.5"],
    # SigLIP's sigmoid loss, alone and with the counterfactuals (--model_type siglip).
    "sigmoid": ["--objective", "sigmoid"],
    "sigmoid-negclip": ["--objective", "sigmoid-negclip"],
    "sigmoid-grouping": ["--objective", "sigmoid-grouping"],
}
CLIP_OBJECTIVES = ["clip", "negclip", "grouping", "cf-vlm", "cf-vlm w/o csd"]
KINDS = ("attribute", "object", "count", "position", "relation")
# Table title -> where hf-cf train's results hold that evaluation's {"before", "after"}.
EVALUATIONS = {"held-out test split": lambda run: run, "held-out rendering style": lambda run: run["heldout_style"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objectives", nargs="+", default=CLIP_OBJECTIVES, choices=list(OBJECTIVES))
    parser.add_argument("--model_type", default="clip", choices=("clip", "siglip"), help="The tiny dual encoder to pre-train and fine-tune.")
    parser.add_argument("--output_dir", default="runs/ablation")
    parser.add_argument("--cache_dir", default=None, help="datasets cache directory")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    quiet = ["--logging_steps", "100", "--disable_tqdm", "True", *(["--cache_dir", args.cache_dir] if args.cache_dir else [])]
    results: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:
        start = os.path.join(args.output_dir, f"pretrained-start-seed{seed}")
        for objective in args.objectives:
            out = os.path.join(args.output_dir, f"{objective.replace(' ', '_').replace('/', '')}-seed{seed}")
            results.setdefault(objective, {})[seed] = train(
                [*OBJECTIVES[objective], "--model_type", args.model_type, "--seed", str(seed), "--pretrained_start_dir", start,
                 "--output_dir", out, *quiet]  # fmt: skip
            )
    with open(os.path.join(args.output_dir, "ablation.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(format_tables(results, args.seeds))


def _cell(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.1f} ± {100 * (max(values) - min(values)) / 2:.1f}"


def format_tables(results: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    """Group score (%) per edit kind, mean ± half the range over ``seeds``: the pretrained start, then
    each objective, on the test split and on the held-out rendering style."""
    tables = []
    for title, evaluation in EVALUATIONS.items():
        lines = [f"Group score (%), {title}:", "", "| objective | all | " + " | ".join(KINDS) + " |", "|---|" + "---|" * (len(KINDS) + 1)]
        first = next(iter(results.values()))
        rows = [("pretrained start", [evaluation(first[s])["before"] for s in seeds])]
        rows += [(f"`{objective}`", [evaluation(by_seed[s])["after"] for s in seeds]) for objective, by_seed in results.items()]
        for name, runs in rows:
            cells = [_cell([run[subset]["group_score"] for run in runs]) for subset in ("all", *KINDS)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


if __name__ == "__main__":
    main()
