"""How well a blind (text-only) model spots negatives, before and after debiasing (issue 12).

SugarCrepe (Hsieh et al. 2023) found that ARO/CREPE negatives can be told from true captions
without the image. This measures that on real COCO captions, with the half of SugarCrepe's
annotations in ``--data`` (no images needed):

1. the images are split into halves A and B by a seed (``--seeds``: one split per seed, cells are
   mean ± sd over them: a kind has a few hundred pairs, so one split's share moves by 2-4 points);
2. the **judge**, a Kneser-Ney n-gram LM (:class:`~hf_counterfactual.generation.plausibility.KneserNeyLM`,
   ``--order``, or ``--judge_order``), is fitted on the true captions of half A only;
3. on half B, pairs (true caption, negative) come from (i) SugarCrepe's own human-verified
   negatives, per subset, and (ii) :class:`~hf_counterfactual.generation.text_edits.RuleBasedEditor`
   run on the same half-B true captions, per edit kind (every edit it returns is a pair);
4. for each kind: the share of pairs where the judge prefers the true caption (higher mean
   log-probability per token; ties count one half; 50% = chance), before debiasing, after the gap
   filter and after adversarial refinement (SugarCrepe's, around 0, and the pipeline's default
   around the reliability-corrected centre of
   :func:`~hf_counterfactual.generation.plausibility.reliability_center`, estimated from the
   pipeline LM's half-data LMs as ``refine_split`` does), with the share of pairs kept.

The debiasing is what the generation pipeline would do: its blind scorer, the **pipeline LM**, is
fitted on the factual captions of the dataset being generated (here half B's true captions), and
its gaps pick what is kept; the judge never sees half B, so the shares are held out. ``refined by
the judge`` (balancing on the judge's own gaps) is 50% by construction and is there to show how
much refinement against the held-out model itself would keep. By default (``--cross_fit 5``) the
pipeline LM is cross-fitted as the generation stage does it (its own
:class:`~hf_counterfactual.generation.plausibility.CrossFitNgram`, one item per image):
each half-B image's pairs are scored by an LM fitted on the other 4 folds of half B's images, so no
caption is scored by a model that saw it; ``--cross_fit 0`` fits it on all of half B, and then it
prefers the true captions by memory.

Run (about 35 s on one core for the five splits; spaCy parses ~1,000 captions per split)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/bench_blind_negatives.py \
        [--data /work/shared/data/sugarcrepe-half] [--seeds 0,1,2,3,4] [--order 2] [--judge_order 3] \
        [--threshold 0.3] [--num_bins 10] [--cross_fit 5] [--refine_orders 1,2] [--json out.json]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hf_counterfactual.generation.plausibility import (  # noqa: E402
    CrossFitNgram,
    KneserNeyLM,
    adversarial_refine,
    filter_by_gap,
    preference_rate,
    reliability_center,
    score_gaps,
)

DEFAULT_DATA = "/work/shared/data/sugarcrepe-half"
SUBSET_KIND = {
    "replace_att": "attribute", "swap_att": "attribute", "add_att": "attribute",
    "replace_obj": "object", "swap_obj": "object", "add_obj": "object",
    "replace_rel": "relation",
}


def load_subsets(folder: str) -> dict[str, list[dict]]:
    """``{subset: [{"filename", "caption", "negative_caption"}, ...]}`` from SugarCrepe's layout."""
    paths = sorted(glob.glob(os.path.join(folder, "*.json")))
    if not paths:
        raise SystemExit(f"no SugarCrepe annotation files (*.json) in {folder}")
    out = {}
    for path in paths:
        with open(path) as f:
            entries = json.load(f)
        out[os.path.splitext(os.path.basename(path))[0]] = [entries[k] for k in sorted(entries, key=str)]
    return out


