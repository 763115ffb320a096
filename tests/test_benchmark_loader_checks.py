"""Benchmark loaders name the row, the field and the file: images of a Dataset decoded where the row
is known, missing keys, and image names that would leave the images folder."""

import csv
import io

import datasets
import numpy as np
import pytest
from PIL import Image

from benchmark_fixtures import save_image, table_scorer, write_json
from dummy_components import get_dummy_components, records_dataset
from hf_counterfactual.benchmarks import (
    coco_captions,
    counterfactual_records_benchmark,
    crepe_benchmark,
    eqben_benchmark,
    evaluate_benchmark,
    sugarcrepe_benchmark,
    valse_benchmark,
    vl_checklist_benchmark,
    winoground_benchmark,
)
from hf_counterfactual.benchmarks.files import ImageFolder
from hf_counterfactual.features import InvalidRecordError

GARBAGE = {"bytes": b"not an image at all", "path": None}


def _png(color) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _winoground_rows(n=3):
    return [
        {"id": 10 + r, "image_0": _png((r, 0, 0)), "image_1": _png((0, r, 0)), "caption_0": f"a red {r}", "caption_1": f"a blue {r}", "tag": "object"}
        for r in range(n)
    ]


WINOGROUND_FEATURES = datasets.Features(
    {"id": datasets.Value("int32"), "image_0": datasets.Image(), "image_1": datasets.Image(),
     "caption_0": datasets.Value("string"), "caption_1": datasets.Value("string"), "tag": datasets.Value("string")}
)  # fmt: skip


# --- Winoground and counterfactual records from a datasets.Dataset ----------------------------


def test_winoground_dataset_with_a_corrupt_image_names_row_id_and_column():
    rows = _winoground_rows()
    rows[2]["image_1"] = GARBAGE
    dataset = datasets.Dataset.from_list(rows, features=WINOGROUND_FEATURES)
    benchmark = winoground_benchmark(dataset)  # building it decodes no image
    assert [e.id for e in benchmark.examples] == ["10", "11", "12"]
    assert benchmark.load_image((1, 1)).size == (8, 6)
    with pytest.raises(InvalidRecordError, match=r"row 2 \(id 12\), field 'image_1': unreadable image"):
        evaluate_benchmark(table_scorer({}), benchmark)


def test_winoground_dataset_gives_the_images_datasets_decodes():
    dataset = datasets.Dataset.from_list(_winoground_rows(), features=WINOGROUND_FEATURES)
    from_dataset = winoground_benchmark(dataset)
    from_rows = winoground_benchmark(list(dataset))  # rows decoded by datasets
    for ref in from_rows.distinct_images():
        assert np.array_equal(np.asarray(from_dataset.load_image(ref)), np.asarray(from_rows.load_image(ref)))
    assert isinstance(dataset[0]["image_0"], Image.Image)  # the caller's dataset is left as it was
    refs = from_dataset.distinct_images()  # the Dataset's images have an identity for the pixel cache, one each; the list's do not
    assert from_rows.image_key is None and len({from_dataset.image_key(ref) for ref in refs}) == len(refs)


def test_counterfactual_records_dataset_with_a_corrupt_image_names_record_and_field():
    _, _, records = get_dummy_components(num_records=3)
    broken = [dict(r) for r in records]
    broken[1]["counterfactuals"] = [dict(cf) for cf in broken[1]["counterfactuals"]]
    broken[1]["counterfactuals"][2]["image"] = GARBAGE
    benchmark = counterfactual_records_benchmark(records_dataset(broken))
    assert np.array_equal(np.asarray(benchmark.load_image((1, 1))), np.asarray(records[1]["counterfactuals"][1]["image"].convert("RGB")))
    with pytest.raises(InvalidRecordError, match=r"record 1, field 'counterfactuals\[2\]\.image': unreadable image"):
        benchmark.load_image((1, 2))


def test_counterfactual_records_missing_a_field_name_row_and_field():
    _, _, records = get_dummy_components(num_records=2)
    record = {k: v for k, v in records[1].items() if k != "caption"}
    with pytest.raises(InvalidRecordError, match=r"row 1, field 'caption': missing"):
        counterfactual_records_benchmark([records[0], record])
    cf = {k: v for k, v in records[0]["counterfactuals"][0].items() if k != "edit"}
    with pytest.raises(InvalidRecordError, match=r"row 0, field 'counterfactuals\[0\]\.edit'"):
        counterfactual_records_benchmark([dict(records[0], counterfactuals=[cf])])


