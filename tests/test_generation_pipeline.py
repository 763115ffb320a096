"""CounterfactualGenerator on real photos (tests/photo_fixtures.py): image-edit planning, filters,
grounding and paraphrase hooks, batch-size independence."""

from __future__ import annotations

import dataclasses

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from hf_counterfactual.generation import (
    CounterfactualGenerator,
    FactualItem,
    GeneratedRecord,
    ImageTextMatchFilter,
    InpaintingEditor,
    Instance,
    PixelChangeFilter,
    RuleBasedEditor,
    SkipRecord,
    box_mask,
)
from hf_counterfactual.generation.image_edits import _dilate
from hf_counterfactual.generation.text_edits import TextEdit
from generation_fixtures import english_pipeline, write_coco_photos

from hf_counterfactual.generation.inputs import read_coco


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_coco_photos(tmp_path_factory.mktemp("photos") / "coco")


@pytest.fixture(scope="module")
def items(coco):
    return {item.id: item for item in read_coco(str(coco), "val").items}


@pytest.fixture(scope="module")
def editor():
    return RuleBasedEditor(pipeline=english_pipeline(), kinds=("attribute", "object", "position", "count"))


class PaintingInpainter:
    """Fills each mask with a colour derived from the prompt; records every call. ``mode="same"``
    returns the image unchanged (an edit that changed nothing); ``mode="none"`` returns nothing."""

    def __init__(self, mode: str = "paint"):
        self.mode = mode
        self.calls = []

    @staticmethod
    def colour(prompt: str) -> tuple[int, int, int]:
        digest = hashlib.sha256(prompt.encode()).digest()
        return digest[0], digest[1], digest[2]

    def edit_batch(self, images, masks, prompts, seeds=None):
        self.calls.append({"prompts": list(prompts), "seeds": list(seeds), "masks": [np.asarray(m) for m in masks]})
        out = []
        for image, mask, prompt in zip(images, masks, prompts):
            if self.mode == "none":
                out.append(None)
                continue
            array = np.asarray(image).copy()
            if self.mode == "paint":
                array[np.asarray(mask, dtype=bool)] = self.colour(prompt)
            out.append(Image.fromarray(array))
        return out


def cf_colour(caption: str) -> str:
    """The colour word of "a spoon next to a <colour> cup of coffee ..."."""
    return caption.split()[caption.split().index("cup") - 1]


def image_cfs(record):
    return [cf for cf in record["counterfactuals"] if cf["source"] in ("inpaint", "box-inpaint")]


def test_object_attribute_and_count_edits_are_inpainted_where_the_annotations_say(items, editor, coco):
    from pycocotools.coco import COCO

    inpainter = PaintingInpainter()
    generator = CounterfactualGenerator([editor], inpainter=inpainter, pixel_filter=PixelChangeFilter(), max_image_edits=6)
    # "a" -> "two" is made for the caption's first object only: the spoon comes first here
    coffee = dataclasses.replace(items[3], captions=["a spoon next to a red cup of coffee on a red saucer"])
    rocket = items[4]
    results = generator.make_records([2, 3], [coffee, rocket])
    assert all(isinstance(r, GeneratedRecord) for r in results)
    coffee_record, rocket_record = (r.record for r in results)

    # Coffee: red cup -> green cup repaints exactly the cup's COCO instance mask, nothing else.
    original = np.asarray(Image.open(coffee.image).convert("RGB"))
    cup = next(cf for cf in image_cfs(coffee_record) if cf["caption"].endswith("cup of coffee on a red saucer"))
    cup_prompt = "a " + cf_colour(cup["caption"]) + " cup"
    assert cup["edit"] == "attribute" and cup["source"] == "inpaint"
    coco_api = COCO(str(coco / "annotations" / "instances_val2017.json"))
    cup_mask = coco_api.annToMask(next(a for a in coco_api.imgToAnns[3] if a["category_id"] == 47)).astype(bool)
    edited = np.asarray(cup["image"])
    np.testing.assert_array_equal(edited[~cup_mask], original[~cup_mask])
    assert (edited[cup_mask] == PaintingInpainter.colour(cup_prompt)).all()
    # score: the mean absolute change inside the mask, computed by hand
    expected = np.abs(original[cup_mask].astype(np.float64) - PaintingInpainter.colour(cup_prompt)).mean() / 255
    assert cup["score"] == pytest.approx(expected, rel=1e-5)
    # "a spoon" -> "two spoons": an added spoon in an empty box clear of every annotated object
    spoon = next(cf for cf in image_cfs(coffee_record) if "two spoons" in cf["caption"])
    assert spoon["source"] == "box-inpaint" and spoon["edit"] == "count"
    painted = np.argwhere((np.asarray(spoon["image"]) != original).any(-1))
    y0, x0 = painted.min(0)
    y1, x1 = painted.max(0) + 1
    for inst in coffee.instances:
        a = inst.box
        assert not (x0 < a[2] + 4 and a[0] - 4 < x1 and y0 < a[3] + 4 and a[1] - 4 < y1), (inst.category, (x0, y0, x1, y1))
    prompts = inpainter.calls[0]["prompts"]
    assert cup_prompt in prompts and "a spoon" in prompts

    # Rocket: "four tall towers" agrees with the four tower annotations -> "three" removes one tower
    # (its mask grown by 4 px, repainted as background); "five" finds no room for a fifth.
    three = next(cf for cf in image_cfs(rocket_record) if "three tall towers" in cf["caption"])
    tower_masks = [inst.get_mask(rocket_record["image"].size) for inst in rocket.instances if inst.category == "tower"]
    call = inpainter.calls[0]
    removed = call["masks"][call["prompts"].index("background")]
    assert any(np.array_equal(removed, _dilate(m, 4)) for m in tower_masks)
    assert not any("five tall towers" in cf["caption"] for cf in image_cfs(rocket_record))
    assert any("five tall towers" in cf["caption"] and cf["image"] is None for cf in rocket_record["counterfactuals"])
    assert three["edit"] == "count"
    counts = results[0].counts + results[1].counts
    assert counts["image_edit/kept"] == len(image_cfs(coffee_record)) + len(image_cfs(rocket_record))
    assert counts["filter/pixel_change/passed"] == counts["image_edit/kept"]


