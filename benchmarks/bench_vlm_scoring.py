#!/usr/bin/env python
"""Per-pair time of ``VLMScorer`` in batches of 16 against one pair at a time, and vision passes per call.

On the held-out procedural scenes' first groups (two records' 2 x 2 groups per call: 4 images x 4
captions, 16 pairs; ``choice`` ranks the 4 captions for each image), a tiny
LLaVA by default (or ``--model_name_or_path``): every score definition is timed with
``batch_size=16`` and ``batch_size=1`` on the same pairs, interleaved, after a warm-up; prints the
median time per pair of each and their ratio (target <= 0.3 for the tiny model on CPU), and the
vision tower's calls and images per scorer call (one call, one image per distinct image)::

    python benchmarks/bench_vlm_scoring.py
    python benchmarks/bench_vlm_scoring.py --model_name_or_path llava-hf/llava-1.5-7b-hf --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_counterfactual.builders import load_procedural_scenes
from hf_counterfactual.vlm_scoring import SCORES, VLMScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="Default: a tiny random LLaVA built from a config.")
    parser.add_argument("--num_groups", type=int, default=8, help="Records (2 x 2 groups) scored per repeat, two per call.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model_name_or_path is None:
        from hf_counterfactual.scenes import SCENE_VOCABULARY
        from hf_counterfactual.tiny_models import build_tiny_llava

        model, processor = build_tiny_llava(SCENE_VOCABULARY)
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(args.model_name_or_path, dtype=getattr(torch, args.dtype))
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
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
    print(f"{len(groups)} groups, {pairs} pairs per repeat, {args.repeats} repeats, device {args.device}, {torch.get_num_threads()} threads")
    print(f"{'score':<14}{'batch 16 ms/pair':>18}{'alone ms/pair':>16}{'ratio':>8}{'vision calls/call':>19}")
    for score in SCORES:
        scorers = {size: VLMScorer(model, processor, score=score, batch_size=size, device=args.device) for size in (16, 1)}
        for scorer in scorers.values():  # warm-up
            scorer(*groups[0])
        times = {size: [] for size in scorers}
        calls.clear()
        for _ in range(args.repeats):
            for size, scorer in scorers.items():
                start = time.perf_counter()
                for images, texts in groups:
                    scorer(images, texts)
                times[size].append((time.perf_counter() - start) / pairs)
        per_grid = len(calls) / (2 * args.repeats * len(groups))  # vision passes per scorer call
        images_per_call = statistics.mean(calls)
        batched, alone = statistics.median(times[16]), statistics.median(times[1])
        print(f"{score:<14}{1000 * batched:>18.2f}{1000 * alone:>16.2f}{batched / alone:>8.2f}{per_grid:>12.1f} ({images_per_call:.1f} images)")


if __name__ == "__main__":
    main()