@pytest.mark.parametrize("missing", ["caption_0", "image_1", "tag"])
def test_winoground_row_missing_a_field_names_row_field_and_expected_columns(missing):
    rows = _winoground_rows()
    del rows[1][missing]
    with pytest.raises(ValueError, match=rf"row 1 \(id 11\): missing '{missing}' \(the Winoground schema has \['image_0', 'image_1', 'caption_0', 'caption_1', 'tag'\]"):
        winoground_benchmark(rows)


def test_winoground_dataset_without_a_column_names_the_columns():
    dataset = datasets.Dataset.from_list(_winoground_rows(), features=WINOGROUND_FEATURES).remove_columns("caption_1")
    with pytest.raises(ValueError, match=r"winoground: the rows have no column\(s\) \['caption_1'\]; the Winoground schema has .*these rows have \["):
        winoground_benchmark(dataset)
    assert len(winoground_benchmark(datasets.Dataset.from_list(_winoground_rows(), features=WINOGROUND_FEATURES).remove_columns("tag"), subset_column=None)) == 3


def test_winoground_caption_that_is_not_a_string_is_named():
    rows = _winoground_rows()
    rows[0]["caption_1"] = ["a", "list"]
    with pytest.raises(ValueError, match=r"row 0 \(id 10\): 'caption_1' must be a non-empty string"):
        winoground_benchmark(rows)