def test_image_edit_replaces_its_text_only_twin_and_comes_first(items, editor):
    generator = CounterfactualGenerator([editor], inpainter=PaintingInpainter(), pixel_filter=PixelChangeFilter())
    record = generator.make_records([0], [items[1]])[0].record
    captions = [cf["caption"] for cf in record["counterfactuals"]]
    assert len(captions) == len(set(captions))
    sources = [cf["source"] for cf in record["counterfactuals"]]
    first_text = sources.index("rule")
    assert all(s == "rule" for s in sources[first_text:])  # image-bearing counterfactuals first
    assert "flip" in sources and record["counterfactuals"][sources.index("flip")]["caption"] == (
        "an american flag to the right of a smiling woman"
    )


def test_filters_drop_edits_that_changed_nothing_or_do_not_match(items, editor):
    coffee = items[3]
    unchanged = CounterfactualGenerator([editor], inpainter=PaintingInpainter("same"), pixel_filter=PixelChangeFilter())
    result = unchanged.make_records([2], [coffee])[0]
    assert image_cfs(result.record) == []
    planned = result.counts["image_edit/inpainted"]
    assert planned >= 2 and result.counts["filter/pixel_change/failed"] == planned and result.counts.get("image_edit/kept", 0) == 0
    # the text-only twins stay
    assert "a green cup of coffee on a red saucer next to a spoon" in [cf["caption"] for cf in result.record["counterfactuals"]]

    nothing = CounterfactualGenerator([editor], inpainter=PaintingInpainter("none"), pixel_filter=PixelChangeFilter())
    result = nothing.make_records([2], [coffee])[0]
    assert result.counts["image_edit/no_output"] == planned and image_cfs(result.record) == []

    class FixedScorer:  # cosine 0.5 for every pair
        def encode_images(self, images):
            import torch

            return torch.nn.functional.normalize(torch.ones(len(images), 2), dim=-1)

        def encode_texts(self, texts):
            import torch

            return torch.tensor([[1.0, 0.0]] * len(texts))

    cosine = float(np.sqrt(0.5))
    for threshold, kept in ((cosine - 0.01, True), (cosine + 0.01, False)):
        generator = CounterfactualGenerator(
            [editor], inpainter=PaintingInpainter(), pixel_filter=PixelChangeFilter(),
            match_filter=ImageTextMatchFilter(FixedScorer(), threshold=threshold),
        )  # fmt: skip
        result = generator.make_records([2], [coffee])[0]
        assert bool(image_cfs(result.record)) is kept
        key = f"filter/image_text/{'passed' if kept else 'failed'}"
        assert result.counts[key] == planned
        if kept:  # the record's score is the match filter's cosine
            assert all(cf["score"] == pytest.approx(cosine) for cf in image_cfs(result.record))


