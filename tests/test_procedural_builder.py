"""Tests of the `datasets` builder of procedural scenes (default and winoground configs)."""

from __future__ import annotations

import datasets
import pytest
from PIL import Image

from hf_counterfactual.builders import (
    WINOGROUND_FEATURES,
    ProceduralScenes,
    ProceduralScenesConfig,
    load_procedural_scenes,
)
from hf_counterfactual.builders import procedural_scenes
from hf_counterfactual.features import COUNTERFACTUAL_FEATURES, validate_record
from hf_counterfactual.scenes import HELDOUT_STYLE, LAYOUTS, TRAIN_STYLES, generate_record

# split -> (the split whose scenes it holds, the styles it draws them in)
SPLITS = {"train": ("train", TRAIN_STYLES), "test": ("test", TRAIN_STYLES), "test_heldout_style": ("test", (HELDOUT_STYLE,))}

NUM_TRAIN, NUM_TEST = 12, 5


def pixels(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets_cache"))


@pytest.fixture(scope="module")
def default_ds(cache_dir):
    builder = ProceduralScenes(config_name="default", cache_dir=cache_dir, num_train=NUM_TRAIN, num_test=NUM_TEST)
    builder.download_and_prepare()
    return builder.as_dataset()


@pytest.fixture(scope="module")
def winoground_ds(cache_dir):
    return load_procedural_scenes("winoground", cache_dir=cache_dir, num_train=NUM_TRAIN, num_test=NUM_TEST)


def test_default_config_splits_and_features(default_ds):
    assert isinstance(default_ds, datasets.DatasetDict)
    assert set(default_ds) == set(SPLITS)
    assert default_ds["train"].num_rows == NUM_TRAIN
    assert default_ds["test"].num_rows == default_ds["test_heldout_style"].num_rows == NUM_TEST
    for split in default_ds.values():
        assert split.features == COUNTERFACTUAL_FEATURES


@pytest.mark.parametrize("split", list(SPLITS))
def test_default_rows_are_the_generated_records(default_ds, split):
    scene_split, styles = SPLITS[split]
    for index, row in enumerate(default_ds[split]):
        validate_record(row, index, min_counterfactuals=4)
        expected = generate_record(index, scene_split, styles=styles)
        assert isinstance(row["image"], Image.Image)
        assert pixels(row["image"]) == pixels(expected["image"])
        assert row["caption"] == expected["caption"] and row["paraphrases"] == expected["paraphrases"]
        for got, want in zip(row["counterfactuals"], expected["counterfactuals"], strict=True):
            assert isinstance(got["image"], Image.Image)
            assert pixels(got["image"]) == pixels(want["image"])
            assert {k: got[k] for k in ("caption", "edit", "source", "score")} == {
                k: want[k] for k in ("caption", "edit", "source", "score")
            }


def test_heldout_style_split_holds_the_test_scenes_drawn_otherwise(default_ds):
    test, heldout = default_ds["test"], default_ds["test_heldout_style"]
    assert heldout["caption"] == test["caption"]
    assert [[cf["caption"] for cf in row] for row in heldout["counterfactuals"]] == [
        [cf["caption"] for cf in row] for row in test["counterfactuals"]
    ]
    assert all(pixels(a) != pixels(b) for a, b in zip(heldout["image"], test["image"]))


def test_winoground_rows_match_the_records(winoground_ds):
    for split, num_records in (("train", NUM_TRAIN), ("test", NUM_TEST), ("test_heldout_style", NUM_TEST)):
        rows = winoground_ds[split]
        assert rows.features == WINOGROUND_FEATURES
        assert rows.num_rows == 4 * num_records
        assert sorted(rows["id"]) == list(range(4 * num_records))
        scene_split, styles = SPLITS[split]
        for row in rows:
            record = generate_record(row["id"] // 4, scene_split, styles=styles)
            cf = record["counterfactuals"][row["id"] % 4]
            assert row["caption_0"] == record["caption"] and pixels(row["image_0"]) == pixels(record["image"])
            assert row["caption_1"] == cf["caption"] and pixels(row["image_1"]) == pixels(cf["image"])
            assert row["caption_0"] != row["caption_1"]
            assert row["tag"] == row["collapsed_tag"] == cf["edit"]
            assert row["secondary_tag"] in LAYOUTS
            assert 1 <= row["num_main_preds"] <= 4
            if row["secondary_tag"] in ("horizontal", "vertical"):
                assert row["num_main_preds"] == 2


def test_config_kwargs_change_the_cache_directory(tmp_path):
    def cache_dir(**kwargs) -> str:
        return ProceduralScenes(cache_dir=str(tmp_path), **kwargs).cache_dir

    variants = [
        {},
        {"num_train": 10},
        {"num_test": 10},
        {"seed": 1},
        {"image_size": 32},
        {"counterfactuals_per_record": 5},
        {"heldout_pairs": (("red", "circle"),)},
        {"styles": ("plain",)},
        {"heldout_style": ""},
        {"config_name": "winoground"},
    ]
    directories = [cache_dir(**kwargs) for kwargs in variants]
    assert len(set(directories)) == len(variants)
    assert cache_dir(num_train=10) == directories[1]  # and the same kwargs find the same cache


def test_prepared_data_is_reused(cache_dir, default_ds):
    again = load_procedural_scenes(cache_dir=cache_dir, num_train=NUM_TRAIN, num_test=NUM_TEST)
    assert again["train"].cache_files == default_ds["train"].cache_files


def test_config_settings_reach_the_data(tmp_path):
    ds = load_procedural_scenes(
        cache_dir=str(tmp_path), num_train=3, num_test=2, seed=5, image_size=32, counterfactuals_per_record=5
    )
    assert (ds["train"].num_rows, ds["test"].num_rows) == (3, 2)
    row = ds["train"][1]
    assert row["image"].size == (32, 32) and len(row["counterfactuals"]) == 5
    assert row["caption"] == generate_record(1, "train", seed=5)["caption"]


def test_an_empty_split_is_left_out(tmp_path):
    ds = load_procedural_scenes(cache_dir=str(tmp_path), num_train=2, num_test=0)
    assert list(ds) == ["train"] and ds["train"].num_rows == 2


def test_no_heldout_style_split(tmp_path):
    ds = load_procedural_scenes(cache_dir=str(tmp_path), num_train=2, num_test=2, styles=("plain",), heldout_style="")
    assert set(ds) == {"train", "test"}
    assert ds["test"]["caption"] == [generate_record(index, "test", styles=("plain",))["caption"] for index in range(2)]
    assert pixels(ds["train"][0]["image"]) == pixels(generate_record(0, "train", styles=("plain",))["image"])


def test_sharded_generation_gives_the_same_rows(tmp_path, monkeypatch, default_ds):
    monkeypatch.setattr(procedural_scenes, "_RECORDS_PER_SHARD", 5)
    builder = ProceduralScenes(cache_dir=str(tmp_path), num_train=NUM_TRAIN, num_test=NUM_TEST)
    builder.download_and_prepare(num_proc=2)
    sharded = builder.as_dataset()
    for split in SPLITS:
        assert sharded[split]["caption"] == default_ds[split]["caption"]
        assert [pixels(image) for image in sharded[split]["image"]] == [pixels(image) for image in default_ds[split]["image"]]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_train": -1},
        {"num_train": 0, "num_test": 0},
        {"image_size": 2},
        {"counterfactuals_per_record": 0},
        {"heldout_pairs": (("pink", "circle"),)},
        {"styles": ()},
        {"styles": ("watercolour",)},
        {"heldout_style": "watercolour"},
        {"styles": ("flat", HELDOUT_STYLE)},  # the held-out style in training
    ],
)
def test_invalid_settings_are_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError):
        ProceduralScenes(cache_dir=str(tmp_path), **kwargs)
    with pytest.raises(ValueError):
        ProceduralScenesConfig(name="custom", **kwargs)


def test_unknown_config_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        ProceduralScenes(config_name="nope", cache_dir=str(tmp_path))


def test_no_heldout_pairs(tmp_path):
    builder = ProceduralScenes(cache_dir=str(tmp_path), num_train=2, num_test=2, heldout_pairs=())
    assert builder.config.heldout_pairs == ()
    builder.download_and_prepare()
    expected = [generate_record(index, "test", heldout_pairs=())["caption"] for index in range(2)]
    assert builder.as_dataset()["test"]["caption"] == expected
