"""CounterfactualGenerator reports RuleBasedEditor's caps truthfully: an item whose caption was too
long to be edited is skipped as "caption too long (> N words)", not "no editable word"; edits over
``max_edits_per_caption`` are per-item counters. Text only (in-memory images, no image models)."""

from __future__ import annotations

import pytest
from PIL import Image

from generation_fixtures import english_pipeline
from hf_counterfactual.generation import CounterfactualGenerator, FactualItem, GeneratedRecord, RuleBasedEditor, SkipRecord
from hf_counterfactual.generation.text_edits import RULE_KINDS

TOO_LONG = "text_edit/skipped: caption too long"
DROPPED = "text_edit/dropped: over max edits"
CAP_COUNTERS = {TOO_LONG, DROPPED}

# 100 words, with plenty to edit (colours, objects, numbers) and no left/right (no flip).
LONG_CAPTION = " ".join(["a black dog and a white cat on a sofa"] * 10)
ORDINARY = "A black dog with a white cat."
NOTHING = "a photo"  # nothing to edit: still "no editable word"
# 55 words (under max_caption_words=64) with more edits than max_edits_per_caption=32.
MANY_EDITS = " ".join(["two black dogs with three white cats on a red table"] * 5)


@pytest.fixture(scope="module")
def nlp():
    import spacy

    return spacy.load(english_pipeline())


def item(caption: str, id: int) -> FactualItem:
    return FactualItem(image=Image.new("RGB", (32, 24), (120, 80, 40)), captions=[caption], id=id)


def generate(editor, captions: list[str]):
    generator = CounterfactualGenerator([editor], flip=False)
    return generator.make_records(list(range(len(captions))), [item(c, i) for i, c in enumerate(captions)])


def test_long_caption_is_skipped_as_too_long_not_as_uneditable(nlp):
    assert len(LONG_CAPTION.split()) == 100
    editor = RuleBasedEditor(nlp=nlp, seed=0, kinds=("attribute", "object", "count"))
    long, ordinary, nothing = generate(editor, [LONG_CAPTION, ORDINARY, NOTHING])

    assert isinstance(long, SkipRecord)
    assert long.reason == "caption too long (> 64 words)"
    assert long.counts[TOO_LONG] == 1 and DROPPED not in long.counts
    assert editor.stats["skipped_caption_too_long"] == 1

    # An ordinary caption in the same batch is unaffected.
    assert isinstance(ordinary, GeneratedRecord) and ordinary.record["counterfactuals"]
    assert not set(ordinary.counts) & CAP_COUNTERS
    # A short caption with nothing to edit keeps its reason.
    assert isinstance(nothing, SkipRecord) and nothing.reason == "no editable word"
    assert TOO_LONG not in nothing.counts


def test_the_reason_names_the_editors_cap(nlp):
    editor = RuleBasedEditor(nlp=nlp, seed=0, max_caption_words=5)
    short, long = generate(editor, ["a black dog", ORDINARY])
    assert isinstance(short, GeneratedRecord)
    assert isinstance(long, SkipRecord) and long.reason == "caption too long (> 5 words)"


def test_a_long_caption_with_other_counterfactuals_is_written_and_counted(nlp):
    # The flip still makes a counterfactual of a long caption naming "left": a record, counted.
    editor = RuleBasedEditor(nlp=nlp, seed=0)
    caption = LONG_CAPTION + " on the left"
    generator = CounterfactualGenerator([editor], flip=True)
    (result,) = generator.make_records([0], [item(caption, 0)])
    assert isinstance(result, GeneratedRecord)
    assert [cf["source"] for cf in result.record["counterfactuals"]] == ["flip"]
    assert result.counts[TOO_LONG] == 1


def test_edits_over_the_cap_are_item_counters(nlp):
    uncapped = RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS, seed=0, max_edits_per_caption=None)
    total = len(uncapped.edit(MANY_EDITS))
    assert total > 32
    editor = RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS, seed=0)
    many, ordinary = generate(editor, [MANY_EDITS, ORDINARY])
    assert isinstance(many, GeneratedRecord)
    assert many.counts[DROPPED] == total - 32 == editor.stats["dropped_over_max_edits"]
    assert DROPPED not in ordinary.counts


def test_editors_without_stats_still_work():
    class Plain:  # only edit_batch, as the pipeline's duck-typed editors
        def edit_batch(self, captions):
            return [[] for _ in captions]

    (result,) = generate(Plain(), [LONG_CAPTION])
    assert isinstance(result, SkipRecord) and result.reason == "no editable word"
    assert not set(result.counts) & CAP_COUNTERS