def test_bad_items_are_counted_skips(items, editor, tmp_path):
    generator = CounterfactualGenerator([editor], inpainter=PaintingInpainter(), pixel_filter=PixelChangeFilter())
    corrupt, nothing, outside = items[7], items[6], items[8]
    results = generator.make_records([6, 5, 7], [corrupt, nothing, outside])
    assert isinstance(results[0], SkipRecord) and results[0].reason.startswith("unreadable image")
    assert isinstance(results[1], SkipRecord) and results[1].reason == "no editable word"
    # the cup's box lies outside the image: no image edit, a counted reason, the text edits stay
    assert isinstance(results[2], GeneratedRecord) and image_cfs(results[2].record) == []
    assert results[2].counts["image_edit/skipped: mask outside the image"] >= 1
    assert results[2].record["counterfactuals"]
    with pytest.raises(ValueError, match="outside the 150x100 image"):
        outside.instances[0].get_mask((150, 100))


def test_grayscale_photo_is_converted(items, editor):
    generator = CounterfactualGenerator([editor], inpainter=PaintingInpainter(), pixel_filter=PixelChangeFilter())
    record = generator.make_records([4], [items[5]])[0].record
    assert record["image"].mode == "RGB"
    assert [cf["caption"] for cf in image_cfs(record)] and image_cfs(record)[0]["edit"] == "object"


def test_grounder_supplies_instances_for_unannotated_items(items, editor):
    coffee = items[3]
    unannotated = FactualItem(coffee.image, coffee.captions, instances=None)
    size = Image.open(coffee.image).size
    cup_box = (40.0, 5.0, 100.0, 75.0)
    mask = box_mask(size, cup_box)

    class StubGrounder:
        calls = []

        def detect_batch(self, images, phrases):
            self.calls.append(phrases)
            return [[SimpleNamespace(phrase="cup", box=cup_box, score=0.9, mask=mask)] if "cup" in p else [] for p in phrases]

    inpainter = PaintingInpainter()
    generator = CounterfactualGenerator([editor], inpainter=inpainter, grounder=StubGrounder(), pixel_filter=PixelChangeFilter())
    result = generator.make_records([0], [unannotated])[0]
    assert StubGrounder.calls and "cup" in StubGrounder.calls[0][0]  # asked for the edits' targets
    assert result.counts["grounding/detections"] == 1
    cup = next(cf for cf in image_cfs(result.record) if cf["caption"].startswith("a green cup"))
    assert np.array_equal(inpainter.calls[0]["masks"][0], mask) and cup["source"] == "inpaint"
    # annotated items never call the grounder
    StubGrounder.calls.clear()
    generator.make_records([0], [coffee])
    assert StubGrounder.calls == []


def test_paraphraser_fills_items_with_too_few_captions(items, editor):
    class StubParaphraser:
        def paraphrase_batch(self, captions):
            return [[f"{c}, seen up close"] for c in captions]

    generator = CounterfactualGenerator([editor], paraphraser=StubParaphraser(), min_paraphrases=1)
    astronaut, cat = generator.make_records([0, 1], [items[1], items[2]])
    assert astronaut.record["paraphrases"] == ["a woman in an orange suit next to a black helmet"]  # had one
    assert cat.record["paraphrases"] == ["a cat with green eyes looking at the camera, seen up close"]
    assert cat.counts["paraphrase/generated"] == 1 and "paraphrase/generated" not in astronaut.counts


def test_records_do_not_depend_on_batch_size(items, editor):
    """With the tiny diffusers pipeline: seeds come from the item's index, not its batch position."""
    from hf_counterfactual.tiny_models import build_tiny_inpainting_pipeline

    pipe = build_tiny_inpainting_pipeline("a an green cup background spoon rocket".split())
    ids = [1, 3, 4]
    runs = []
    for batch_size in (1, 3):
        generator = CounterfactualGenerator(
            [editor], inpainter=InpaintingEditor(pipe, num_inference_steps=2, batch_size=4, keep_unmasked=True),
            pixel_filter=PixelChangeFilter(min_inside=0.0, max_outside=0.0),
        )  # fmt: skip
        results = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            results += generator.make_records([i - 1 for i in chunk], [items[i] for i in chunk])
        runs.append(results)
    for one, three in zip(*runs):
        assert one.counts == three.counts
        a, b = image_cfs(one.record), image_cfs(three.record)
        assert [cf["caption"] for cf in a] == [cf["caption"] for cf in b] and a
        for x, y in zip(a, b):
            np.testing.assert_allclose(np.asarray(x["image"], dtype=float), np.asarray(y["image"], dtype=float), atol=2)


