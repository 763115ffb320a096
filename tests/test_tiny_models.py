"""Tiny models built from configs start from the original recipe's initialisation where it matters."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from hf_counterfactual.scenes import SCENE_VOCABULARY
from hf_counterfactual.tiny_models import build_tiny_clip, init_vit_position_embeddings


@pytest.mark.parametrize("hidden_size", [64, 128])
def test_tiny_clip_vision_position_embeddings_follow_openai_clip(hidden_size):
    # OpenAI CLIP: std width ** -0.5 (0.125 at width 64); transformers' config init gives 0.02, too
    # weak to tell a scene from its mirror image (benchmarks/probe_order.py).
    model, _ = build_tiny_clip(SCENE_VOCABULARY, hidden_size=hidden_size, projection_dim=hidden_size)
    std = model.vision_model.embeddings.position_embedding.weight.std().item()
    assert std == pytest.approx(hidden_size**-0.5, rel=0.1)
    # Only the vision tower: the text positions keep transformers' init (the text side reads order).
    assert model.text_model.embeddings.position_embedding.weight.std().item() == pytest.approx(0.02, rel=0.15)


def test_tiny_clip_is_deterministic_per_seed():
    a, _ = build_tiny_clip(SCENE_VOCABULARY, seed=3)
    b, _ = build_tiny_clip(SCENE_VOCABULARY, seed=3)
    c, _ = build_tiny_clip(SCENE_VOCABULARY, seed=4)
    weights = [m.vision_model.embeddings.position_embedding.weight for m in (a, b, c)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


@pytest.mark.parametrize(
    "model",
    [
        CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)),
        SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)),
    ],
    ids=["clip-vision (LLaVA's tower)", "siglip-vision"],
)
def test_every_vit_patch_embedding_is_found(model):
    changed = init_vit_position_embeddings(model)
    assert len(changed) == 1 and changed[0].endswith("embeddings")
    assert model.get_submodule(changed[0]).position_embedding.weight.std().item() == pytest.approx(32**-0.5, rel=0.15)


def test_tiny_grounding_detector_vision_tower_is_reinitialised():
    from hf_counterfactual.tiny_models import build_tiny_grounding

    detector, *_ = build_tiny_grounding(["cat"], with_segmenter=False, detector="owlvit")
    std = detector.owlvit.vision_model.embeddings.position_embedding.weight.std().item()
    assert std == pytest.approx(32**-0.5, rel=0.15)


def test_siglip_position_signal_is_as_strong_as_clips():
    """Left/right is learnable only if the position embeddings are not drowned by the patch content.
    The ratio of their stds (training scenes through each model's own processor) is what CLIP's
    recipe gives, within 20%, for the tiny SigLIP too. At transformers' SigLIP init it was half of
    CLIP's (lecun-normal patch projection), and the SigLIP image embedding stayed order-blind."""
    from hf_counterfactual.scenes import generate_record
    from hf_counterfactual.tiny_models import build_tiny_siglip

    images = [generate_record(i, "train", seed=0, image_size=32)["image"] for i in range(8)]
    ratios = {}
    for name, build in (("clip", build_tiny_clip), ("siglip", build_tiny_siglip)):
        model, processor = build(SCENE_VOCABULARY)
        embeddings = model.vision_model.embeddings
        with torch.no_grad():
            content = embeddings.patch_embedding(processor.image_processor(images, return_tensors="pt")["pixel_values"])
        ratios[name] = embeddings.position_embedding.weight.std().item() / content.std().item()
    assert ratios["siglip"] == pytest.approx(ratios["clip"], rel=0.2), ratios
