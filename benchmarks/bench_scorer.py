#!/usr/bin/env python
"""Throughput of ``evaluate_benchmark(DualEncoderScorer(...), procedural benchmark)`` as a fraction of the raw model forward.

Measures, in one run, on the held-out procedural scenes (each distinct image and text once):

- scorer: ``evaluate_benchmark`` end to end: image decoding, preprocessing, tokenisation, both
  encoders, the score grids and the metrics, three ways: ``cold`` (its
  :class:`~hf_counterfactual.scoring.PixelCache` and :class:`~hf_counterfactual.scoring.TokenCache`
  emptied before every call: a first evaluation, every image pre-processed, every text tokenised),
  ``warm`` (the caches holding every image and text batch from an earlier call: an evaluation
  repeated, as the trainer's each eval step and an ablation's each checkpoint are; only the cache
  look-ups, which read each stored image to digest it, are left of the pre-processing) and
  ``no cache`` (``pixel_cache=None, token_cache=None``: what cold costs without the caches' bookkeeping);
- raw: ``get_image_features`` + ``get_text_features`` on the same distinct images and texts, already
  preprocessed into batches of the same size (preprocessing by the processor in this process, timed
  separately, as ``prep``), the texts batched two ways: ``raw`` in the benchmark's order, as a plain
  loop would, and ``raw, sorted`` by length, the batches the scorer forwards (it sorts its texts so
  that each batch pads less): the ratio against ``raw, sorted`` is the scorer's overhead alone;

- ``towers constant``: a warm scorer whose model returns constant features
  (:class:`ConstantTowers`): the scorer's own work alone, as a fraction of the raw forward; and the
  same without caches or workers (``pre-processing alone``): a first evaluation's decoding, resizing
  and tokenising, in this process, with no forward to overlap. Where it is near the raw forward (a
  tiny model on 2 cores), a first evaluation cannot reach 0.9 of it: the two must share the cores.
  As many forked copies of it as there are cores, run at once, give the cores' speedup on that work
  and the bound it sets on a cold call (the forward and the pre-processing perfectly overlapped);

the scorer pre-processes on its image path (``--image_path``, default fast: draft decode, one
resize of the crop, uint8 normalised on the device) in DataLoader workers (``--num_workers``,
default sized from the cores) overlapping the forward.

After warmup, reports medians, examples/s and images+texts encoded/s, and raw / scorer time
(target >= 0.9) per variant: each scorer call is timed beside the raw forwards (before them in one
round, after them in the next), and the ratio is the median over ``--repeats`` rounds, since the
shared machine's speed drifts between calls by more than the overhead measured; one variant at a
time, after an untimed call of its own. ``--threads`` sets torch's intra-op
threads (default: torch's own); on a shared machine whose other cores are busy, 1 thread measures
the forward more stably (2 threads on 2 cores with another busy process slowed it ~30x)::

    python benchmarks/bench_scorer.py                       # tiny CLIP, CPU
    python benchmarks/bench_scorer.py --model vit-b-32 --device cuda --num_test_scenes 2000 --batch_size 256
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf_counterfactual import DualEncoderScorer, evaluate_benchmark
from hf_counterfactual.scoring import PixelCache, TokenCache
from hf_counterfactual.benchmarks import LazyImages, counterfactual_records_benchmark
from hf_counterfactual.builders import load_procedural_scenes
from hf_counterfactual.scenes import SCENE_VOCABULARY
from hf_counterfactual.tiny_models import build_tiny_clip

from bench_step import build_model  # noqa: E402  (this folder's step benchmark: the ViT-B/32-shaped CLIP)


class ConstantTowers(torch.nn.Module):
    """``model`` with both towers replaced by constant features: a warm call of a scorer holding it
    is the scorer's own work alone (cache look-ups, batching, normalisation, grids, metrics)."""

    def __init__(self, model):
        super().__init__()
        self.config, self.logit_scale, self.dtype = model.config, model.logit_scale, model.dtype
        self.features = torch.nn.functional.normalize(torch.ones(1, model.config.projection_dim, device=model.logit_scale.device), dim=-1)

    def _features(self, rows: int) -> BaseModelOutputWithPooling:
        return BaseModelOutputWithPooling(pooler_output=self.features.expand(rows, -1))

    def get_image_features(self, pixel_values, **kwargs):
        return self._features(len(pixel_values))

    def get_text_features(self, input_ids, **kwargs):
        return self._features(len(input_ids))