def test_unknown_image_edit_kind():
    with pytest.raises(ValueError, match="cannot be inpainted"):
        CounterfactualGenerator(image_edit_kinds=("position",))


def test_instance_mask_checks():
    with pytest.raises(ValueError, match="shape"):
        Instance("cup", (0, 0, 10, 10), mask=np.ones((5, 5), dtype=bool)).get_mask((10, 10))
    with pytest.raises(ValueError, match="covers no pixel"):
        Instance("cup", (0, 0, 5, 5), mask=np.zeros((5, 5), dtype=bool)).get_mask((5, 5))
    with pytest.raises(ValueError, match="outside"):
        Instance("cup", (0, 0, 7, 5)).get_mask((5, 5))
    assert Instance("cup", (0, 0, 5.6, 5)).get_mask((5, 5)).all()  # COCO rounding: up to a pixel over
    assert Instance("cup", (2, 2, 4, 4)).get_mask((5, 5)).sum() == 4


def test_plural_object_edit_repaints_every_instance(items, editor):
    """ "two cats ..." -> "two dogs ...": both cat instances are repainted in one call, prompt "dogs"."""
    from hf_counterfactual.generation.pipeline import is_plural, names_category

    cat = items[2]
    width, height = Image.open(cat.image).size
    left, right = (2.0, 5.0, width / 2 - 4, height - 5.0), (width / 2 + 4, 5.0, width - 2.0, height - 5.0)
    two = FactualItem(cat.image, ["two cats sitting on a bed"], instances=[Instance("cat", left), Instance("cat", right)])
    inpainter = PaintingInpainter()
    generator = CounterfactualGenerator([editor], inpainter=inpainter, pixel_filter=PixelChangeFilter(), max_image_edits=8)
    record = generator.make_records([0], [two])[0].record
    objects = [cf for cf in image_cfs(record) if cf["edit"] == "object"]
    assert objects, record["counterfactuals"]
    call = inpainter.calls[0]
    j = next(k for k, p in enumerate(call["prompts"]) if not p.startswith(("a ", "an ")) and p != "background")
    expected = box_mask((width, height), left) | box_mask((width, height), right)
    np.testing.assert_array_equal(call["masks"][j], expected)
    new = call["prompts"][j]
    assert new.endswith("s") and any(f"two {new} sitting on a bed" == cf["caption"] for cf in objects)
    # the count edits of the same caption: 2 cats annotated -> "three cats" adds, "a cat" removes one
    counts = [cf["caption"] for cf in image_cfs(record) if cf["edit"] == "count"]
    assert "a cat sitting on a bed" in counts
    assert is_plural("cats", "cat") and not is_plural("cat", "cat") and is_plural("men", "person")
    assert not is_plural("man", "person") and not is_plural("sheep", "sheep") and names_category("women", "person")


def test_lazy_instance_mask_is_decoded_once():
    calls = []

    def decode():
        calls.append(1)
        return np.ones((5, 5), dtype=bool)

    inst = Instance("cup", (0, 0, 5, 5), mask=decode)
    assert inst.get_mask((5, 5)).all() and inst.get_mask((5, 5)).all()
    assert calls == [1]


def test_candidates_equal_to_a_true_caption_or_each_other_up_to_case_and_whitespace_are_dropped_and_counted():
    """The model sees "A dog" and "a  dog" as one caption: neither may be a counterfactual of the other."""

    class ScriptedEditor:
        def edit_batch(self, captions):
            edits = ["A  dog on a BED", "a dog lying on a bed", "a cat on a bed", "a cat  on a Bed", "a dog under a bed"]
            return [[TextEdit(caption=c, edit="object", source="rule") for c in edits] for _ in captions]

    class EchoParaphraser:
        def paraphrase_batch(self, captions):
            return [[c.upper(), f"{c}  indoors"] for c in captions]

    item = FactualItem(image=Image.new("RGB", (16, 16)), captions=["a dog on a bed", "A dog lying on a  bed"])
    generator = CounterfactualGenerator([ScriptedEditor()], paraphraser=EchoParaphraser(), min_paraphrases=2)
    result = generator.make_records([0], [item])[0]
    assert result.record["paraphrases"] == ["A dog lying on a  bed", "a dog on a bed  indoors"]  # the upper-cased echo is the caption
    assert [cf["caption"] for cf in result.record["counterfactuals"]] == ["a cat on a bed", "a dog under a bed"]
    assert result.counts["counterfactual/dropped: true caption"] == 2
    assert result.counts["counterfactual/dropped: duplicate"] == 1
    assert result.counts["paraphrase/generated"] == 1
