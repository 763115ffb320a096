import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dummy_components import get_dummy_components
from hf_counterfactual import CounterfactualCollator, InvalidRecordError
from hf_counterfactual.collator import content_key


@pytest.fixture(scope="module")
def components():
    return get_dummy_components(num_records=6)


def decode(processor, input_ids, attention_mask):
    return processor.tokenizer.decode(input_ids[attention_mask.bool()], skip_special_tokens=True)


@pytest.mark.parametrize("image_path", ["fast", "exact"])
def test_indices_point_at_the_right_images_and_texts(components, image_path):
    _, processor, records = components
    collator = CounterfactualCollator(processor, num_counterfactuals=4, image_path=image_path)
    batch = collator(records)
    assert batch["pixel_values"].dtype == torch.float32  # normalised, unless deferred (the trainer's collator)
    # Decoded images (no draft decode): the fast path is the processor's pixels to within one uint8 level.
    tolerance = {"atol": 1.01 / 255 / min(processor.image_processor.image_std), "rtol": 0} if image_path == "fast" else {}
    pixels = processor.image_processor([r["image"] for r in records], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"][batch["image_index"]], pixels, **tolerance)
    for b, record in enumerate(records):
        row = batch["text_index"][b]
        assert decode(processor, batch["input_ids"][row], batch["attention_mask"][row]) == record["caption"]
        captions = {cf["caption"]: cf for cf in record["counterfactuals"]}
        for k in range(4):
            row = batch["cf_text_index"][b, k]
            text = decode(processor, batch["input_ids"][row], batch["attention_mask"][row])
            assert text in captions  # one of this record's own counterfactuals
            image_row = batch["cf_image_index"][b, k]
            expected = processor.image_processor([captions[text]["image"]], return_tensors="pt")["pixel_values"][0]
            torch.testing.assert_close(batch["pixel_values"][image_row], expected, **tolerance)
        assert len(set(batch["cf_text_index"][b].tolist())) == 4  # K distinct counterfactuals


def test_each_distinct_text_is_encoded_once(components):
    _, processor, records = components
    batch = CounterfactualCollator(processor)(records + records[:2])  # two records repeated
    texts = {r["caption"] for r in records} | {cf["caption"] for r in records for cf in r["counterfactuals"]}
    assert batch["input_ids"].shape[0] == len(texts)
    assert batch["text_index"][6] == batch["text_index"][0]
    # identical images are encoded once too: the 6 distinct records' 6 factual + 6 * 4 counterfactual
    assert batch["pixel_values"].shape[0] == 6 * 5
    assert batch["image_index"][6] == batch["image_index"][0] and batch["image_index"][:6].tolist() == list(range(6))
    torch.testing.assert_close(batch["cf_image_index"][6:], batch["cf_image_index"][:2])


def test_texts_equal_up_to_case_whitespace_or_token_ids_share_a_row(components):
    _, processor, records = components
    shouted = dict(records[1], caption="  " + records[0]["caption"].upper().replace(" ", "   "))
    # Neither word is in the tiny vocabulary: both are [UNK], the same token ids to the model.
    zebra, giraffe = (dict(records[2], caption=f"a red {animal}") for animal in ("zebra", "giraffe"))
    batch = CounterfactualCollator(processor, num_counterfactuals=0)([records[0], shouted, zebra, giraffe])
    assert batch["text_index"].tolist() == [0, 0, 1, 1]
    assert batch["input_ids"].shape[0] == 2
    assert decode(processor, batch["input_ids"][0], batch["attention_mask"][0]) == records[0]["caption"]


def test_counterfactual_with_the_captions_token_ids_names_the_item(components):
    _, processor, records = components
    # "zebra" and "giraffe" are both [UNK]: different strings, the same text to the model.
    record = dict(records[1], caption="a red zebra")
    record["counterfactuals"] = [dict(record["counterfactuals"][0], caption="a red giraffe"), *record["counterfactuals"][1:]]
    with pytest.raises(InvalidRecordError, match=r"batch item 1 \(caption 'a red zebra'\).*own token ids"):
        CounterfactualCollator(processor, num_counterfactuals=4)([records[0], record])


def test_content_keys_follow_content(components):
    _, processor, records = components
    same_photo = dict(records[1], image=records[0]["image"].copy())  # equal pixels, another object
    batch = CounterfactualCollator(processor)([records[0], same_photo, records[0]])
    text_key, image_key = batch["text_key"], batch["image_key"]
    assert text_key.dtype == image_key.dtype == torch.int64
    assert text_key.shape == (batch["input_ids"].shape[0],) and image_key.shape == (batch["pixel_values"].shape[0],)
    assert len(set(text_key.tolist())) == len(text_key) and len(set(image_key.tolist())) == len(image_key)  # one row per content
    assert batch["image_index"].tolist() == [0, 0, 0]
    assert batch["text_index"][0] == batch["text_index"][2] != batch["text_index"][1]
    # A key depends on the content only, not on the batch it came in.
    alone = CounterfactualCollator(processor)([records[1]])
    assert alone["text_key"][alone["text_index"][0]] == text_key[batch["text_index"][1]]
    assert alone["image_key"][alone["image_index"][0]] != image_key[batch["image_index"][1]]  # its own photo
    assert alone["image_key"][alone["cf_image_index"][0]].tolist() == image_key[batch["cf_image_index"][1]].tolist()


def test_content_key_is_the_same_in_another_process():
    """Python's hash of bytes is salted per process; content keys must not be (they are gathered)."""
    code = "import torch; from hf_counterfactual.collator import content_key; print(content_key(torch.arange(7)), content_key(torch.ones(2, 3)))"
    runs = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2")
    }
    assert runs == {f"{content_key(torch.arange(7))} {content_key(torch.ones(2, 3))}\n"}
    assert content_key(torch.arange(7)) != content_key(torch.arange(7, dtype=torch.int32))  # dtype is content
    assert 0 <= content_key(torch.arange(7)) < 2**63


