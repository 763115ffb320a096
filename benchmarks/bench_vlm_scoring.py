#!/usr/bin/env python
"""LLaVA on the seam: per-pair scoring time in batches of 16 against one pair at a time, vision passes
per call, and the peak memory of a training step with and without LoRA and gradient checkpointing.

On the held-out procedural scenes' first groups (two records' 2 x 2 groups per call: 4 images x 4
captions, 16 pairs; ``choice`` ranks the 4 captions for each image), a tiny
LLaVA by default (or ``--model_name_or_path``): every score definition is timed with
``batch_size=16`` and ``batch_size=1`` on the same calls, interleaved, after a warm-up over every
call (so every prompt is already rendered); prints the median time per pair of each and their ratio
(target <= 0.3 for the tiny model on CPU; both paths share each call's image processing and vision
pass, so this ratio measures the language-model batching alone). A second baseline is what a user
does without batching: the ``batch_size=1`` scorer called once per pair (``choice``: once per
image, as a question needs all its captions; for one pair ``batch_size`` makes no difference). Then the vision tower's calls and images per batched
scorer call (one call, one image per distinct image). ``--clock cpu`` times process CPU time
instead of wall time (steadier on a shared machine; meant for ``--threads 1``). Then one
``CounterfactualTrainer`` step (``cf-vlm-lm``, 8 records, K = 4) per setting, each in a fresh
process: full fine-tuning, LoRA (r 16 on q_proj / v_proj), and LoRA with gradient checkpointing;
peak memory is ``torch.cuda.max_memory_allocated`` on a GPU, the growth of the peak RSS over the
loaded model on CPU (coarse: the allocator keeps what it once took)::

    python benchmarks/bench_vlm_scoring.py
    python benchmarks/bench_vlm_scoring.py --model_name_or_path llava-hf/llava-1.5-7b-hf --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from hf_counterfactual.builders import load_procedural_scenes
from hf_counterfactual.vlm_scoring import SCORES, VLMScorer


MEMORY_SETTINGS = {"full fine-tuning": [], "LoRA": ["--lora"], "LoRA + gradient checkpointing": ["--lora", "--gradient_checkpointing"]}


def step_memory(argv: list[str]) -> None:
    """One training step in this process; prints ``MEMORY <bytes> <seconds>``."""
    import resource
    import tempfile

    from hf_counterfactual import CounterfactualTrainer, CounterfactualTrainingArguments
    from hf_counterfactual.builders import load_procedural_scenes as scenes

    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    args, _ = parser.parse_known_args(argv)
    model, processor = load(args.model_name_or_path, args.dtype)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    records = scenes(num_train=8, num_test=0, seed=0)["train"]
    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory() as out:
        training = CounterfactualTrainingArguments(
            output_dir=out, objective="cf-vlm-lm", per_device_train_batch_size=8, max_steps=1, report_to="none", save_strategy="no",
            disable_tqdm=True, use_cpu=not cuda, gradient_checkpointing=args.gradient_checkpointing, bf16=args.dtype == "bfloat16",
        )  # fmt: skip
        trainer = CounterfactualTrainer(model=model, args=training, train_dataset=records, processing_class=processor)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(f"MEMORY {peak} {seconds}", flush=True)


def load(model_name_or_path: str | None, dtype: str):
    if model_name_or_path is None:
        from hf_counterfactual.scenes import SCENE_VOCABULARY
        from hf_counterfactual.tiny_models import build_tiny_llava

        return build_tiny_llava(SCENE_VOCABULARY)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(model_name_or_path, dtype=getattr(torch, dtype)), AutoProcessor.from_pretrained(model_name_or_path)


def memory_table(argv: list[str]) -> None:
    import subprocess
    import sys

    print(f"\n{'training step (8 records, K=4)':<34}{'peak memory':>14}{'step s':>9}")
    for name, flags in MEMORY_SETTINGS.items():
        done = subprocess.run([sys.executable, __file__, "--step_memory", *argv, *flags], capture_output=True, text=True)
        line = next((line for line in done.stdout.splitlines() if line.startswith("MEMORY ")), None)
        if line is None:
            print(f"{name:<34}  failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        peak, seconds = line.split()[1:]
        print(f"{name:<34}{int(peak) / 2**20:>11.1f} MiB{float(seconds):>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="Default: a tiny random LLaVA built from a config.")
    parser.add_argument("--num_groups", type=int, default=8, help="Records (2 x 2 groups) scored per repeat, two per call.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall: perf_counter; cpu: process CPU time.")
    parser.add_argument("--skip_memory", action="store_true", help="Skip the training-step memory table.")
    parser.add_argument("--step_memory", action="store_true", help=argparse.SUPPRESS)  # one memory measurement (a subprocess)
    parser.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gradient_checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_memory:
        return step_memory(sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = load(args.model_name_or_path, args.dtype)
    model = model.to(args.device).eval()

    test = load_procedural_scenes(num_train=0, num_test=args.num_groups, seed=0)["test"]
    # Two records' 2 x 2 groups side by side: 4 images x 4 captions, 16 pairs per scorer call.
    squares = []
    for record in test:
        counterfactual = next(cf for cf in record["counterfactuals"] if cf["image"] is not None)
        squares.append(([record["image"], counterfactual["image"]], [record["caption"], counterfactual["caption"]]))
    groups = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(squares[::2], squares[1::2])]
    pairs = sum(len(images) * len(texts) for images, texts in groups)

    calls: list[int] = []
    model.model.vision_tower.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"{len(groups)} groups, {pairs} pairs per repeat, {args.repeats} repeats, device {args.device}, {torch.get_num_threads()} threads, {args.clock} clock")
    print(f"{'score':<14}{'batch 16 ms/pair':>18}{'bs 1 ms/pair':>14}{'ratio':>7}{'per-pair call':>15}{'ratio':>7}{'vision calls/call':>19}")
    for score in SCORES:
        scorers = {size: VLMScorer(model, processor, score=score, batch_size=size, device=args.device) for size in (16, 1)}

        def batched(images, texts, scorer=scorers[16]):
            scorer(images, texts)

        def alone(images, texts, scorer=scorers[1]):
            scorer(images, texts)

        def per_pair(images, texts, scorer=scorers[1], choice=score == "choice"):  # no batching: one pair (image) per call
            for image in images:
                for text in [texts] if choice else [[text] for text in texts]:
                    scorer([image], text)

        paths = {"batched": batched, "alone": alone, "per_pair": per_pair}
        for path in paths.values():  # warm-up over every call: every prompt rendered, every path run
            for images, texts in groups:
                path(images, texts)
        times = {name: [] for name in paths}
        vision = []
        for _ in range(args.repeats):
            for name, path in paths.items():
                calls.clear()
                start = clock()
                for images, texts in groups:
                    path(images, texts)
                times[name].append((clock() - start) / pairs)
                if name == "batched":
                    vision += calls
        per_grid = len(vision) / (args.repeats * len(groups))  # vision passes per batched scorer call
        images_per_call = statistics.mean(vision)
        median = {name: statistics.median(values) for name, values in times.items()}
        print(
            f"{score:<14}{1000 * median['batched']:>18.2f}{1000 * median['alone']:>14.2f}{median['batched'] / median['alone']:>7.2f}"
            f"{1000 * median['per_pair']:>15.2f}{median['batched'] / median['per_pair']:>7.2f}{per_grid:>12.1f} ({images_per_call:.1f} images)"
        )
    if args.skip_memory:
        return
    passed = [f"--{name}" if value is True else f"--{name}={value}" for name, value in
              (("model_name_or_path", args.model_name_or_path), ("device", args.device), ("dtype", args.dtype)) if value]  # fmt: skip
    memory_table(passed)


if __name__ == "__main__":
    main()
