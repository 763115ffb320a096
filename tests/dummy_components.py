"""Tiny deterministic components shared by the tests (diffusers' get_dummy_components idea)."""

import datasets

from hf_counterfactual.features import COUNTERFACTUAL_FEATURES
from hf_counterfactual.scenes import SCENE_VOCABULARY, generate_record
from hf_counterfactual.tiny_models import build_tiny_clip


def get_dummy_components(num_records: int = 8, seed: int = 0, image_size: int = 32):
    """A tiny CLIP, its processor and ``num_records`` procedural counterfactual records."""
    model, processor = build_tiny_clip(SCENE_VOCABULARY, image_size=image_size, seed=seed)
    records = [generate_record(i, "train", seed=seed) for i in range(num_records)]
    return model, processor, records


def records_dataset(records) -> datasets.Dataset:
    return datasets.Dataset.from_list(records, features=COUNTERFACTUAL_FEATURES)


def save_tiny_model(path, build=build_tiny_clip) -> str:
    """Saves the tiny model ``build`` makes (a ``tiny_models.build_tiny_*``; default CLIP) and its
    processor to ``path``, what ``from_pretrained`` and ``hf-cf`` load; returns the path."""
    model, processor = build(SCENE_VOCABULARY)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)
