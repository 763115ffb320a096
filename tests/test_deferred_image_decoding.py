"""Images of a datasets.Dataset decoded by the collator, where the batch item and field are known
(features.defer_image_decoding), instead of inside datasets' row indexing, where no row is named."""

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from dummy_components import get_dummy_components, records_dataset
from hf_counterfactual import CounterfactualCollator, InvalidRecordError
from hf_counterfactual.features import defer_image_decoding


@pytest.fixture(scope="module")
def components():
    return get_dummy_components(num_records=3)


def _rotated_jpeg(seed: int) -> dict:
    """A JPEG whose EXIF says "rotate 90 degrees" (orientation 6): datasets turns it upright on decoding."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((24, 40, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, 40, dtype=np.uint8)  # a left-right ramp: rotating it shows
    pixels[..., 1] = rng.integers(0, 255, (24, 40), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes())
    return {"bytes": buffer.getvalue(), "path": None}


def _with_images(records, factual, counterfactual):
    return [
        dict(r, image=factual(b), counterfactuals=[dict(cf, image=counterfactual(b, j)) for j, cf in enumerate(r["counterfactuals"])])
        for b, r in enumerate(records)
    ]


def _collate(processor, rows):
    torch.manual_seed(0)
    return CounterfactualCollator(processor, num_counterfactuals=4)(rows)


def test_a_corrupt_counterfactual_image_names_the_batch_item_and_field(components):
    _, processor, records = components
    broken = [dict(r) for r in records]
    broken[1]["counterfactuals"] = [dict(cf) for cf in broken[1]["counterfactuals"]]
    broken[1]["counterfactuals"][2]["image"] = {"bytes": b"these bytes are no image", "path": "cf-1-2.png"}
    dataset = records_dataset(broken)
    with pytest.raises(Exception) as inside_datasets:  # what happens without deferral: no row named
        dataset[1]
    assert "counterfactuals" not in str(inside_datasets.value)

    rows = [row for row in defer_image_decoding(dataset)]  # reading rows no longer decodes
    with pytest.raises(InvalidRecordError, match=r"batch item 1 \(caption .*\), field 'counterfactuals\[2\]\.image': unreadable image 'cf-1-2\.png'"):
        _collate(processor, rows)


def test_a_corrupt_factual_image_names_the_batch_item(components):
    _, processor, records = components
    dataset = records_dataset([records[0], dict(records[1], image={"bytes": b"\x89PNG garbage", "path": None})])
    rows = list(defer_image_decoding(dataset))
    with pytest.raises(InvalidRecordError, match=r"batch item 1 \(caption .*\), field 'image': unreadable image"):
        _collate(processor, rows)


def test_deferred_decoding_gives_the_pixels_of_datasets_decoding(components):
    _, processor, records = components
    buffers = {}

    def png(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    # EXIF-rotated JPEGs (datasets turns them upright) next to plain PNGs.
    rows = _with_images(
        records,
        lambda b: _rotated_jpeg(b) if b != 1 else png(records[b]["image"]),
        lambda b, j: buffers.setdefault((b, j), _rotated_jpeg(100 + 10 * b + j) if j % 2 else png(records[b]["counterfactuals"][j]["image"])),
    )
    dataset = records_dataset(rows)
    decoded, deferred = list(dataset), list(defer_image_decoding(dataset))
    assert isinstance(decoded[0]["image"], Image.Image) and isinstance(deferred[0]["image"], dict)
    assert isinstance(deferred[0]["counterfactuals"][1]["image"], dict)
    expected, got = _collate(processor, decoded), _collate(processor, deferred)
    assert expected.keys() == got.keys()
    for key in expected:
        if key == "texts":  # the distinct texts as strings
            assert got[key] == expected[key]
        else:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_deferral_keeps_rows_format_and_data(components, tmp_path):
    _, _, records = components
    records_dataset(records).save_to_disk(str(tmp_path / "saved"))
    dataset = datasets.load_from_disk(str(tmp_path / "saved")).shuffle(seed=1).with_format(columns=["image", "caption"], output_all_columns=True)
    deferred = defer_image_decoding(dataset)
    assert deferred.cache_files == dataset.cache_files  # the same memory-mapped files, nothing rewritten
    assert deferred.format == dataset.format and len(deferred) == len(dataset)
    assert [row["caption"] for row in deferred] == [row["caption"] for row in dataset]
    assert deferred.features["image"] == datasets.Image(decode=False)
    assert deferred.features["counterfactuals"].feature["image"] == datasets.Image(decode=False)
    assert deferred._fingerprint != dataset._fingerprint
    assert defer_image_decoding(deferred) is deferred  # already deferred
    assert defer_image_decoding(records) is records  # a list holds what it holds

    streamed = defer_image_decoding(records_dataset(records).to_iterable_dataset())
    assert isinstance(next(iter(streamed))["counterfactuals"][0]["image"], dict)
    split = defer_image_decoding(datasets.DatasetDict(train=records_dataset(records)))
    assert split["train"].features["image"] == datasets.Image(decode=False)
