#!/usr/bin/env python
"""Records/s of the counterfactual generation pipeline, per stage, and each stage's share of the time.

Runs ``hf-cf generate``'s own stages (``build_generator``: rule text edits, optional
LLM edits and paraphrases, flips, grounding, inpainting, pixel-change and CLIP filters) through the
sharded Parquet writer, on a COCO-format folder: by default the test suite's real photos
(scikit-image samples, hand-written boxes and captions) repeated to ``--num_items``; or your COCO
with ``--coco_root``. Prints, from one run:

- per stage: seconds, share of the pipeline's time, items/s through the stage;
- end to end: records/s and items/s, and the writer's own share (encoding + Parquet);
- the inpainting stage's batching gain: the same edits with ``batch_size=1`` and with
  ``--inpainting_batch_size``, interleaved, as a ratio of times (> 1: batching pays).

::

    python benchmarks/bench_generation.py                                   # tiny random models, CPU
    python benchmarks/bench_generation.py --inpainting_model stabilityai/stable-diffusion-2-inpainting \\
        --clip_filter_model openai/clip-vit-base-patch32 --num_inference_steps 30 --inpainting_batch_size 8 \\
        --coco_root /data/coco --split val --num_items 256
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from accelerate import PartialState  # noqa: E402

from hf_counterfactual.commands.generate import GenerationArguments, build_generator  # noqa: E402
from hf_counterfactual.generation import ShardedRecordWriter  # noqa: E402
from hf_counterfactual.generation.inputs import read_coco  # noqa: E402
from hf_counterfactual.nlp import resolve_spacy_pipeline  # noqa: E402


def photo_items(root: Path, num_items: int) -> list:
    """The test photos, repeated (as distinct inputs) to ``num_items``; the corrupt and the
    uneditable items stay in, so skips cost what they cost."""
    from generation_fixtures import write_coco_photos

    write_coco_photos(root, "val")
    items = read_coco(str(root), "val").items
    return [dataclasses.replace(items[i % len(items)], id=i) for i in range(num_items)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coco_root", default=None, help="A COCO-format folder; default: the test photos.")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num_items", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=8, help="Items per batch through the stages.")
    parser.add_argument("--inpainting_model", default="tiny")
    parser.add_argument("--inpainting_batch_size", type=int, default=8)
    parser.add_argument("--num_inference_steps", type=int, default=4)
    parser.add_argument("--clip_filter_model", default="tiny")
    parser.add_argument("--llm_model", default=None)
    parser.add_argument("--paraphrase_model", default=None)
    parser.add_argument("--spacy_pipeline", default=None, help="Default: the first installed English pipeline.")
    parser.add_argument("--repeats", type=int, default=3, help="Repeats of the batching comparison.")
    args = parser.parse_args()

    spacy_pipeline = resolve_spacy_pipeline(args.spacy_pipeline)
    state = PartialState()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.coco_root:
            items = read_coco(args.coco_root, args.split, args.num_items).items
        else:
            items = photo_items(tmp / "coco", args.num_items)
        gen_args = GenerationArguments(
            coco_root=str(args.coco_root or tmp / "coco"),
            split=args.split,
            output_dir=str(tmp / "out"),
            edits="attribute,object,relation,position,count",
            spacy_pipeline=spacy_pipeline,
            batch_size=args.batch_size,
            inpainting_model=args.inpainting_model,
            inpainting_batch_size=args.inpainting_batch_size,
            num_inference_steps=args.num_inference_steps,
            clip_filter_model=args.clip_filter_model,
            clip_threshold=-1.0,  # measure every stage on every edit
            llm_model=args.llm_model,
            paraphrase_model=args.paraphrase_model,
        )
        generator = build_generator(gen_args, state.device)

        # Warm-up (first calls allocate, import, JIT): one batch, not counted.
        generator.make_records(list(range(min(args.batch_size, len(items)))), items[: args.batch_size])
        generator.timings = dict.fromkeys(generator.timings, 0.0)
        generator.num_items = 0

        writer = ShardedRecordWriter(tmp / "out", split=args.split, records_per_shard=500)
        start = time.perf_counter()
        stats = writer.run_batched(items, generator.make_records, batch_size=args.batch_size, progress=False)
        total = time.perf_counter() - start

        report = generator.timing_report()
        pipeline_seconds = sum(stage["seconds"] for stage in report.values())
        print(f"device: {state.device}; {len(items)} items, batch {args.batch_size}; inpainting: {args.inpainting_model} "
              f"({args.num_inference_steps} steps, batch {args.inpainting_batch_size}); CLIP filter: {args.clip_filter_model}")
        print(f"\n{'stage':<12} {'seconds':>9} {'share':>7} {'items/s':>10}")
        for stage, row in report.items():
            rate = f"{row['items_per_second']:>10.1f}" if row["seconds"] >= 1e-3 else f"{'-':>10}"  # under 1 ms: off or trivial
            print(f"{stage:<12} {row['seconds']:>9.3f} {100 * row['share']:>6.1f}% {rate}")
        write_seconds = total - pipeline_seconds
        print(f"{'write':<12} {write_seconds:>9.3f} {100 * write_seconds / total:>6.1f}% (of the end-to-end time)")
        print(f"\nend to end: {total:.2f} s, {stats.num_records / total:.2f} records/s, {len(items) / total:.2f} items/s; "
              f"{stats.num_records} records, {stats.num_skipped} skipped")
        print("counters:", json.dumps(dict(sorted(stats.counts.items()))))

        if generator.inpainter is not None:
            ratio = batching_gain(generator, items, args.repeats)
            print(f"\ninpainting, batch {args.inpainting_batch_size} vs batch 1: time(batch 1) / time(batch "
                  f"{args.inpainting_batch_size}) = {ratio:.2f}")


def batching_gain(generator, items, repeats: int) -> float:
    """Median over ``repeats`` of time(batch 1) / time(batch N) on the same 2N edits (N the
    inpainter's batch size), interleaved so that machine noise hits both alike."""
    from PIL import Image

    from hf_counterfactual.generation import box_mask

    inpainter = generator.inpainter
    n = 2 * inpainter.batch_size
    images, masks = [], []
    for item in items:
        if len(images) == n:
            break
        try:
            image = Image.open(item.image).convert("RGB") if isinstance(item.image, str) else item.image
        except OSError:
            continue
        w, h = image.size
        images.append(image)
        masks.append(box_mask(image.size, (w // 4, h // 4, 3 * w // 4, 3 * h // 4)))
    prompts = ["a red cup"] * len(images)
    seeds = list(range(len(images)))
    batched = inpainter.batch_size
    times = {1: [], batched: []}
    try:
        for _ in range(repeats):
            for size in (1, batched):
                inpainter.batch_size = size
                start = time.perf_counter()
                inpainter.edit_batch(images, masks, prompts, seeds=seeds)
                times[size].append(time.perf_counter() - start)
    finally:
        inpainter.batch_size = batched
    return statistics.median(times[1]) / statistics.median(times[batched])


if __name__ == "__main__":
    main()