def concurrently(fn, copies: int) -> list[float]:
    """Seconds ``fn()`` took in each of ``copies`` forked processes started together (fork: ``fn``
    need not be picklable; a barrier lines up their starts, so forking is not timed)."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(copies), context.Queue()

    def run() -> None:
        barrier.wait()
        start = time.perf_counter()
        fn()
        results.put(time.perf_counter() - start)

    processes = [context.Process(target=run) for _ in range(copies)]
    for process in processes:
        process.start()
    seconds = [results.get() for _ in processes]
    for process in processes:
        process.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_test_scenes", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--model", choices=["tiny", "vit-b-32"], default="tiny", help="Randomly initialised; vit-b-32: ViT-B/32 shapes, 224 px.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--image_path", choices=["fast", "exact"], default="fast", help="The scorer's image path (DualEncoderScorer(image_path=)).")
    parser.add_argument("--num_workers", type=int, default=None, help="The scorer's pre-processing workers (default: sized from the cores).")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own).")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, processor = build_tiny_clip(SCENE_VOCABULARY) if args.model == "tiny" else build_model(args.model, "sdpa")
    model.to(args.device).eval()
    with tempfile.TemporaryDirectory() as cache_dir:
        test = load_procedural_scenes(num_train=0, num_test=args.num_test_scenes, cache_dir=cache_dir)["test"]
        benchmark = counterfactual_records_benchmark(test, name="procedural")
        cache, token_cache = PixelCache(), TokenCache()
        scorers = {
            name: DualEncoderScorer(
                model, processor, batch_size=args.batch_size, device=args.device, show_progress=False, image_path=args.image_path,
                num_workers=args.num_workers, pixel_cache=cache if cached else None, token_cache=token_cache if cached else None,
            )
            for name, cached in (("cold", True), ("warm", True), ("no cache", False))
        }  # fmt: skip
        scorers["own work"] = DualEncoderScorer(
            ConstantTowers(model), processor, batch_size=args.batch_size, device=args.device, show_progress=False,
            image_path=args.image_path, num_workers=args.num_workers, pixel_cache=cache, token_cache=token_cache,
        )  # fmt: skip
        scorers["pre-processing alone"] = DualEncoderScorer(
            ConstantTowers(model), processor, batch_size=args.batch_size, device=args.device, show_progress=False,
            image_path=args.image_path, num_workers=0, pixel_cache=None, token_cache=None,
        )  # fmt: skip
        scorer = scorers["cold"]
        images, texts = benchmark.distinct_images(), benchmark.distinct_texts()
        b = args.batch_size

        def sync() -> None:
            if torch.device(args.device).type == "cuda":
                torch.cuda.synchronize()

        def preprocess():
            lazy = LazyImages(images, benchmark.load_image)
            pixels = [processor.image_processor(lazy[i : i + b], return_tensors="pt")["pixel_values"].to(args.device) for i in range(0, len(images), b)]
            def tokenized(batch_texts):
                return [processor.tokenizer(batch_texts[i : i + b], padding=True, truncation=True, return_tensors="pt").to(args.device)
                        for i in range(0, len(batch_texts), b)]  # fmt: skip

            # The benchmark's order, and by length as DualEncoderScorer.encode_texts batches them.
            return pixels, tokenized(texts), tokenized(sorted(texts, key=len))

        @torch.no_grad()
        def raw(pixels, tokens) -> None:
            for pixel_values in pixels:
                model.get_image_features(pixel_values=pixel_values)
            for encoded in tokens:
                model.get_text_features(**encoded)

        def timed(fn, *fn_args) -> tuple[float, object]:
            sync()
            start = time.perf_counter()
            out = fn(*fn_args)
            sync()
            return time.perf_counter() - start, out

        def prepare(name: str) -> None:  # untimed
            if name == "cold":
                cache.clear(), token_cache.clear()
            elif name in ("warm", "own work") and len(cache) < len(images):  # every image pre-processed by an earlier call
                evaluate_benchmark(scorers["warm"], benchmark)

        def scored(name: str):
            before = cache.hits
            results = evaluate_benchmark(scorers[name], benchmark)
            hits[name] = cache.hits - before
            return results

        hits: dict[str, int] = {}
        _, (pixels, tokens, tokens_sorted) = timed(preprocess)
        timed(raw, pixels, tokens), timed(scored, "no cache")  # warmup
        scorer_names = ["cold", "warm", "no cache"]
        times = {name: [] for name in [*scorer_names, "raw", "raw, sorted", "prep"]}
        # Each scorer call is timed beside the raw forward on the same batches (and on the benchmark's
        # order), before them in even rounds and after them in odd ones, and each ratio is taken within
        # its round: the machine's speed drifts between calls (±15-30% here), far more than the few
        # percent being measured. One variant at a time, after an untimed call of its own: a call
        # right after another variant's (with its forked workers) ran slower.
        paired: dict[str, dict[str, list[float]]] = {name: {"raw, sorted": [], "raw": []} for name in scorer_names}
        for name in scorer_names:
            prepare(name)
            timed(scored, name)
            for r in range(args.repeats):
                prepare(name)
                calls = [(name, lambda: timed(scored, name)[0]), ("raw, sorted", lambda: timed(raw, pixels, tokens_sorted)[0]),
                         ("raw", lambda: timed(raw, pixels, tokens)[0])]  # fmt: skip
                seconds = {label: call() for label, call in (calls if r % 2 == 0 else calls[::-1])}
                for label, value in seconds.items():
                    times[label].append(value)
                for reference in ("raw, sorted", "raw"):
                    paired[name][reference].append(seconds[reference] / seconds[name])
        for r in range(args.repeats):
            times["prep"].append(timed(preprocess)[0])
        prepare("own work")
        timed(scored, "own work")
        times["own work"] = [timed(scored, "own work")[0] for _ in range(args.repeats)]
        times["pre-processing alone"] = [timed(scored, "pre-processing alone")[0] for _ in range(args.repeats)]

        # How much faster the cores run that pre-processing together than one does: forked copies of
        # it, started at once, each timing itself (one copy alone the same way, so forking costs both).
        speedups = []
        for _ in range(3):
            alone = max(concurrently(lambda: scored("pre-processing alone"), 1))
            together = max(concurrently(lambda: scored("pre-processing alone"), os.cpu_count() or 1))
            speedups.append((os.cpu_count() or 1) * alone / together)

    median = {name: statistics.median(values) for name, values in times.items()}
    items = len(images) + len(texts)
    load = os.getloadavg()
    print(f"model={args.model} device={args.device} threads={torch.get_num_threads()} batch_size={b} examples={len(benchmark)} "
          f"distinct images={len(images)} texts={len(texts)} repeats={args.repeats} (medians)")  # fmt: skip
    print(f"scorer: image_path={args.image_path} (in use: {'fast' if scorer.image_transform is not None else 'exact'}), "
          f"image workers={scorer._workers(len(images))}, threads={torch.get_num_threads()}; {os.cpu_count()} cores, load average {load[0]:.2f} (a shared machine)")  # fmt: skip
    print(f"pixel cache hits per call: cold {hits['cold']}, warm {hits['warm']} of {len(images)} images (no cache: none); "
          f"padded text positions: {sum(t['input_ids'].numel() for t in tokens)} in the benchmark's order, "
          f"{sum(t['input_ids'].numel() for t in tokens_sorted)} sorted by length")  # fmt: skip
    print(f"{'':<40}{'seconds':>10}{'examples/s':>14}{'encoded/s':>14}")
    labels = {"cold": "scorer, cold (first evaluation)", "warm": "scorer, warm (repeated evaluation)", "no cache": "scorer, no caches",
              "raw": "raw forward (preprocessed)", "raw, sorted": "raw forward, texts sorted by length",
              "prep": "prep (decode+preprocess+tokenise)", "own work": "scorer, warm, towers constant",
              "pre-processing alone": "scorer, cold, towers constant, 1 proc"}  # fmt: skip
    for name, label in labels.items():
        print(f"{label:<40}{median[name]:>10.3f}{len(benchmark) / median[name]:>14.0f}{items / median[name]:>14.0f}")
    for name in scorer_names:
        same, plain = sorted(paired[name]["raw, sorted"]), statistics.median(paired[name]["raw"])
        print(f"scorer / raw throughput, {name}: {statistics.median(same):.2f} against the same batches (target >= 0.9; median of "
              f"{len(same)} rounds, range {same[0]:.2f}-{same[-1]:.2f}), {plain:.2f} against the benchmark's order")  # fmt: skip
    print(f"the scorer's own work in a warm call (towers replaced by constants): {1e3 * median['own work']:.1f} ms, "
          f"{median['own work'] / median['raw, sorted']:.1%} of the raw forward")
    prep_alone, raw_sorted, speedup = median["pre-processing alone"], median["raw, sorted"], statistics.median(speedups)
    print(f"a first evaluation's pre-processing alone (towers constant, no caches, in this process): {1e3 * prep_alone:.0f} ms, "
          f"{prep_alone / raw_sorted:.2f}x the raw forward; {os.cpu_count()} copies of it at once run {speedup:.2f}x as fast as one "
          f"(median of {len(speedups)}), so that with pre-processing and forward perfectly overlapped a cold call could reach at most "
          f"{raw_sorted / max(raw_sorted, (raw_sorted + prep_alone) / speedup):.2f} of the raw forward")
    print(f"raw + prep would give {(median['raw'] + median['prep']) / median['cold']:.2f} of the cold scorer's time")


if __name__ == "__main__":
    main()
