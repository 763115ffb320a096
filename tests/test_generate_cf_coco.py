"""examples/generate_cf_coco.py on a COCO-format fixture: records, skips, load_dataset, one training step."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dummy_components import save_tiny_clip
from generation_fixtures import english_pipeline, write_coco_photos
from hf_counterfactual.features import COUNTERFACTUAL_FEATURES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import generate_cf_coco  # noqa: E402
import run_cf_clip  # noqa: E402


@pytest.fixture
def coco(tmp_path):
    return write_coco_photos(tmp_path / "coco")


TINY_MODELS = ["--inpainting_model", "tiny", "--num_inference_steps", "2", "--clip_filter_model", "tiny", "--clip_threshold", "-1"]


def test_generate_load_and_train_one_step(coco, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "cf-coco"
    stats = generate_cf_coco.main(
        ["--coco_root", str(coco), "--split", "val", "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
         "--edits", "attribute,object,position,count", "--records_per_shard", "2", "--batch_size", "3", *TINY_MODELS]
    )["val"]  # fmt: skip
    assert stats["num_items"] == 8 and stats["num_records"] == 6 and stats["num_skipped"] == 2
    assert stats["skip_reasons"] == {"no editable word": 1, "unreadable image (OSError)": 1}
    assert {"flip", "inpaint", "box-inpaint", "rule"} == set(stats["sources"])
    assert {"attribute", "object", "position", "count"} == set(stats["edits"])
    counts = stats["counts"]
    assert counts["image_edit/skipped: mask outside the image"] == 1  # item 8's cup box
    assert counts["filter/pixel_change/passed"] + counts.get("filter/pixel_change/failed", 0) == counts["image_edit/inpainted"]
    assert counts["image_edit/kept"] == stats["sources"]["inpaint"] + stats["sources"]["box-inpaint"]

    records = load_dataset(str(out))["val"]
    assert records.features == COUNTERFACTUAL_FEATURES and records.num_rows == 6
    first = records[0]
    assert first["caption"] == "an american flag to the left of a smiling woman"
    assert first["paraphrases"] == ["a woman in an orange suit next to a black helmet"]
    flip = next(cf for cf in first["counterfactuals"] if cf["source"] == "flip")
    assert flip["caption"] == "an american flag to the right of a smiling woman" and flip["edit"] == "position"
    original = np.asarray(Image.open(coco / "val2017" / "000000000001.jpg").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(flip["image"]), original[:, ::-1])
    # Inpainted counterfactuals: the original pixels outside the mask, a filter score kept for audit.
    for record in records:
        for cf in record["counterfactuals"]:
            if cf["source"] in ("inpaint", "box-inpaint"):
                assert cf["image"].size == record["image"].size and cf["score"] is not None
            elif cf["source"] == "rule":
                assert cf["image"] is None and cf["score"] is None
    coffee = records[2]
    cup = next(cf for cf in coffee["counterfactuals"] if cf["caption"].startswith("a green cup"))
    assert cup["source"] == "inpaint" and cup["edit"] == "attribute"
    changed = (np.asarray(cup["image"]) != np.asarray(coffee["image"])).any(-1)
    ys, xs = np.nonzero(changed)
    assert changed.any() and xs.min() >= 43 and xs.max() < 103 and ys.max() < 77  # inside the cup's box (43.75, 4.5, 102.5, 76.25)

    card = (out / "README.md").read_text()
    assert "records: 6 from 8 images; skipped: 2" in card and "configs:" in card
    assert '"pixel_change": "' in card and "filter pass rates" in card and "diffusion inpainting with tiny" in card

    # The generated folder feeds run_cf_clip unchanged.
    results = run_cf_clip.main(
        ["--model_name_or_path", save_tiny_clip(tmp_path / "model"), "--dataset_name", str(out), "--train_split", "val",
         "--test_split", "val", "--objective", "negclip", "--num_counterfactuals", "1", "--max_steps", "1",
         "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "trained"), "--report_to", "none",
         "--cache_dir", str(tmp_path / "cache")]
    )  # fmt: skip
    # every image-bearing counterfactual (flip, inpaint, box-inpaint) makes one 2x2 group
    assert results["after"]["all"]["count"] == sum(cf["image"] is not None for r in records for cf in r["counterfactuals"])


def test_unknown_edit_kind_is_an_error(coco, tmp_path):
    with pytest.raises(ValueError, match=r"--edits: unknown kind\(s\) \['colour'\]"):
        generate_cf_coco.main(["--coco_root", str(coco), "--split", "val", "--output_dir", str(tmp_path / "o"), "--edits", "colour"])
