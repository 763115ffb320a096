"""Tests of the procedural scene generator: grammar, edits, held-out rule, rendering, determinism."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageOps

from hf_counterfactual.features import validate_record
from hf_counterfactual.scenes import (
    BACKGROUND,
    COLOURS,
    DEFAULT_HELDOUT_PAIRS,
    NUMBER_WORDS,
    SCENE_VOCABULARY,
    SHAPES,
    Scene,
    SceneObject,
    describe,
    generate_record,
    mirror_left_right,
    paraphrases,
    render_scene,
    sample_scene_record,
)

N_RECORDS = 200
HELDOUT = set(DEFAULT_HELDOUT_PAIRS)
COLOUR_OF_RGB = {rgb: name for name, rgb in COLOURS.items()}


def obj(shape: str, colour: str, size: str = "small", cell: tuple[int, int] = (0, 0)) -> SceneObject:
    # Centre of the cell: valid for both sizes.
    return SceneObject(shape=shape, colour=colour, size=size, x=16 + 32 * cell[0], y=16 + 32 * cell[1])


def records(split: str, n: int = N_RECORDS, **kwargs):
    """Records in the exact ``plain`` style, whose pixels the rendering tests below check one by one
    (tests/test_scene_styles.py checks the other styles)."""
    return [generate_record(index, split, styles=("plain",), **kwargs) for index in range(n)]


@pytest.fixture(scope="module")
def train_records():
    return records("train")


@pytest.fixture(scope="module")
def test_records():
    return records("test")


def image_caption_pairs(record) -> list[tuple[Image.Image, str]]:
    """The factual pair and every counterfactual pair of ``record``: each caption is true of its image."""
    return [(record["image"], record["caption"])] + [(cf["image"], cf["caption"]) for cf in record["counterfactuals"]]


def all_captions(record) -> list[str]:
    return [record["caption"], *record["paraphrases"], *(cf["caption"] for cf in record["counterfactuals"])]


def colours_in(image: Image.Image) -> dict[str, int]:
    """Pixel count of each scene colour in ``image``; fails on any pixel that is neither a colour nor background."""
    pixels = Counter(image.convert("RGB").getdata())
    unknown = set(pixels) - set(COLOUR_OF_RGB) - {BACKGROUND}
    assert not unknown, f"unexpected pixel values {unknown}"
    return {COLOUR_OF_RGB[rgb]: count for rgb, count in pixels.items() if rgb in COLOUR_OF_RGB}


def first_colour(image: Image.Image, axis: str) -> str:
    """Colour of the first foreground pixel, scanning columns left to right (``"x"``) or rows top down (``"y"``)."""
    array = np.asarray(image.convert("RGB"))
    if axis == "x":
        array = array.transpose(1, 0, 2)
    foreground = (array != BACKGROUND).any(axis=-1)
    line = np.flatnonzero(foreground.any(axis=1))[0]
    position = np.flatnonzero(foreground[line])[0]
    return COLOUR_OF_RGB[tuple(int(v) for v in array[line, position])]


# --- grammar ---------------------------------------------------------------------------------


def test_captions_follow_the_grammar():
    assert describe(Scene((obj("circle", "red", "large"),))) == "a large red circle"
    horizontal = Scene((obj("square", "blue", cell=(1, 0)), obj("circle", "red", cell=(0, 0))))
    assert describe(horizontal) == "a small red circle to the left of a small blue square"
    assert paraphrases(horizontal) == ["a small blue square to the right of a small red circle"]
    vertical = Scene((obj("square", "blue", cell=(0, 1)), obj("circle", "red", cell=(0, 0))))
    assert describe(vertical) == "a small red circle above a small blue square"
    assert paraphrases(vertical) == ["a small blue square below a small red circle"]
    group = Scene(tuple(obj("triangle", "green", cell=cell) for cell in [(0, 0), (1, 0), (1, 1)]))
    assert describe(group) == "three small green triangles"
    assert "a group of three small green triangles" in paraphrases(group)


def test_indescribable_scenes_are_rejected():
    diagonal_pair = Scene((obj("circle", "red", cell=(0, 0)), obj("square", "blue", cell=(1, 1))))
    mixed_triple = Scene((obj("circle", "red"), obj("circle", "red", cell=(1, 0)), obj("square", "red", cell=(0, 1))))
    for scene in (diagonal_pair, mixed_triple, Scene(())):
        assert scene.layout is None
        with pytest.raises(ValueError):
            describe(scene)


def test_identical_pair_is_a_group():
    scene = Scene((obj("circle", "orange", cell=(0, 0)), obj("circle", "orange", cell=(1, 0))))
    assert describe(scene) == "two small orange circles"


def test_vocabulary_covers_every_generated_word(train_records, test_records):
    assert list(SCENE_VOCABULARY) == sorted(set(SCENE_VOCABULARY))
    captions = [caption for record in train_records + test_records for caption in all_captions(record)]
    words = {word for caption in captions for word in caption.split()}
    assert words <= set(SCENE_VOCABULARY), words - set(SCENE_VOCABULARY)
    assert words == set(SCENE_VOCABULARY), "the vocabulary lists words no caption uses"


# --- records ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_records_are_valid(split, train_records, test_records):
    for index, record in enumerate(train_records if split == "train" else test_records):
        validate_record(record, index, min_counterfactuals=4)
        assert len(record["counterfactuals"]) == 4
        captions = [cf["caption"] for cf in record["counterfactuals"]]
        assert len(set(captions)) == len(captions)
        true_captions = {record["caption"], *record["paraphrases"]}
        assert not true_captions & set(captions), "a counterfactual caption is true of the factual image"
        for cf in record["counterfactuals"]:
            assert cf["source"] == "procedural" and cf["score"] is None
            assert isinstance(cf["image"], Image.Image) and cf["image"].mode == "RGB"
            assert cf["image"].tobytes() != record["image"].tobytes()


def test_counterfactuals_per_record_and_image_size():
    record = generate_record(3, "train", counterfactuals_per_record=7, image_size=96)
    validate_record(record, min_counterfactuals=7)
    assert len({cf["caption"] for cf in record["counterfactuals"]}) == 7
    assert record["image"].size == (96, 96)
    assert all(cf["image"].size == (96, 96) for cf in record["counterfactuals"])


def test_original_caption_is_false_of_every_counterfactual_scene():
    # Winoground exactness: caption_0 is true of image_0 only, caption_1 of image_1 only.
    for index in range(N_RECORDS):
        scene_record = sample_scene_record(index, "train")
        caption = describe(scene_record.scene)
        for _, edited in scene_record.counterfactuals:
            assert caption != describe(edited) and caption not in paraphrases(edited)


def test_edit_kinds(train_records):
    kinds_by_layout: dict[str, set[str]] = {}
    for index in range(N_RECORDS):
        scene_record = sample_scene_record(index, "train")
        kinds = [kind for kind, _ in scene_record.counterfactuals]
        kinds_by_layout.setdefault(scene_record.scene.layout, set()).update(kinds)
        assert len(set(kinds)) == 3, f"record {index} does not mix the kinds its layout allows: {kinds}"
    assert kinds_by_layout == {
        "single": {"attribute", "object", "count"},
        "group": {"attribute", "object", "count"},
        "horizontal": {"attribute", "object", "position"},
        "vertical": {"attribute", "object", "relation"},
    }
    all_kinds = Counter(cf["edit"] for record in train_records for cf in record["counterfactuals"])
    assert set(all_kinds) == {"attribute", "object", "position", "count", "relation"}


def test_only_count_edits_change_the_caption_construction(train_records, test_records):
    for record in train_records + test_records:
        words = record["caption"].split()
        for cf in record["counterfactuals"]:
            if cf["edit"] == "count":
                continue
            cf_words = cf["caption"].split()
            assert len(cf_words) == len(words), (record["caption"], cf["caption"])
            changed = sum(a != b for a, b in zip(words, cf_words))
            if cf["edit"] in ("attribute", "object"):
                assert changed <= 2, (record["caption"], cf["caption"])


def test_colour_swap_binding_counterfactuals_occur():
    swapped = 0
    for index in range(N_RECORDS):
        scene_record = sample_scene_record(index, "train")
        if scene_record.scene.layout != "horizontal":
            continue
        left, right = scene_record.scene.left_to_right()
        for kind, edited in scene_record.counterfactuals:
            new_left, new_right = edited.left_to_right()
            swapped_colours = (new_left.colour, new_right.colour) == (right.colour, left.colour)
            if kind == "attribute" and left.colour != right.colour and swapped_colours:
                assert (new_left.shape, new_right.shape) == (left.shape, right.shape)
                swapped += 1
    assert swapped > 0


# --- determinism -----------------------------------------------------------------------------


def fingerprint(record) -> tuple:
    images = [record["image"], *(cf["image"] for cf in record["counterfactuals"])]
    return tuple(all_captions(record)) + tuple(image.tobytes() for image in images)


def test_same_index_same_record():
    assert fingerprint(generate_record(7, "train")) == fingerprint(generate_record(7, "train"))


def test_record_is_independent_of_order_and_global_random_state():
    forward = [fingerprint(generate_record(index, "test")) for index in range(20)]
    random.seed(1234)
    np.random.seed(1234)
    backward = [fingerprint(generate_record(index, "test")) for index in reversed(range(20))]
    assert forward == backward[::-1]


def test_seed_and_split_change_the_data():
    seed_0 = [generate_record(index, "train", seed=0)["caption"] for index in range(20)]
    seed_1 = [generate_record(index, "train", seed=1)["caption"] for index in range(20)]
    test_0 = [generate_record(index, "test", seed=0)["caption"] for index in range(20)]
    assert seed_0 != seed_1 and seed_0 != test_0
    assert len(set(seed_0)) > 10  # not one scene repeated


# --- held-out compositions ------------------------------------------------------------------


def test_train_never_shows_a_heldout_pair():
    for index in range(N_RECORDS):
        scene_record = sample_scene_record(index, "train")
        for scene in (scene_record.scene, *(edited for _, edited in scene_record.counterfactuals)):
            assert not scene.colour_shape_pairs & HELDOUT, describe(scene)


def test_every_test_scene_shows_a_heldout_pair():
    for index in range(N_RECORDS):
        assert sample_scene_record(index, "test").scene.colour_shape_pairs & HELDOUT


def test_heldout_rule_seen_in_captions(train_records, test_records):
    def mentions_heldout(caption: str) -> bool:
        words = caption.split()
        return any(
            colour == words[i] and words[i + 1].rstrip("s") == shape
            for i in range(len(words) - 1)
            for colour, shape in HELDOUT
        )

    for record in train_records:
        assert not any(mentions_heldout(caption) for caption in all_captions(record))
    assert all(mentions_heldout(record["caption"]) for record in test_records)


def test_custom_heldout_pairs():
    pairs = [("yellow", "square")]
    for index in range(50):
        train_scene = sample_scene_record(index, "train", heldout_pairs=pairs).scene
        test_scene = sample_scene_record(index, "test", heldout_pairs=pairs).scene
        assert ("yellow", "square") not in train_scene.colour_shape_pairs
        assert ("yellow", "square") in test_scene.colour_shape_pairs
    with pytest.raises(ValueError):
        generate_record(0, heldout_pairs=[("pink", "circle")])
    with pytest.raises(ValueError):
        generate_record(0, split="validation")


# --- rendering -------------------------------------------------------------------------------


@pytest.mark.parametrize("colour", list(COLOURS))
@pytest.mark.parametrize("shape", SHAPES)
def test_single_object_colour_is_rendered(colour, shape):
    image = render_scene(Scene((obj(shape, colour, "large"),)))
    assert image.size == (64, 64) and image.mode == "RGB"
    assert list(colours_in(image)) == [colour]


def test_large_is_larger_than_small():
    for shape in SHAPES:
        small = colours_in(render_scene(Scene((obj(shape, "red", "small"),))))["red"]
        large = colours_in(render_scene(Scene((obj(shape, "red", "large"),))))["red"]
        assert large > 2 * small


def test_images_show_the_colours_their_captions_name(train_records, test_records):
    colour_words = set(COLOURS)
    for record in train_records + test_records:
        for image, caption in image_caption_pairs(record):
            assert set(colours_in(image)) == colour_words & set(caption.split()), caption


def test_pair_order_in_caption_matches_image(train_records, test_records):
    checked = 0
    for record in train_records + test_records:
        for image, caption in image_caption_pairs(record):
            words = caption.split()
            named_first = words[2]  # "a <size> <colour> <shape> ..."
            if " to the left of " in caption and words[2] != words[-2]:
                assert first_colour(image, "x") == named_first, caption
                checked += 1
            elif " above " in caption and words[2] != words[-2]:
                assert first_colour(image, "y") == named_first, caption
                checked += 1
    assert checked > 100


def test_position_counterfactual_is_the_mirrored_image():
    mirrored = 0
    for index in range(N_RECORDS):
        record = generate_record(index, "train", styles=("plain",))
        for cf in record["counterfactuals"]:
            if cf["edit"] == "position":
                assert cf["image"].tobytes() == ImageOps.mirror(record["image"]).tobytes()
                mirrored += 1
    assert mirrored > 10


@pytest.mark.parametrize("image_size", [37, 64, 224])
def test_rendering_is_mirror_exact_at_any_size(image_size):
    for index in range(30):
        scene = sample_scene_record(index, "test").scene
        flipped = ImageOps.mirror(render_scene(scene, image_size))
        assert render_scene(mirror_left_right(scene), image_size).tobytes() == flipped.tobytes()


def test_group_count_is_rendered():
    # One connected blob per object: count the distinct cells that hold foreground pixels.
    for index in range(N_RECORDS):
        scene_record = sample_scene_record(index, "train")
        if scene_record.scene.layout != "group":
            continue
        array = np.asarray(render_scene(scene_record.scene))
        occupied = sum(
            bool((array[r : r + 32, c : c + 32] != BACKGROUND).any()) for r in (0, 32) for c in (0, 32)
        )
        assert NUMBER_WORDS[occupied] == describe(scene_record.scene).split()[0]