def test_objective_that_needs_no_images_gets_none(components):
    _, processor, records = components
    batch = CounterfactualCollator(processor, use_counterfactual_images=False)(records)
    assert batch["pixel_values"].shape[0] == len(records)
    assert (batch["cf_image_index"] == -1).all() and (batch["cf_text_index"] >= 0).all()


def test_counterfactual_fraction_zero_gives_only_real_pairs(components):
    _, processor, records = components
    batch = CounterfactualCollator(processor, counterfactual_fraction=0.0)(records)
    assert (batch["cf_text_index"] == -1).all() and (batch["cf_image_index"] == -1).all()
    assert batch["pixel_values"].shape[0] == len(records)


def test_counterfactual_fraction_half_mixes(components):
    _, processor, records = components
    torch.manual_seed(0)
    used = [
        (CounterfactualCollator(processor, counterfactual_fraction=0.5)(records)["cf_text_index"][:, 0] >= 0).float().mean()
        for _ in range(20)
    ]
    assert 0.3 < float(torch.stack(used).mean()) < 0.7


def test_text_only_counterfactual_has_no_image_row(components):
    _, processor, records = components
    record = dict(records[0], counterfactuals=[dict(cf, image=None) if i == 1 else cf for i, cf in enumerate(records[0]["counterfactuals"])])
    batch = CounterfactualCollator(processor)([record])
    assert batch["cf_image_index"][0].tolist().count(-1) == 1
    assert batch["pixel_values"].shape[0] == 1 + 3


def test_fewer_counterfactuals_than_k_names_the_item(components):
    _, processor, records = components
    short = dict(records[1], counterfactuals=records[1]["counterfactuals"][:2])
    with pytest.raises(InvalidRecordError, match=r"batch item 1 .*counterfactuals.*has 2 .*at least 4"):
        CounterfactualCollator(processor, num_counterfactuals=4)([records[0], short])


def test_unreadable_image_names_the_item_and_field(components):
    _, processor, records = components
    bad = dict(records[0], image={"bytes": b"not an image", "path": None})
    with pytest.raises(InvalidRecordError, match=r"batch item 0 .*field 'image'.*unreadable image"):
        CounterfactualCollator(processor)([bad])


def test_undecoded_images_are_accepted(components):
    _, processor, records = components
    buffer = io.BytesIO()
    records[0]["image"].save(buffer, format="PNG")
    undecoded = dict(records[0], image={"bytes": buffer.getvalue(), "path": None})
    a = CounterfactualCollator(processor)([undecoded])["pixel_values"]
    b = CounterfactualCollator(processor)([records[0]])["pixel_values"]
    torch.testing.assert_close(a, b)


def test_empty_caption_is_an_error(components):
    _, processor, records = components
    with pytest.raises(InvalidRecordError, match=r"field 'caption'.*non-empty"):
        CounterfactualCollator(processor)([dict(records[0], caption="  ")])


def test_too_long_text_is_an_error_unless_truncating(components):
    _, processor, records = components
    long_caption = " ".join(["a red circle"] * 20)
    record = dict(records[0], caption=long_caption)
    with pytest.raises(ValueError, match=r"longer than max_length=16"):
        CounterfactualCollator(processor, max_length=16)([record])
    batch = CounterfactualCollator(processor, max_length=16, truncation=True)([record])
    assert batch["input_ids"].shape[1] == 16


def test_more_counterfactuals_than_k_are_subsampled(components):
    _, processor, records = components
    torch.manual_seed(0)
    batch = CounterfactualCollator(processor, num_counterfactuals=2)(records[:1])
    assert batch["cf_text_index"].shape == (1, 2)
    assert (batch["cf_text_index"] >= 0).all()


def test_wrong_image_type_is_an_error(components):
    _, processor, records = components
    with pytest.raises(InvalidRecordError, match=r"field 'image'.*expected an image"):
        CounterfactualCollator(processor)([dict(records[0], image="cat.jpg")])
    assert isinstance(records[0]["image"], Image.Image)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_images_are_scaled_not_clipped(mode, tmp_path):
    from hf_counterfactual.collator import load_image

    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)  # uint16: a 16-bit greyscale PNG
    opened = Image.open(path)
    opened = opened if mode == "I;16" else opened.convert("I")
    rgb = np.asarray(load_image({"path": str(path), "bytes": None} if mode == "I;16" else opened, "item"))
    expected = np.rint(ramp / 257.0)
    assert rgb.shape == (8, 8, 3) and np.abs(rgb[..., 0] - expected).max() <= 1
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255  # convert("RGB") would clip most of it to 255


def test_a_record_that_is_not_a_mapping_names_the_item(components):
    _, processor, records = components
    with pytest.raises(InvalidRecordError, match=r"batch item 1 .*expected a record"):
        CounterfactualCollator(processor, num_counterfactuals=0)([records[0], None])


def test_a_dark_16_bit_image_stays_dark():
    from hf_counterfactual.collator import to_rgb

    dark = Image.fromarray(np.full((4, 4), 200, dtype=np.uint16))  # I;16, far below full scale
    assert dark.mode.startswith("I;16")
    assert np.asarray(to_rgb(dark)).max() == 1  # 200 / 257, not 200 read as 8-bit