def split_images(subsets, seed: int) -> set[str]:
    """The file names of half A (a seeded permutation of the sorted image names)."""
    files = sorted({e["filename"] for entries in subsets.values() for e in entries})
    order = np.random.default_rng(seed).permutation(len(files))
    return {files[i] for i in order[: len(files) // 2]}


def captions_by_image(subsets, excluded=frozenset()) -> dict[str, list[str]]:
    """Each image's distinct true captions, in file order, for every image not in ``excluded``."""
    captions: dict[str, list[str]] = defaultdict(list)
    for entries in subsets.values():
        for e in entries:
            if e["filename"] not in excluded and e["caption"] not in captions[e["filename"]]:
                captions[e["filename"]].append(e["caption"])
    return captions


def pipeline_gaps(true, negative, image, captions_by_image, order, cross_fit, seed, halves=False):
    """Gaps of the pipeline LM: fitted on all of ``captions_by_image`` (the dataset's own true
    captions; ``cross_fit`` 0 or 1), or cross-fitted over ``cross_fit`` folds of its images with
    the generation stage's own :class:`CrossFitNgram` (an image is one input item). ``halves``: also
    the gaps of its two half-data LMs per fold (:meth:`CrossFitNgram.score_halves`), from which the
    refinement estimates its reliability-corrected centre as ``refine_split`` does."""
    if cross_fit <= 1:
        if halves:
            raise SystemExit("the reliability-centred refinement needs --cross_fit >= 2")
        lm = KneserNeyLM(order=order).fit(sorted({c for cs in captions_by_image.values() for c in cs}))
        return score_gaps(lm, true, negative)
    images = sorted(captions_by_image)
    item = {name: k for k, name in enumerate(images)}
    ngram = CrossFitNgram(order=order, num_folds=cross_fit, seed=seed).fit([captions_by_image[name] for name in images])
    owners = [item[name] for name in image]
    gaps = ngram.gaps(true, negative, owners)
    return (gaps, *ngram.half_gaps(true, negative, owners)) if halves else gaps


def evaluate(name, true, negative, kinds, image, judge, captions_b, args) -> list[dict]:
    kinds = np.asarray(kinds, dtype=object)
    judge_gap = score_gaps(judge, true, negative)
    own_gap, half_a, half_b = pipeline_gaps(true, negative, image, captions_b, args.order, args.cross_fit, args.seed, halves=True)
    filtered = filter_by_gap(own_gap, args.threshold)
    orders = [int(o) for o in args.refine_orders.split(",")] if args.refine_orders else [args.order]
    refine_gaps = [own_gap if o == args.order else pipeline_gaps(true, negative, image, captions_b, o, args.cross_fit, args.seed)
                   for o in orders]
    refined = adversarial_refine(refine_gaps, kinds, num_bins=args.num_bins, seed=args.refine_seed)
    # the pipeline's default: the n-gram gaps balanced around their reliability-corrected centre
    estimates = {kind: reliability_center(own_gap[kinds == kind], half_a[kinds == kind], half_b[kinds == kind]) for kind in set(kinds.tolist())}
    centers = {kind: [center if o == args.order else 0.0 for o in orders] for kind, (center, _) in estimates.items()}
    centred = adversarial_refine(refine_gaps, kinds, num_bins=args.num_bins, seed=args.refine_seed, center=centers)
    by_judge = adversarial_refine(judge_gap, kinds, num_bins=args.num_bins, seed=args.refine_seed)
    rows = []
    for kind in sorted(set(kinds.tolist()), key=lambda k: (SUBSET_KIND.get(k, k), k)):
        members = np.flatnonzero(kinds == kind)

        def share(kept):
            kept = np.intersect1d(kept, members)
            rate = preference_rate(judge_gap[kept])[None] if len(kept) else float("nan")
            return rate, len(kept) / len(members)

        rows.append({
            "negatives": name, "kind": kind, "pairs": int(len(members)),
            "before": share(members), "own_before": (preference_rate(own_gap[members])[None], 1.0),
            "filtered": share(filtered), "refined": share(refined), "filtered_refined": share(np.intersect1d(filtered, refined)),
            "centred": share(centred), "filtered_centred": share(np.intersect1d(filtered, centred)),
            "refined_by_judge": share(by_judge),
            "center": estimates[kind][0], "reliability": estimates[kind][1],
        })
    return rows


def rule_pairs(captions_b: dict[str, list[str]], args):
    from hf_counterfactual.generation.text_edits import DEFAULT_RULE_KINDS, RuleBasedEditor

    kinds = tuple(args.kinds.split(",")) if args.kinds else DEFAULT_RULE_KINDS  # order: off by default
    editor = RuleBasedEditor(pipeline=args.spacy_pipeline, kinds=kinds, seed=args.editor_seed)
    captions = sorted({c for cs in captions_b.values() for c in cs})
    image_of = {c: im for im, cs in sorted(captions_b.items()) for c in cs}
    true, negative, kind, image = [], [], [], []
    for caption, edits in zip(captions, editor.edit_batch(captions)):
        for edit in edits:
            true.append(caption)
            negative.append(edit.caption)
            kind.append(edit.edit)
            image.append(image_of[caption])
    return true, negative, kind, image


COLUMNS = (("before", "before"), ("own_before", "pipeline LM before"), ("filtered", "filtered"),
           ("refined", "refined (around 0)"), ("filtered_refined", "filtered + refined (around 0)"),
           ("centred", "refined (reliability centre)"), ("filtered_centred", "filtered + refined (reliability centre)"),
           ("refined_by_judge", "refined by the judge"))


def _cell(runs: list[tuple[float, float]]) -> str:
    """``rate / kept`` in %, as mean ± sd over the seeds when there are several."""
    rates = np.asarray([r for r, _ in runs], dtype=float)
    kept = 100 * float(np.mean([k for _, k in runs]))
    if np.isnan(rates).all():
        return f"- / {kept:.1f}"
    mean = 100 * np.nanmean(rates)
    spread = f" ± {100 * np.nanstd(rates):.1f}" if len(runs) > 1 else ""
    return f"{mean:.1f}{spread} / {kept:.1f}"


def markdown(rows_per_seed, args, seconds) -> str:
    seeds = len(rows_per_seed)
    lines = [
        f"Judge: KN {args.judge_order or args.order}-gram LM fitted on half A's true captions; pipeline LM: KN {args.order}-gram fitted on half B's own true captions"
        + (f" ({args.cross_fit}-fold cross-fitted)" if args.cross_fit > 1 else "")
        + f"; filter: pipeline gap <= {args.threshold}; refinement: {args.num_bins} quantile bins per kind, seed {args.refine_seed}"
        + (f", balancing the pipeline LMs of orders {args.refine_orders} jointly" if args.refine_orders else "")
        + f"; reliability centre: the pipeline's default (`refine_split(center=\"reliability\")`); {seeds} image split(s), seeds {args.seeds}.",
        "Cells: % of pairs where the judge prefers the true caption (50 = chance)" + (" as mean ± sd over the splits" if seeds > 1 else "")
        + " / % of pairs kept. `pairs`, `centre`, `reliability`: means over the splits.",
        "",
        "| negatives | kind | pairs | " + " | ".join(title for _, title in COLUMNS) + " | centre | reliability |",
        "|---|---|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    keys = list(dict.fromkeys((r["negatives"], r["kind"]) for rows in rows_per_seed for r in rows))
    for negatives, kind in keys:
        runs = [r for rows in rows_per_seed for r in rows if (r["negatives"], r["kind"]) == (negatives, kind)]
        rel = [r["reliability"] for r in runs if r["reliability"] is not None]
        cells = [negatives, kind, f"{np.mean([r['pairs'] for r in runs]):.0f}"]
        cells += [_cell([r[key] for r in runs]) for key, _ in COLUMNS]
        cells += [f"{np.mean([r['center'] for r in runs]):.3f}", f"{np.mean(rel):.2f}" if rel else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Wall time {seconds:.1f} s.")
    return "\n".join(lines)


def run_split(subsets, seed: int, args) -> list[dict]:
    """Every row of one image split (judge on half A, pipeline on half B)."""
    args = argparse.Namespace(**{**vars(args), "seed": seed})
    half_a = split_images(subsets, seed)
    captions_a = sorted({e["caption"] for entries in subsets.values() for e in entries if e["filename"] in half_a})
    captions_b = captions_by_image(subsets, excluded=half_a)
    judge = KneserNeyLM(order=args.judge_order or args.order).fit(captions_a)
    print(f"split {seed}: images: {len(half_a)} in half A, {len(captions_b)} in half B; judge fitted on {len(captions_a)} captions; "
          f"half B has {sum(map(len, captions_b.values()))}", file=sys.stderr)
    pairs = [(e["caption"], e["negative_caption"], subset, e["filename"])
             for subset, entries in subsets.items() for e in entries if e["filename"] not in half_a]
    true, negative, kinds, image = (list(x) for x in zip(*pairs))
    rows = evaluate("SugarCrepe", true, negative, kinds, image, judge, captions_b, args)
    if not args.no_rules:
        t = time.perf_counter()
        true, negative, kinds, image = rule_pairs(captions_b, args)
        print(f"RuleBasedEditor: {len(true)} edits in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        rows += evaluate("RuleBasedEditor", true, negative, kinds, image, judge, captions_b, args)
    return rows


def reliability_curve(subsets, args, fractions=(0.25, 0.5, 1.0)) -> str:
    """How the pipeline LM's reliability and the refinement's centre change with the captions it is
    fitted on: every image of ``--data`` as one dataset, subsampled by image (no judge involved)."""
    captions = captions_by_image(subsets)
    true, negative, kinds, image = rule_pairs(captions, args)
    kinds, image = np.asarray(kinds, dtype=object), np.asarray(image, dtype=object)
    shown = sorted(set(kinds.tolist()) - {"position", "order"})
    lines = ["| images | captions | " + " | ".join(f"{k}: reliability / centre" for k in shown) + " |",
             "|---|---|" + "---|" * len(shown)]
    order = np.random.default_rng(args.refine_seed).permutation(sorted(captions))
    for fraction in fractions:
        keep = set(order[: int(fraction * len(order))].tolist())
        rows = np.flatnonzero([name in keep for name in image])
        gaps, half_a, half_b = pipeline_gaps([true[i] for i in rows], [negative[i] for i in rows], image[rows].tolist(),
                                             {k: v for k, v in captions.items() if k in keep}, args.order, args.cross_fit,
                                             args.refine_seed, halves=True)
        cells = []
        for kind in shown:
            of_kind = kinds[rows] == kind
            center, rho = reliability_center(gaps[of_kind], half_a[of_kind], half_b[of_kind])
            cells.append("-" if rho is None else f"{rho:.2f} / {center:.3f}")
        lines.append(f"| {len(keep)} | {sum(len(captions[k]) for k in keep)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder of SugarCrepe annotation JSON files")
    parser.add_argument("--seeds", default="0,1,2,3,4",
                        help="seeds of the image splits (and of the cross-fit folds), comma-separated; cells are mean ± sd over them")
    parser.add_argument("--order", type=int, default=2, help="n-gram order of the judge and the pipeline LM")
    parser.add_argument("--judge_order", type=int, default=0, help="another n-gram order for the judge only (0: --order)")
    parser.add_argument("--threshold", type=float, default=0.3,
                        help="filter: drop a negative whose pipeline-LM gap (nats per token) exceeds this")
    parser.add_argument("--num_bins", type=int, default=10, help="adversarial refinement: magnitude bins per kind")
    parser.add_argument("--refine_seed", type=int, default=0)
    parser.add_argument("--refine_orders", default="",
                        help="refine on several pipeline LMs jointly, by n-gram order, e.g. 1,2 (default: --order only)")
    parser.add_argument("--cross_fit", type=int, default=5,
                        help="K > 1: cross-fit the pipeline LM over K folds of half B's images; 0: fit it on all of half B")
    parser.add_argument("--spacy_pipeline", default="auto")
    parser.add_argument("--editor_seed", type=int, default=0)
    parser.add_argument("--kinds", default="", help="RuleBasedEditor kinds, comma-separated (default: its default kinds; add order for ARO's shuffles)")
    parser.add_argument("--no_rules", action="store_true", help="skip RuleBasedEditor (no spaCy needed)")
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument("--reliability_curve", action="store_true",
                        help="instead: the pipeline LM's reliability and centre per kind on 1/4, 1/2 and all of the images")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    subsets = load_subsets(args.data)
    if args.reliability_curve:
        print(reliability_curve(subsets, args))
        return None
    rows_per_seed = [run_split(subsets, int(seed), args) for seed in args.seeds.split(",")]
    seconds = time.perf_counter() - start
    print(markdown(rows_per_seed, args, seconds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows_per_seed, "seconds": seconds}, f, indent=1)
    return rows_per_seed


if __name__ == "__main__":
    main()
