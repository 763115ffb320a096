"""Procedural counterfactual scenes: the embedded default data of hf-counterfactual.

Scenes of one to four flat shapes, each with a complete canonical caption (see
:mod:`~hf_counterfactual.scenes.model` for the grammar), and counterfactuals made by editing the
scene and rendering it again, so every image-caption truth value is exact::

    from hf_counterfactual.scenes import generate_record
    record = generate_record(0, split="train")   # a dict following COUNTERFACTUAL_FEATURES

Held-out compositions: the (colour, shape) pairs in ``heldout_pairs`` (default
:data:`DEFAULT_HELDOUT_PAIRS`) never appear in the train split, neither in a factual nor in a
counterfactual scene, and every factual scene of the test split contains at least one of them,
so test accuracy measures binding of novel compositions.

Held-out rendering: every record is drawn in a random style (:mod:`~hf_counterfactual.scenes.styles`:
backgrounds, outlines, scale and jitter, blur and noise); the ``shaded`` style never appears in
training, and the same test scenes drawn in it measure whether what was learned transfers.
"""

from .edits import Candidate, candidate_edits, choose_counterfactuals, mirror_left_right, swap_rows
from .model import (
    BACKGROUND,
    CANVAS_UNITS,
    COLOURS,
    LAYOUTS,
    NUMBER_WORDS,
    SCENE_VOCABULARY,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    describe,
    paraphrases,
)
from .records import SceneRecord, generate_record, render_record, sample_scene_record
from .render import object_boxes, pixel_box, render_scene
from .sampling import DEFAULT_HELDOUT_PAIRS, SPLITS, record_rng, sample_scene, split_admits
from .styles import HELDOUT_STYLE, PLAIN, STYLES, TRAIN_STYLES, RenderStyle, sample_style

__all__ = [
    "BACKGROUND",
    "CANVAS_UNITS",
    "COLOURS",
    "DEFAULT_HELDOUT_PAIRS",
    "HELDOUT_STYLE",
    "LAYOUTS",
    "NUMBER_WORDS",
    "PLAIN",
    "SCENE_VOCABULARY",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "STYLES",
    "TRAIN_STYLES",
    "Candidate",
    "RenderStyle",
    "Scene",
    "SceneObject",
    "SceneRecord",
    "candidate_edits",
    "choose_counterfactuals",
    "describe",
    "generate_record",
    "mirror_left_right",
    "object_boxes",
    "paraphrases",
    "pixel_box",
    "record_rng",
    "render_record",
    "render_scene",
    "sample_scene",
    "sample_scene_record",
    "sample_style",
    "split_admits",
    "swap_rows",
]
