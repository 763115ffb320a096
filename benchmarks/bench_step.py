#!/usr/bin/env python
"""Cost of one cf-vlm training step relative to a plain CLIP step over the same distinct images/texts
(``--model_type siglip``: a ``sigmoid-grouping`` step of a SigLIP relative to ``SiglipModel``'s own loss;
``--objective read``: a READ-CLIP step, its frozen T5 decoder included, and the decoder's share).

Measures, in one run, with pre-collated tensors (no data loading):

- cf-vlm: ``CounterfactualTrainer.compute_loss`` (one CLIPModel forward over the batch's distinct
  images and texts, the cf-vlm objective) + backward + AdamW step, on B records with K counterfactuals;
- clip: ``CLIPModel(..., return_loss=True)`` + backward + AdamW step on the B*(1+K) image-text pairs
  of the same records (its images are the cf-vlm batch's images; its texts are not de-duplicated);

interleaved (alternating which goes first), after warmup; reports medians, their ratio (target
<= 1.10), and how many times each encoder runs per cf-vlm step (forward hooks; must be 1 and 1).
With ``--objective read`` a third step, the same objective without its reconstruction term, gives the
decoder's share of the read step (a randomly initialised T5: tiny, or flan-t5-base's shape with
``--model vit-b-32``)::

    python benchmarks/bench_step.py --model tiny --device cpu
    python benchmarks/bench_step.py --model tiny --model_type siglip
    python benchmarks/bench_step.py --model tiny --objective read
    python benchmarks/bench_step.py --model vit-b-32 --device cuda --dtype bfloat16 --batch_size 64
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import tempfile
import time

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

from hf_counterfactual import CounterfactualTrainer, CounterfactualTrainingArguments
from hf_counterfactual.scenes import SCENE_VOCABULARY, generate_record
from hf_counterfactual.tiny_models import build_word_level_tokenizer, tiny_clip_config


def build_model(name: str, attn: str) -> tuple[CLIPModel, CLIPProcessor]:
    """A randomly initialised CLIP (tiny, or shaped like ViT-B/32) and a processor for the scene captions."""
    if name == "tiny":
        tokenizer, image_size = build_word_level_tokenizer(SCENE_VOCABULARY), 32
        config = tiny_clip_config(tokenizer, image_size=image_size)
    else:
        tokenizer, image_size = build_word_level_tokenizer(SCENE_VOCABULARY, model_max_length=77), 224
        special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77, vocab_size=49408, **special)
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32)
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
    torch.manual_seed(0)
    model = CLIPModel._from_config(config, attn_implementation=attn)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_decoder(name: str, directory: str) -> str:
    """A randomly initialised T5 (the tiny one, or flan-t5-base's shape) saved with a tokenizer in ``directory``."""
    from transformers import T5Config, T5ForConditionalGeneration

    from hf_counterfactual.tiny_models import build_tiny_t5

    decoder, tokenizer = build_tiny_t5(SCENE_VOCABULARY)
    if name != "tiny":
        config = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
                          feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.pad_token_id)  # fmt: skip
        torch.manual_seed(0)
        decoder = T5ForConditionalGeneration(config)
    decoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def clip_batch(records, processor, pixel_values, padding="longest", counterfactuals: bool = True) -> dict[str, torch.Tensor]:
    """The B*(1+K) (image, caption) pairs of ``records`` (the B factual ones without ``counterfactuals``),
    in the cf-vlm batch's image order."""
    captions = [r["caption"] for r in records] + [c["caption"] for r in records for c in r["counterfactuals"] if counterfactuals]
    encoded = processor.tokenizer(captions, padding=padding, return_tensors="pt")
    return {"pixel_values": pixel_values, "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=32, help="B: factual records per step")
    parser.add_argument("--num_counterfactuals", type=int, default=4, help="K: counterfactuals per record")
    parser.add_argument("--steps", type=int, default=20, help="measured repetitions of each step (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="bfloat16: autocast")
    parser.add_argument("--model", default="tiny", choices=["tiny", "vit-b-32"])
    parser.add_argument("--model_type", default="clip", choices=["clip", "siglip"], help="siglip: the tiny SigLIP (--model tiny only)")
    parser.add_argument("--objective", default=None, choices=["cf-vlm", "read", "sigmoid-grouping"],
                        help="the counterfactual step's preset (default: cf-vlm; sigmoid-grouping for SigLIP)")  # fmt: skip
    parser.add_argument("--attn", default="sdpa", help="attn_implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, k = torch.device(args.device), args.num_counterfactuals

    if args.model_type == "siglip":
        from hf_counterfactual.tiny_models import build_tiny_siglip

        if args.model != "tiny":
            parser.error("--model_type siglip runs the tiny SigLIP only")
        model, processor = build_tiny_siglip(SCENE_VOCABULARY)
        objective = args.objective or "sigmoid-grouping"
        names, padding = (objective, "siglip"), "max_length"  # SigLIP's text tower pads to max_length
    else:
        model, processor = build_model(args.model, args.attn)
        objective = args.objective or "cf-vlm"
        names, padding = (objective, "clip"), "longest"
    cf_name, plain_name = names
    records = [generate_record(i, "train", seed=0, counterfactuals_per_record=k) for i in range(args.batch_size)]

    with tempfile.TemporaryDirectory() as tmp:
        training_args = CounterfactualTrainingArguments(
            output_dir=tmp, objective=objective, num_counterfactuals=k, report_to="none", use_cpu=args.device == "cpu",
            reconstruction_decoder=build_decoder(args.model, tmp) if objective == "read" else None,
        )  # fmt: skip
        trainer = CounterfactualTrainer(model=model, args=training_args, processing_class=processor)
        # The read step without its reconstruction term: the decoder's share is the difference.
        without = "w/o reconstruction"
        if objective == "read":
            names = (cf_name, plain_name, without)
            bare = CounterfactualTrainer(model=model, args=dataclasses.replace(training_args, loss_weights="reconstruction=0"), processing_class=processor)
    collator = trainer.data_collator
    cf = collator(records)
    # The plain step sees the counterfactual step's distinct images: with edited images (cf-vlm,
    # grouping) the B*(1+K) pairs, in clip_batch's caption order (a photo that occurs twice is one row
    # of the cf-vlm batch, two of the clip batch); without them (read) the B factual pairs.
    with_images = bool((cf["cf_image_index"] >= 0).any())
    pair_images = torch.cat([cf["image_index"], cf["cf_image_index"].flatten()]) if with_images else cf["image_index"]
    # The trainer's collator hands uint8 over (normalised inside compute_loss): the plain step gets the model's input.
    clip = clip_batch(records, processor, collator.normalize_pixel_values(cf["pixel_values"][pair_images]), padding, with_images)
    cf, clip = ({name: t.to(device) if torch.is_tensor(t) else t for name, t in batch.items()} for batch in (cf, clip))
    wrapped = trainer.model.to(device).train()  # the model, or READ's wrapper of it (decoder and projection)
    model = trainer.dual_encoder
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-5)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()
    )

    def cf_step(trainer=trainer, model=wrapped):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = trainer.compute_loss(model, cf)
        loss.backward()
        optimizer.step()

    def clip_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**clip, return_loss=True).loss
        loss.backward()
        optimizer.step()

    def timed(step) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    calls = {"vision": 0, "text": 0}
    hooks = [
        model.vision_model.register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1)),
        model.text_model.register_forward_hook(lambda *_: calls.__setitem__("text", calls["text"] + 1)),
    ]
    cf_step()
    forwards = dict(calls)
    for hook in hooks:
        hook.remove()

    times = {name: [] for name in names}
    steps = {cf_name: cf_step, plain_name: clip_step}
    if without in names:
        steps[without] = lambda: cf_step(bare, model)
    for rep in range(args.warmup + args.steps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            elapsed = timed(steps[name])
            if rep >= args.warmup:
                times[name].append(elapsed)

    median = {name: statistics.median(t) for name, t in times.items()}
    shapes = {cf_name: cf, plain_name: clip, without: cf}
    print(
        f"\nmodel={args.model} device={args.device} dtype={args.dtype} attn={args.attn} "
        f"B={args.batch_size} K={k} steps={args.steps} (warmup {args.warmup}), interleaved, "
        f"{torch.get_num_threads()} CPU thread(s)\n"
    )
    print(f"{'step':<18}{'images':>8}{'texts':>8}{'median ms':>12}{'min ms':>10}{'max ms':>10}{'records/s':>12}")
    for name, t in times.items():
        batch = shapes[name]
        print(
            f"{name:<18}{batch['pixel_values'].shape[0]:>8}{batch['input_ids'].shape[0]:>8}"
            f"{1e3 * median[name]:>12.1f}{1e3 * min(t):>10.1f}{1e3 * max(t):>10.1f}{args.batch_size / median[name]:>12.1f}"
        )
    ratio = median[cf_name] / median[plain_name]
    # The 1.10 target is for steps over the same pairs (cf-vlm, grouping); read also encodes K negative captions and a paraphrase per record.
    target = "" if objective == "read" else f" (target <= 1.10: {'ok' if ratio <= 1.10 else 'ABOVE'})"
    print(f"\n{cf_name} / {plain_name} step time: {ratio:.3f}{target}")
    if without in median:
        share = 1 - median[without] / median[cf_name]
        print(f"the reconstruction decoder's share of the {cf_name} step: {100 * share:.1f}% ({without}: {median[without] / median[plain_name]:.3f} of {plain_name})")
    ok = forwards == {"vision": 1, "text": 1}
    print(f"encoder forwards per {cf_name} step: vision {forwards['vision']}, text {forwards['text']} ({'ok' if ok else 'EXPECTED 1 and 1'})")
    print("records/s counts factual records (B per step) for both rows.")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
