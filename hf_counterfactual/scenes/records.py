"""Scenes to counterfactual records (the schema of :mod:`hf_counterfactual.features`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .edits import Candidate, choose_counterfactuals
from .model import Scene, describe, paraphrases
from .render import render_scene
from .sampling import DEFAULT_HELDOUT_PAIRS, normalize_heldout_pairs, record_rng, sample_admitted_scene, split_admits
from .styles import PLAIN, TRAIN_STYLES, RenderStyle, sample_style

SOURCE = "procedural"
_MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class SceneRecord:
    """A factual scene and its counterfactual scenes, before rendering."""

    scene: Scene
    counterfactuals: tuple[Candidate, ...]
    """(edit kind, edited scene) pairs."""
    style: RenderStyle = PLAIN
    """How all of the record's scenes are drawn."""


def sample_scene_record(
    index: int,
    split: str = "train",
    seed: int = 0,
    counterfactuals_per_record: int = 4,
    heldout_pairs: Iterable[Iterable[str]] | None = DEFAULT_HELDOUT_PAIRS,
    styles: tuple[str, ...] = TRAIN_STYLES,
) -> SceneRecord:
    """The scenes of record ``index`` of ``split`` and their rendering style: a function of its arguments alone.

    Scenes are redrawn until the split's held-out rule admits the factual scene and enough
    admitted edits remain (see :func:`~hf_counterfactual.scenes.sampling.split_admits`). Every
    layout offers at least 7 edits in either split with the default held-out pairs; a larger
    ``counterfactuals_per_record`` skews the data towards the layouts that offer more. The style is
    drawn from ``styles`` (names of :mod:`~hf_counterfactual.scenes.styles`) on a random stream of
    its own, so the scenes do not depend on ``styles``: the same test scenes can be drawn in a
    held-out style.
    """
    if counterfactuals_per_record < 1:
        raise ValueError(f"counterfactuals_per_record must be positive, got {counterfactuals_per_record}")
    admits_factual, admits_counterfactual = split_admits(split, normalize_heldout_pairs(heldout_pairs))
    rng = record_rng(seed, split, index)
    for _ in range(_MAX_ATTEMPTS):
        scene = sample_admitted_scene(rng, admits_factual)
        chosen = choose_counterfactuals(scene, rng, counterfactuals_per_record, admits_counterfactual)
        if chosen is not None:
            style = sample_style(record_rng(seed, f"{split}/style", index), tuple(styles))
            return SceneRecord(scene, tuple(chosen), style)
    raise RuntimeError(
        f"No {split} scene offers {counterfactuals_per_record} distinct admitted counterfactuals "
        f"in {_MAX_ATTEMPTS} draws; lower counterfactuals_per_record"
    )


def render_record(scene_record: SceneRecord, image_size: int = 64) -> dict[str, Any]:
    """The counterfactual record of ``scene_record``, images as RGB ``PIL.Image`` in its style."""
    style = scene_record.style
    return {
        "image": render_scene(scene_record.scene, image_size, style),
        "caption": describe(scene_record.scene),
        "paraphrases": paraphrases(scene_record.scene),
        "counterfactuals": [
            {
                "caption": describe(edited),
                "image": render_scene(edited, image_size, style),
                "edit": kind,
                "source": SOURCE,
                "score": None,
            }
            for kind, edited in scene_record.counterfactuals
        ],
    }


def generate_record(
    index: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 64,
    counterfactuals_per_record: int = 4,
    heldout_pairs: Iterable[Iterable[str]] | None = DEFAULT_HELDOUT_PAIRS,
    styles: tuple[str, ...] = TRAIN_STYLES,
) -> dict[str, Any]:
    """Record ``index`` of ``split``, following :data:`~hf_counterfactual.features.COUNTERFACTUAL_FEATURES`.

    The record depends only on the arguments (never on other records), so generation can be
    sharded freely. Every counterfactual carries an image rendered from the edited scene, so its
    caption is exactly true of its image and false of the factual one (and vice versa).

    Args:
        index: position of the record in its split.
        split: ``"train"`` (no held-out colour-shape pair anywhere) or ``"test"`` (every factual
            scene shows at least one held-out pair).
        seed: dataset seed; another seed gives another dataset.
        image_size: side of the square images, in pixels.
        counterfactuals_per_record: how many counterfactuals the record carries (pairwise distinct
            captions, spread over the edit kinds the layout allows).
        heldout_pairs: (colour, shape) compositions held out of training.
        styles: rendering styles to draw from (:data:`~hf_counterfactual.scenes.styles.TRAIN_STYLES`
            by default; ``("plain",)`` for the exact flat rendering).
    """
    scene_record = sample_scene_record(index, split, seed, counterfactuals_per_record, heldout_pairs, styles)
    return render_record(scene_record, image_size)
