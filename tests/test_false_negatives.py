"""False negatives (issue 8): a column holding the same text or image as a row's positive is no negative.

Each case builds a batch with one kind of duplicate and compares the objective's contrastive terms
with the naive masked InfoNCE of ``test_objectives.symmetric_infonce``, whose ids come from the raw
records (caption strings up to case and whitespace, image bytes), not from the collator's keys.
Every case also checks that the duplicate changes the loss, so that the test can fail.
"""

import pytest
import torch

from dummy_components import get_dummy_components
from hf_counterfactual import CounterfactualCollator, CounterfactualObjective, normalize_caption
from hf_counterfactual.scoring import DualEncoderScores
from test_objectives import embed_records, encode_batch, symmetric_infonce

CONTRASTIVE = ("align", "negclip", "grouping")


@pytest.fixture(scope="module")
def components():
    return get_dummy_components(num_records=4)


def reference(records, ref, scale, masked=True):
    """The naive align / negclip / grouping of ``records`` (every counterfactual joins, in order).
    ``masked=False``: every id distinct, i.e. the loss before issue 8."""
    cfs = [(b, k) for b, r in enumerate(records) for k in range(len(r["counterfactuals"]))]
    pairs = [(b, k) for b, k in cfs if records[b]["counterfactuals"][k]["image"] is not None]
    text_only = [(b, k) for b, k in cfs if (b, k) not in pairs]
    cf = {(b, k): records[b]["counterfactuals"][k] for b, k in cfs}

    def image_ids(images):
        return [(im.size, im.tobytes()) for im in images] if masked else None

    def text_ids(captions):
        return [normalize_caption(c) for c in captions] if masked else None

    factual_images, factual_texts = image_ids([r["image"] for r in records]), text_ids([r["caption"] for r in records])
    return {
        "align": symmetric_infonce(ref["image"], ref["text"], scale, image_ids=factual_images, text_ids=factual_texts),
        "negclip": symmetric_infonce(
            ref["image"],
            ref["text"],
            scale,
            [ref["cf_text"][b][k] for b, k in cfs],
            factual_images,
            factual_texts,
            text_ids([cf[key]["caption"] for key in cfs]),
        ),
        "grouping": symmetric_infonce(
            ref["image"] + [ref["cf_image"][b][k] for b, k in pairs],
            ref["text"] + [ref["cf_text"][b][k] for b, k in pairs],
            scale,
            [ref["cf_text"][b][k] for b, k in text_only],
            image_ids([r["image"] for r in records] + [cf[key]["image"] for key in pairs]),
            text_ids([r["caption"] for r in records] + [cf[key]["caption"] for key in pairs]),
            text_ids([cf[key]["caption"] for key in text_only]),
        ),
    }


def embed_for_reference(model, processor, records):
    # The reference embeds text-only counterfactuals' captions but no image for them.
    placeholder = records[0]["image"]
    filled = [
        dict(r, counterfactuals=[dict(c, image=c["image"] if c["image"] is not None else placeholder) for c in r["counterfactuals"]])
        for r in records
    ]
    return embed_records(model, processor, filled)


def check_against_reference(components, records, must_change=CONTRASTIVE):
    model, processor, _ = components
    batch = CounterfactualCollator(processor, num_counterfactuals=4)(records)
    out, scale = encode_batch(model, batch), model.logit_scale.exp().item()
    terms = CounterfactualObjective(weights=dict.fromkeys(CONTRASTIVE, 1.0))(DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale)), batch)
    ref = embed_for_reference(model, processor, records)
    expected, unmasked = reference(records, ref, scale), reference(records, ref, scale, masked=False)
    for name in CONTRASTIVE:
        assert terms[name].item() == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
    for name in must_change:  # the duplicate matters: the old, unmasked loss is another number
        assert unmasked[name] != pytest.approx(expected[name], rel=1e-3), name
    return batch


def test_duplicate_caption_is_not_a_negative(components):
    _, _, records = components
    # Record 1 is another image with record 0's caption (spelt differently: the model sees one text).
    records = [records[0], dict(records[1], caption=records[0]["caption"].upper() + " "), *records[2:]]
    batch = check_against_reference(components, records, must_change=("align", "negclip", "grouping"))
    assert batch["text_index"][0] == batch["text_index"][1]


def test_counterfactual_caption_equal_to_another_records_caption_is_not_a_negative(components):
    _, _, records = components
    counterfactuals = list(records[1]["counterfactuals"])
    counterfactuals[0] = dict(counterfactuals[0], caption=records[0]["caption"])  # an edited image of which caption 0 is true
    counterfactuals[1] = dict(counterfactuals[1], caption=records[2]["caption"], image=None)  # a text-only "negative"
    records = [records[0], dict(records[1], counterfactuals=counterfactuals), *records[2:]]
    # align has no counterfactual columns: unchanged, and still equal to its reference.
    check_against_reference(components, records, must_change=("negclip", "grouping"))


def test_identical_images_are_not_negatives(components):
    _, _, records = components
    records = [records[0], dict(records[1], image=records[0]["image"].copy()), *records[2:]]
    batch = check_against_reference(components, records, must_change=("align", "negclip", "grouping"))
    assert batch["image_index"].tolist()[:2] == [0, 0]
    assert batch["pixel_values"].shape[0] == 4 * 5 - 1  # the duplicate photo is encoded once


def test_a_batch_without_content_keys_is_not_masked(components):
    """Hand-built batches (no ``text_key`` / ``image_key``) keep the old behaviour: every other column is a negative."""
    model, processor, records = components
    records = [records[0], dict(records[1], caption=records[0]["caption"]), *records[2:]]
    batch = CounterfactualCollator(processor, num_counterfactuals=4)(records)
    out, scale = encode_batch(model, batch), model.logit_scale.exp().item()
    objective = CounterfactualObjective(weights=dict.fromkeys(CONTRASTIVE, 1.0))
    keyless = {name: value for name, value in batch.items() if name not in ("text_key", "image_key")}
    terms = objective(DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale)), keyless)
    unmasked = reference(records, embed_for_reference(model, processor, records), scale, masked=False)
    for name in CONTRASTIVE:
        assert terms[name].item() == pytest.approx(unmasked[name], rel=1e-4, abs=1e-6), name
    with pytest.raises(KeyError, match="text_key and image_key, or neither"):
        objective(DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale)), dict(keyless, text_key=batch["text_key"]))
