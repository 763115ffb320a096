"""Tests of the rendering styles of the procedural scenes: varied, deterministic, faithful, held out."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from hf_counterfactual.scenes import (
    COLOURS,
    HELDOUT_STYLE,
    PLAIN,
    STYLES,
    TRAIN_STYLES,
    RenderStyle,
    generate_record,
    object_boxes,
    render_record,
    render_scene,
    sample_scene_record,
    sample_style,
)
from hf_counterfactual.scenes.styles import BACKGROUNDS

N = 300


@pytest.fixture(scope="module")
def train_scene_records():
    return [sample_scene_record(index, "train") for index in range(N)]


def test_train_styles_leave_out_the_heldout_style():
    assert HELDOUT_STYLE in STYLES and HELDOUT_STYLE not in TRAIN_STYLES
    assert set(TRAIN_STYLES) | {HELDOUT_STYLE} == set(STYLES)


def test_heldout_style_never_drawn_for_training(train_scene_records):
    names = Counter(record.style.name for record in train_scene_records)
    assert HELDOUT_STYLE not in names
    assert set(names) == set(TRAIN_STYLES)  # and every training style is used
    test_names = {sample_scene_record(index, "test").style.name for index in range(N)}
    assert HELDOUT_STYLE not in test_names


def test_styles_vary(train_scene_records):
    styles = [record.style for record in train_scene_records]
    assert len({style.background for style in styles}) == len(BACKGROUNDS)
    assert {style.pattern for style in styles} >= {"plain", "vertical", "horizontal", "diagonal", "checks", "gradient"}
    scales = [style.scale for style in styles if style.name != "plain"]
    assert min(scales) < 0.8 and max(scales) > 0.95
    assert any(style.outline_width for style in styles) and any(style.noise for style in styles)
    assert len({style.seed for style in styles}) == N


def test_style_is_deterministic_per_seed_and_independent_of_the_scene():
    for index in range(20):
        a, b = sample_scene_record(index, "train", seed=3), sample_scene_record(index, "train", seed=3)
        assert a == b
        assert render_record(a)["image"].tobytes() == render_record(b)["image"].tobytes()
        # The style has a stream of its own: choosing other styles leaves the scenes as they were.
        plain = sample_scene_record(index, "train", seed=3, styles=("plain",))
        assert (plain.scene, plain.counterfactuals, plain.style.name) == (a.scene, a.counterfactuals, "plain")
    assert [sample_scene_record(i, "train", seed=0).style for i in range(20)] != [
        sample_scene_record(i, "train", seed=1).style for i in range(20)
    ]


def test_sample_style_rejects_unknown_names():
    with pytest.raises(ValueError, match="watercolour"):
        sample_style(random.Random(0), ("flat", "watercolour"))
    with pytest.raises(ValueError):
        sample_style(random.Random(0), ())
    with pytest.raises(ValueError, match="scale"):
        RenderStyle("flat", scale=1.2)


def test_plain_style_is_the_exact_default_rendering():
    scene_record = sample_scene_record(0, "train", styles=("plain",))
    assert render_scene(scene_record.scene).tobytes() == render_scene(scene_record.scene, 64, PLAIN).tobytes()
    assert render_record(scene_record)["image"].tobytes() == render_scene(scene_record.scene).tobytes()


def centre_colour(image, box) -> str:
    """The scene colour nearest to the mean of the 3x3 pixels at the centre of ``box``."""
    x, y = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    mean = np.asarray(image, float)[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0)
    return min(COLOURS, key=lambda name: np.square(mean - np.array(COLOURS[name])).sum())


@pytest.mark.parametrize("style_name", STYLES)
def test_every_style_draws_the_colours_its_caption_names(style_name):
    for index in range(40):
        scene_record = sample_scene_record(index, "test", styles=(style_name,))
        scenes = [scene_record.scene, *(edited for _, edited in scene_record.counterfactuals)]
        for scene in scenes:
            image = render_scene(scene, 64, scene_record.style)
            for obj, box in zip(scene.objects, object_boxes(scene, 64, scene_record.style)):
                assert centre_colour(image, box) == obj.colour, (style_name, index, obj)


@pytest.mark.parametrize("style_name", TRAIN_STYLES)
def test_objects_stay_inside_their_cell(style_name):
    for index in range(60):
        scene_record = sample_scene_record(index, "train", styles=(style_name,))
        for obj, (left, top, right, bottom) in zip(scene_record.scene.objects, object_boxes(scene_record.scene, 64, scene_record.style)):
            col, row = obj.cell
            assert 32 * col <= left and right <= 32 * (col + 1) and 32 * row <= top and bottom <= 32 * (row + 1)


@pytest.mark.parametrize("style_name", STYLES)
def test_an_edit_changes_only_the_edited_object(style_name):
    # A record's scenes share their style (background, jitter, noise): recolouring one object of a
    # pair changes pixels near that object only, so the edit is the only difference.
    checked = 0
    for index in range(80):
        scene_record = sample_scene_record(index, "train", styles=(style_name,))
        scene, style = scene_record.scene, scene_record.style
        for kind, edited in scene_record.counterfactuals:
            changed = [i for i, (a, b) in enumerate(zip(scene.objects, edited.objects)) if a != b]
            if kind != "attribute" or len(scene.objects) != 2 or len(changed) != 1:
                continue
            before = np.asarray(render_scene(scene, 64, style), int)
            after = np.asarray(render_scene(edited, 64, style), int)
            near = np.zeros((64, 64), bool)
            for left, top, right, bottom in (object_boxes(s, 64, style)[changed[0]] for s in (scene, edited)):
                near[max(top - 8, 0) : bottom + 8, max(left - 8, 0) : right + 8] = True  # blur, outline and shadow reach
            assert (before != after).any(axis=-1)[near].any()
            assert not (before != after).any(axis=-1)[~near].any(), (style_name, index)
            checked += 1
    assert checked >= 5


def test_records_in_the_heldout_style_hold_the_same_facts():
    for index in range(10):
        test = generate_record(index, "test")
        heldout = generate_record(index, "test", styles=(HELDOUT_STYLE,))
        assert heldout["caption"] == test["caption"]
        assert [cf["caption"] for cf in heldout["counterfactuals"]] == [cf["caption"] for cf in test["counterfactuals"]]
        assert heldout["image"].tobytes() != test["image"].tobytes()
