#!/usr/bin/env python
"""Which encoder is blind to left/right and above/below? Linear probes for object order, per layer
(a CLIP or a SigLIP).

For two-object scenes (horizontal pairs for left/right, vertical pairs for above/below) and their
mirror images, the label is whether the canonically first of the two objects (by shape, colour,
size) is the left (upper) one. A scene and its mirror carry opposite labels and the same objects,
so no feature that ignores position can beat chance (50%). A logistic regression (torch, L2) is
fit on probe-train scenes and scored on other scenes, on each representation:

- image: the projected image embedding, the pooled output, the patch tokens of each layer;
- text: the projected text embedding and the token states of the last layer (the caption of the
  scene, "a X to the left of a Y", whose order is the label).

It also prints the mean cosine between the image embedding of a scene and of its mirror image
(1.0: the image embedding cannot tell them apart)::

    python benchmarks/probe_order.py --model_name_or_path outputs/cf-clip-tiny
    python benchmarks/probe_order.py --model_name_or_path runs/ablation-siglip/sigmoid-seed0
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F
from linear_probe import probe_accuracy  # benchmarks/linear_probe.py
from transformers import AutoModel, AutoProcessor

from hf_counterfactual.scenes import describe, mirror_left_right, render_scene, sample_scene, swap_rows
from hf_counterfactual.scoring import text_padding


def order_scenes(layout: str, count: int, seed: int):
    """``count`` scenes of ``layout`` plus their mirrors, and the order label of each."""
    rng, flip = random.Random(seed), mirror_left_right if layout == "horizontal" else swap_rows
    scenes, labels = [], []
    while len(scenes) < 2 * count:
        scene = sample_scene(rng)
        if scene.layout != layout:
            continue
        for s in (scene, flip(scene)):
            first, _ = s.left_to_right() if layout == "horizontal" else s.top_to_bottom()
            labels.append(float(first.looks == min(obj.looks for obj in s.objects)))
            scenes.append(s)
    return scenes, torch.tensor(labels)


@torch.no_grad()
def representations(model, processor, scenes, image_size: int) -> dict[str, torch.Tensor]:
    """Each representation of the scenes (images) and their captions (texts), CLIP or SigLIP."""
    images = [render_scene(s, image_size) for s in scenes]
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    vision = model.vision_model(pixel_values=pixel_values, output_hidden_states=True)
    texts = processor.tokenizer([describe(s) for s in scenes], padding=text_padding(model), return_tensors="pt")
    text = model.text_model(**texts, output_hidden_states=True)
    reps = {
        "image embedding": model.get_image_features(pixel_values=pixel_values).pooler_output,
        "image pooled": vision.pooler_output,
    }
    patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    for layer, hidden in enumerate(vision.hidden_states):
        reps[f"image patch tokens, layer {layer}"] = hidden[:, -patches:].flatten(1)  # without CLIP's class token
    reps["text embedding"] = model.get_text_features(**texts).pooler_output
    mask = texts["attention_mask"] if "attention_mask" in texts else torch.ones_like(texts["input_ids"])
    reps["text tokens, last layer"] = (text.last_hidden_state * mask[..., None]).flatten(1)
    return reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--num_scenes", type=int, default=300, help="Probe-train scenes per layout (plus their mirrors).")
    parser.add_argument("--image_size", type=int, default=64, help="Rendering size (the processor resizes).")
    args = parser.parse_args()
    model = AutoModel.from_pretrained(args.model_name_or_path).eval()  # a CLIPModel or a SiglipModel
    processor = AutoProcessor.from_pretrained(args.model_name_or_path)

    for layout, question in (("horizontal", "left/right"), ("vertical", "above/below")):
        train_scenes, train_y = order_scenes(layout, args.num_scenes, seed=1)
        test_scenes, test_y = order_scenes(layout, args.num_scenes // 2, seed=2)
        train = representations(model, processor, train_scenes, args.image_size)
        test = representations(model, processor, test_scenes, args.image_size)
        embeds = F.normalize(test["image embedding"], dim=-1)
        mirror_cosine = (embeds[0::2] * embeds[1::2]).sum(-1).mean()
        print(f"\n{question} ({layout} pairs): image embedding cosine(scene, mirror) = {mirror_cosine:.3f}")
        print("| representation | probe accuracy |\n|---|---|")
        for name in train:
            print(f"| {name} | {100 * probe_accuracy(train[name], train_y, test[name], test_y):.1f}% |")


if __name__ == "__main__":
    main()