# --- coco_captions: missing keys name the file and the entry ---------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        ({"images": [{"id": 1}], "annotations": []}, r"captions_val2017\.json, images\[0\]: missing \['file_name'\]"),
        ({"images": [{"file_name": "1.jpg"}], "annotations": []}, r"captions_val2017\.json, images\[0\]: missing \['id'\]"),
        ({"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 1}]},
         r"captions_val2017\.json, annotations\[1\]: missing \['caption'\] \(a COCO caption annotation has \['image_id', 'caption'\]"),
        ({"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [{"caption": "a"}]}, r"annotations\[0\]: missing \['image_id'\]"),
        ({"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [{"image_id": 2, "caption": "a"}]}, r"annotations\[0\]: refers to unknown image_id 2"),
        ({"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": ["a dog"]}, r"annotations\[0\]: expected an object"),
        ({"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": [{"image_id": 1, "caption": 5}]}, r"annotations\[0\]: 'caption' must be a string"),
        ({"images": {"id": 1}, "annotations": []}, r"captions_val2017\.json: 'images' must be a list"),
        ({"images": [{"id": 1, "file_name": "../../etc/1.jpg"}], "annotations": []}, r"'file_name' '\.\./\.\./etc/1\.jpg' leaves the images folder .*captions_val2017\.json, images\[0\]"),
        ([{"image": "a.jpg", "caption": ["x"]}, {"caption": ["y"]}], r"captions_val2017\.json, entry 1: missing \['image'\]"),
        ([{"image": "/data/a.jpg", "caption": ["x"]}], r"'image' '/data/a\.jpg' leaves the images folder .*entry 0"),
    ],
)
def test_coco_captions_names_the_file_and_entry(tmp_path, data, message):
    path = tmp_path / "captions_val2017.json"
    write_json(path, data)
    with pytest.raises(ValueError, match=message):
        coco_captions(path)


# --- image names that leave the images folder -------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """An image just outside the images folders: what a ``../`` name would read."""
    save_image(tmp_path / "secret.jpg")
    return tmp_path / "secret.jpg"


def _valse_entry(image_file, dataset="visual7w"):
    return {"dataset": dataset, "image_file": image_file, "caption": "two dogs", "foil": "three dogs", "mturk": {"caption": 3}}


def test_valse_image_file_that_leaves_the_folder_names_file_and_id(tmp_path, outside):
    images = tmp_path / "valse_images"
    save_image(images / "visual7w" / "ok.jpg")
    annotations = tmp_path / "data" / "counting-hard.json"
    write_json(annotations, {"0": _valse_entry("ok.jpg"), "7": _valse_entry("../../secret.jpg")})
    with pytest.raises(ValueError, match=r"image file name '\.\./\.\./secret\.jpg' leaves the images folder .*counting-hard\.json, id '7'"):
        valse_benchmark(annotations, images)
    with pytest.raises(ValueError, match=r"image file name '\.\./secret\.jpg' leaves .*counting-hard\.json, id '7'"):
        write_json(annotations, {"7": _valse_entry("../secret.jpg")})
        valse_benchmark(annotations, {"visual7w": images / "visual7w"})
    write_json(annotations, {"3": _valse_entry(str(outside))})  # absolute
    with pytest.raises(ValueError, match=r"leaves the images folder .*counting-hard\.json, id '3'"):
        valse_benchmark(annotations, images)
    write_json(annotations, {"4": _valse_entry("secret.jpg", dataset="..")})  # the dataset folder, under one root
    with pytest.raises(ValueError, match=r"dataset folder name '\.\.' leaves the images folder .*counting-hard\.json, id '4'"):
        valse_benchmark(annotations, images)
    (images / "visual7w" / "sub").mkdir()
    write_json(annotations, {"0": _valse_entry("sub/../ok.jpg")})  # a '..' that stays inside is fine
    assert len(valse_benchmark(annotations, images)) == 1


def test_vl_checklist_image_path_that_leaves_the_folder_names_file_and_item(tmp_path, outside):
    dataset = tmp_path / "dataset"
    save_image(dataset / "vg" / "VG_100K" / "1.jpg")
    annotations = tmp_path / "data" / "Attribute" / "vg" / "color.json"
    write_json(annotations, [["VG_100K/1.jpg", {"POS": ["a red car"], "NEG": ["a blue car"]}], ["../../secret.jpg", {"POS": ["a red car"], "NEG": ["a blue car"]}]])
    for skip in (False, True):  # not a missing image to skip: a bad annotation
        with pytest.raises(ValueError, match=r"'\.\./\.\./secret\.jpg' leaves the images folder .*color\.json, item 1"):
            vl_checklist_benchmark(annotations, dataset, skip_missing_images=skip)


def test_crepe_image_id_that_leaves_the_folder_names_file_and_row(tmp_path, outside):
    vg = tmp_path / "vg"
    save_image(vg / "VG_100K" / "1.jpg", size=(32, 32))
    (vg / "VG_100K_2").mkdir()
    path = tmp_path / "prod_vg_hard_negs_swap_complexity_4.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "caption", "hard_negs", "x", "y", "width", "height"])
        writer.writerow(["1", "a dog on a mat", "['a mat on a dog']", 0, 0, 8, 8])
        writer.writerow(["../../secret", "a dog on a mat", "['a mat on a dog']", 0, 0, 8, 8])
    with pytest.raises(ValueError, match=r"'\.\./\.\./secret\.jpg' leaves the images folder .*complexity_4\.csv, row 1"):
        crepe_benchmark(path, vg)


def test_sugarcrepe_and_eqben_names_that_leave_the_folder_name_the_entry(tmp_path, outside):
    images = tmp_path / "val2017"
    save_image(images / "1.jpg")
    write_json(tmp_path / "data" / "add_att.json", {"5": {"filename": "../secret.jpg", "caption": "a dog", "negative_caption": "a red dog"}})
    with pytest.raises(ValueError, match=r"'\.\./secret\.jpg' leaves the images folder .*add_att\.json, id '5'"):
        sugarcrepe_benchmark(tmp_path / "data", images, subsets="add_att")
    eqben = tmp_path / "eqben.json"
    write_json(eqben, [{"image0": "1.jpg", "caption0": "a", "image1": "../secret.jpg", "caption1": "b"}])
    with pytest.raises(ValueError, match=r"'\.\./secret\.jpg' leaves the images folder .*eqben\.json, row 0"):
        eqben_benchmark(eqben, images, subset_by=None)


def test_an_image_that_is_a_link_to_elsewhere_is_still_in_the_folder(tmp_path):
    # The Hugging Face Hub cache keeps a snapshot's files as links to blobs outside the snapshot folder.
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(blobs / "0123abcd", format="PNG")
    snapshot.mkdir(parents=True)
    (snapshot / "1.jpg").symlink_to(blobs / "0123abcd")
    folder = ImageFolder(snapshot)
    folder.check_files([("1.jpg", None)])
    assert folder(("1.jpg", None)).getpixel((0, 0)) == (1, 2, 3)
