"""RuleBasedEditor's caps on runaway captions: a caption over ``max_caption_words`` is skipped
before parsing, edits past ``max_edits_per_caption`` are dropped; both counted in ``stats``."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from generation_fixtures import english_pipeline
from hf_counterfactual.generation.text_edits import RULE_KINDS, RuleBasedEditor  # order shuffles too: many edits

ORDINARY = [
    "A black dog with a white cat.",
    "A man riding a horse in front of a barn",
    "an apple and two bananas on the right",
    "a red car parked next to a bus",
    "there is a dog on the left",
    "A man in a red shirt and a woman in a blue dress are sitting on a wooden bench next to two dogs.",
    "a photo",
    "",
]
# 55 words (under the default max_caption_words=64) with more edits than the default cap of 32.
MANY_EDITS = " ".join(["two black dogs with three white cats on a red table"] * 5)


@pytest.fixture(scope="module")
def nlp():
    import spacy

    return spacy.load(english_pipeline())


@pytest.fixture(scope="module")
def uncapped(nlp):
    return RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS, seed=0, max_caption_words=None, max_edits_per_caption=None)


def test_long_caption_is_skipped_before_parsing_and_counted(nlp):
    editor = RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS, seed=0)
    long_caption = " ".join(["a black dog with a white cat on a red sofa"] * 600)  # 6,000 words
    start = time.perf_counter()
    out = editor.edit_batch([long_caption, ORDINARY[0], long_caption])
    assert time.perf_counter() - start < 1.0
    assert out[0] == [] and out[2] == [] and out[1]
    assert editor.stats["skipped_caption_too_long"] == 2
    assert "dropped_over_max_edits" not in editor.stats
    # The cap is on words: exactly max_caption_words words is still edited.
    small = RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS, seed=0, max_caption_words=7)
    assert small.edit("A black dog with a white cat.") and small.edit("A black dog with a white cat today.") == []
    assert small.stats["skipped_caption_too_long"] == 1


def test_edits_over_the_cap_are_dropped_and_counted(nlp, uncapped):
    full = uncapped.edit(MANY_EDITS)
    assert len(full) > 32
    editor = RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS, seed=0)
    capped = editor.edit(MANY_EDITS)
    assert capped == full[:32]  # the first ones, in the usual order
    assert editor.stats["dropped_over_max_edits"] == len(full) - 32
    five = RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS, seed=0, max_edits_per_caption=5)
    assert five.edit(ORDINARY[0]) == uncapped.edit(ORDINARY[0])[:5]
    assert five.stats["dropped_over_max_edits"] == len(uncapped.edit(ORDINARY[0])) - 5
    # Duplicates and identities are still counted as such, not as over the cap.
    reference = RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS, seed=0, max_edits_per_caption=None)
    reference.edit(MANY_EDITS)
    assert editor.stats - Counter({"dropped_over_max_edits": editor.stats["dropped_over_max_edits"]}) == reference.stats


def test_ordinary_captions_are_unchanged(nlp, uncapped):
    editor = RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS, seed=0)
    assert editor.edit_batch(ORDINARY) == uncapped.edit_batch(ORDINARY)
    assert "skipped_caption_too_long" not in editor.stats and "dropped_over_max_edits" not in editor.stats


@pytest.mark.parametrize("kwargs", [{"max_caption_words": 0}, {"max_edits_per_caption": -1}, {"max_edits_per_caption": 2.5}])
def test_bad_caps_are_refused(nlp, kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        RuleBasedEditor(nlp=nlp, **kwargs)
