"""Text edits: rule-based edits on a real spaCy parse, and LLM concept replacement (parsing,
rejection, cache; one end-to-end call with a tiny random causal LM)."""

from __future__ import annotations

import json
import random

import pytest

from generation_fixtures import english_pipeline
from hf_counterfactual.generation.text_edits import (
    DEFAULT_RULE_KINDS,
    RULE_KINDS,
    LLMConceptEditor,
    RuleBasedEditor,
    TextEdit,
    indefinite_article,
    parse_generation,
    pluralize,
)


@pytest.fixture(scope="module")
def nlp():
    import spacy

    return spacy.load(english_pipeline())


@pytest.fixture(scope="module")
def editor(nlp):
    return RuleBasedEditor(nlp=nlp, seed=0, kinds=RULE_KINDS)  # order shuffles too (off by default)


# caption -> edit kinds that must be produced (exactly this set of kinds)
TABLE = [
    ("A black dog with a white cat.", {"attribute", "object", "count", "order"}),
    ("a dog chasing a cat", {"object", "relation", "count", "order"}),
    ("a cat to the left of a dog", {"object", "position", "count", "order"}),
    ("two dogs playing on the grass", {"object", "count", "order"}),
    ("A man riding a horse in front of a barn", {"object", "relation", "count", "order"}),
    ("there is a dog on the left", {"object", "position", "count", "order"}),
    ("a cat on top of a table", {"object", "relation", "count", "order"}),
    ("a red car parked next to a bus", {"attribute", "object", "count", "order"}),
    ("a group of people sitting on a bench", {"object", "relation", "order"}),
    ("three children are eating apples", {"object", "count", "order"}),
    ("a man is riding a horse", {"object", "relation", "count", "order"}),
    ("an apple and two bananas on the right", {"object", "position", "count", "order"}),
    ("A large elephant standing in a field.", {"attribute", "object", "relation", "count", "order"}),
    ("a clock above a door", {"object", "position", "count", "order"}),
    ("a knife on a cutting board", {"count", "order"}),
    ("one sheep grazing", {"object", "count", "order"}),
    ("Two buses parked on the street.", {"object", "count", "order"}),
    ("a photo", set()),
    ("smiling", set()),
    ("", set()),
]


@pytest.mark.parametrize("caption,kinds", TABLE)
def test_kinds_on_real_captions(editor, caption, kinds):
    edits = editor.edit(caption)
    assert {e.edit for e in edits} == kinds
    for e in edits:
        assert isinstance(e, TextEdit) and e.source == "rule"
        assert e.caption and e.caption.strip().lower() != caption.strip().lower()
    assert len({e.caption for e in edits}) == len(edits)


def _captions(edits, kind):
    return {e.caption for e in edits if e.edit == kind}


def test_exact_outputs(editor):
    assert "A white dog with a black cat." in _captions(editor.edit("A black dog with a white cat."), "attribute")
    assert _captions(editor.edit("a cat to the left of a dog"), "position") == {"a cat to the right of a dog"}
    assert _captions(editor.edit("a clock above a door"), "position") == {"a clock below a door"}
    assert _captions(editor.edit("two dogs playing on the grass"), "count") == {
        "three dogs playing on the grass",
        "a dog playing on the grass",
    }
    assert "two men are riding a horse" in _captions(editor.edit("a man is riding a horse"), "count")
    assert "there are two dogs on the left" in _captions(editor.edit("there is a dog on the left"), "count")
    assert "two knives on a cutting board" in _captions(editor.edit("a knife on a cutting board"), "count")
    assert "A bus parked on the street." in _captions(editor.edit("Two buses parked on the street."), "count")
    # counted down to one: "a"/"an" chosen for the next word; "one" only after another determiner
    assert "An old man sits on a bench" in _captions(editor.edit("Two old men sit on a bench"), "count")
    assert "The one dog is sleeping." in _captions(editor.edit("The two dogs are sleeping."), "count")
    assert "1 woman holding a cake" in _captions(editor.edit("2 women holding a cake"), "count")
    assert "two sheep grazing" in _captions(editor.edit("one sheep grazing"), "count")
    assert "a cat chasing a dog" in _captions(editor.edit("a dog chasing a cat"), "object")
    assert "a dog running from a cat" in _captions(editor.edit("a dog chasing a cat"), "relation")
    assert "a cat under a table" in _captions(editor.edit("a cat on top of a table"), "relation")
    relations = _captions(editor.edit("A man riding a horse in front of a barn"), "relation")
    assert relations == {"A man walking next to a horse in front of a barn", "A man riding a horse behind a barn"}
    assert "a small elephant" in " ".join(_captions(editor.edit("a large elephant"), "attribute"))


def _targets(edits, kind):
    return {(e.caption, e.target) for e in edits if e.edit == kind}


def test_targets_on_real_captions(nlp):
    editor = RuleBasedEditor(nlp=nlp, kinds=("attribute", "object", "count", "relation", "position"), seed=0)
    # equal adjectives ("red" twice): no swap, each colour replaced, the target its own noun
    edits = editor.edit("a red cup of coffee on a red saucer next to a spoon")
    assert {e.target for e in edits if e.edit == "attribute"} == {"cup", "saucer"}
    assert all(e.target == "cup" for e in edits if e.edit == "attribute" and e.caption.endswith("on a red saucer next to a spoon"))
    assert {(e.old, e.target) for e in edits if e.edit == "count"} == {("a red cup", "cup")}  # "a" -> "two": the first object only
    assert {e.target for e in edits if e.edit == "object" and " / " in e.old} == {""}  # a swap: two objects
    assert {e.target for e in editor.edit("a cat sitting on a table") if e.edit == "relation"} == {""}

    # "orange" parses as a compound of "suit": its target is still the noun
    edits = editor.edit("a woman in an orange suit next to a black helmet")
    assert {(e.old, e.target) for e in edits if e.edit == "attribute"} == {("orange", "suit"), ("black", "helmet")}
    objects = {(e.old, e.target) for e in edits if e.edit == "object"}
    assert objects == {("woman", "woman"), ("woman / helmet", "")}
    assert {(e.old, e.target) for e in edits if e.edit == "count"} == {("a woman", "woman")}

    # two nouns with different adjectives: a swap, no single target
    edits = editor.edit("a white rocket between four tall towers")
    assert _targets(edits, "attribute") == {("a tall rocket between four white towers", "")}
    assert _targets(edits, "count") == {
        ("two white rockets between four tall towers", "rocket"),
        ("a white rocket between five tall towers", "towers"),
        ("a white rocket between three tall towers", "towers"),
    }
    # target as in the ORIGINAL caption (plural, capitalised), predicate adjectives, conjunctions
    edits = editor.edit("Two big red Buses")
    assert {e.target for e in edits if e.edit in ("attribute", "count", "object")} == {"Buses"}
    assert {e.target for e in editor.edit("The dog is black.") if e.edit == "attribute"} == {"dog"}
    assert {e.target for e in editor.edit("a white and black dog") if e.edit == "attribute"} == {"dog"}
    assert {e.target for e in editor.edit("a clock above a door") if e.edit == "position"} == {""}
    assert {e.target for e in RuleBasedEditor(nlp=nlp, kinds=("order",)).edit("a white rocket between four tall towers")} == {""}


def test_articles_follow_replacements(nlp):
    # the only animal left to replace "cat" with is "elephant": "a cat" -> "an elephant"
    vocab = {"objects": {"animal": ["dog", "cat", "elephant"]}}
    edits = RuleBasedEditor(nlp=nlp, kinds=("object",), vocab=vocab).edit("a dog chasing a cat")
    assert {e.caption for e in edits} == {"an elephant chasing a cat", "a dog chasing an elephant", "a cat chasing a dog"}
    # "an apple" swapped with "bananas": "a banana and two apples"
    edits = RuleBasedEditor(nlp=nlp, kinds=("object",)).edit("an apple and two bananas on the right")
    assert "a banana and two apples on the right" in {e.caption for e in edits}
    assert indefinite_article("umbrella") == "an" and indefinite_article("unicorn") == "a"
    assert indefinite_article("hour") == "an" and indefinite_article("banana") == "a"


def test_plurals():
    table = {"child": "children", "person": "people", "man": "men", "woman": "women", "mouse": "mice",
             "sheep": "sheep", "fish": "fish", "box": "boxes", "bus": "buses", "knife": "knives",
             "policeman": "policemen", "human": "humans", "city": "cities", "toy": "toys", "Dog": "Dogs"}
    assert {w: pluralize(w) for w in table} == table


def test_deterministic_for_seed_and_batch(nlp):
    captions = [c for c, _ in TABLE]
    a = RuleBasedEditor(nlp=nlp, seed=3).edit_batch(captions)
    b = RuleBasedEditor(nlp=nlp, seed=3).edit_batch(list(reversed(captions)))[::-1]
    assert a == b
    assert a[0] == RuleBasedEditor(nlp=nlp, seed=3).edit(captions[0])
    c = RuleBasedEditor(nlp=nlp, seed=4).edit_batch(captions)
    assert a != c  # another seed draws other replacements / shuffles


def test_order_reuses_aro_shuffles(nlp):
    edits = RuleBasedEditor(nlp=nlp, kinds=("order",)).edit("a man riding a horse on the beach")
    assert 1 <= len(edits) <= 4
    for e in edits:
        assert sorted(e.caption.split()) == sorted("a man riding a horse on the beach".split())


# COCO-like captions; the fuzz below puts a double space between two of their words, as some
# COCO captions have.
FUZZ_CAPTIONS = [c for c, _ in TABLE if len(c.split()) > 2] + [
    "A woman holding an umbrella in the rain.", "a plate of food with broccoli and rice",
    "A train traveling down the tracks next to a platform.", "a little girl flying a kite on the beach",
    "A bathroom with a white sink and a mirror.", "a bird sitting on a tree branch",
]


def with_double_space(caption: str, rng: random.Random) -> str:
    words = caption.split()
    i = rng.randrange(1, len(words))
    return " ".join(words[:i]) + "  " + " ".join(words[i:])


def test_no_edit_equals_its_caption_up_to_case_and_whitespace_fuzz(nlp):
    """The order shuffles rejoin words with one space: an identity shuffle of a caption with an inner
    double space used to come out as an "edit" with the very same tokens."""
    rng = random.Random(0)
    captions = [with_double_space(c, rng) for c in FUZZ_CAPTIONS for _ in range(10)]
    editor = RuleBasedEditor(nlp=nlp, seed=0, kinds=RULE_KINDS)
    same = []
    for caption, edits in zip(captions, editor.edit_batch(captions)):
        # Naive reference of "the same caption to the model": lowercase words, any whitespace.
        forms = [e.caption.lower().split() for e in edits]
        same += [(caption, e.caption) for e, form in zip(edits, forms) if form == caption.lower().split()]
        assert len({tuple(f) for f in forms}) == len(forms), (caption, [e.caption for e in edits])
    assert same == []
    order_edits = sum(e.edit == "order" for edits in editor.edit_batch(captions) for e in edits)
    assert order_edits > len(captions)  # the shuffles still run (and retry instead of giving up)


def test_candidates_equal_up_to_case_and_whitespace_are_dropped_and_counted(nlp):
    class Scripted(RuleBasedEditor):
        def _relation(self, doc, rng):
            return [
                ("A  DOG chasing a cat", "", "", ""),  # the caption itself to the model
                ("a dog fleeing a cat", "chasing", "fleeing", ""),
                ("a dog fleeing\ta CAT", "chasing", "fleeing", ""),  # the edit above again
            ]

    editor = Scripted(nlp=nlp, kinds=("relation",))
    edits = editor.edit("a dog chasing a cat")
    assert [e.caption for e in edits] == ["a dog fleeing a cat"]
    assert editor.stats == {"rejected_same_as_caption": 1, "rejected_duplicate": 1}


def test_kinds_validated(nlp):
    with pytest.raises(ValueError):
        RuleBasedEditor(nlp=nlp, kinds=("negation",))
    with pytest.raises(OSError, match=r"pipeline no_such_pipeline_xyz: not an installed spaCy pipeline; installed: \["):
        RuleBasedEditor(pipeline="no_such_pipeline_xyz")


# ---------------------------------------------------------------------------------------------
# LLM concept editor


def test_parse_generation():
    assert parse_generation(" horse\nNew: camel\nPhrase: a brown camel\n\nCaption: x") == ("horse", "camel", "a brown camel")
    assert parse_generation("garbage garbage") is None


class _StubLLM(LLMConceptEditor):
    def __init__(self, replies, **kwargs):
        super().__init__(model=None, tokenizer=None, model_name="stub", **kwargs)
        self.replies = replies
        self.calls = 0

    def _generate(self, prompts):
        self.calls += len(prompts)
        out = []
        for p in prompts:
            caption = p.rsplit("Caption: ", 1)[1].split("\n")[0]
            out.append(self.replies[caption])
        return out


REPLIES = {
    "A black dog sitting on a couch.": " black dog\nNew: white cat\nPhrase: a fluffy white cat",
    "a man holding an umbrella": " umbrella\nNew: banana\nPhrase: a ripe yellow banana",
    "a horse in a field": " horse\nNew: \nPhrase: nothing",
    "a car on a road": " car\nNew: big red fire truck\nPhrase: a truck",
    "a bird on a wire": " bird\nNew: Bird\nPhrase: a bird",
    "a boat on a lake": " giraffe\nNew: zebra\nPhrase: a zebra",
    "a cake on a plate": "no idea",
    "a red apple": " red apple\nNew: green apple\nPhrase: a shiny green apple",
    # only case and whitespace change: the same caption to the model
    "a black dog": " black dog\nNew: Black  dog\nPhrase: a dog",
}


def test_llm_parsing_rejection_and_cache(tmp_path):
    stub = _StubLLM(REPLIES, cache_dir=str(tmp_path), batch_size=3)
    captions = list(REPLIES)
    out = stub.edit_batch(captions)
    assert out[0] == [TextEdit("A white cat sitting on a couch.", "object", "llm", "black dog", "white cat", "a fluffy white cat", target="dog")]
    assert out[1][0].caption == "a man holding a banana"  # "an" -> "a"
    assert out[7][0].caption == "a green apple" and out[7][0].edit == "attribute"
    assert out[1][0].target == "umbrella" and out[7][0].target == "apple"  # last word of old
    assert [len(o) for o in out] == [1, 1, 0, 0, 0, 0, 0, 1, 0]
    assert stub.stats["rejected_empty"] == 1 and stub.stats["rejected_too_long"] == 1
    assert stub.stats["rejected_unchanged"] == 2 and stub.stats["rejected_not_in_caption"] == 1
    assert stub.stats["rejected_unparsed"] == 1 and stub.stats["accepted"] == 3
    assert stub.calls == len(captions)
    lines = (tmp_path / LLMConceptEditor.CACHE_FILE).read_text().splitlines()
    assert len(lines) == len(captions) and {"model", "prompt_hash", "generation"} <= set(json.loads(lines[0]))

    # rerun (a fresh editor over the same cache): the model does not run
    again = _StubLLM({}, cache_dir=str(tmp_path))
    assert again.edit_batch(captions) == out
    assert again.calls == 0 and again.stats["cached"] == len(captions)
    # another model name is another cache key
    other = _StubLLM(REPLIES, cache_dir=str(tmp_path))
    other.model_name = "other"
    other.edit_batch(captions[:2])
    assert other.calls == 2


def test_prompt_shape():
    stub = _StubLLM({})
    prompt = stub.prompt("a dog on a bed")
    assert prompt.endswith("Caption: a dog on a bed\nOld:")
    assert prompt.count("Caption:") == 4 and "at most three words" in prompt and "Phrase:" in prompt


def test_llm_end_to_end_tiny_random_model(tmp_path):
    from hf_counterfactual.tiny_models import build_tiny_causal_lm

    words = "a the dog cat man horse on in of caption old new phrase : . , with white black riding".split()
    model, tokenizer = build_tiny_causal_lm(words)
    editor = LLMConceptEditor(model, tokenizer, cache_dir=str(tmp_path), max_new_tokens=8, batch_size=2)
    captions = ["a dog on the grass", "a man riding a horse", "a cat"]
    out = editor.edit_batch(captions)
    assert out == [[], [], []]  # garbage is rejected, not crashed on
    assert editor.stats["generated"] == 3 and editor.stats["rejected"] == 3
    assert tokenizer.padding_side == "right"  # restored after left-padded generation

    calls = []
    editor.model.generate = lambda *a, **k: calls.append(1)  # a rerun must not run the model
    assert editor.edit_batch(captions) == out and calls == []


# The fixes of issue 12: rules whose output no caption writer would write (a blind LM spots it).


def test_order_is_off_by_default(nlp):
    assert "order" not in DEFAULT_RULE_KINDS and set(DEFAULT_RULE_KINDS) | {"order"} == set(RULE_KINDS)
    caption = "a man riding a horse on the beach"
    assert "order" not in {e.edit for e in RuleBasedEditor(nlp=nlp).edit(caption)}
    assert "order" in {e.edit for e in RuleBasedEditor(nlp=nlp, kinds=RULE_KINDS).edit(caption)}


def test_a_becomes_two_only_for_the_first_object_never_a_scene(nlp):
    editor = RuleBasedEditor(nlp=nlp, kinds=("count",))
    assert _captions(editor.edit("A dog in a grassy field."), "count") == {"Two dogs in a grassy field."}
    assert _captions(editor.edit("a living room with a couch"), "count") == {"a living room with two couches"}
    assert _captions(editor.edit("a man riding a skateboard down a street"), "count") == {"two men riding a skateboard down a street"}
    assert _captions(editor.edit("a lone giraffe in a field"), "count") == set()
    # numbers still move by one, wherever they are
    assert _captions(editor.edit("a girl trying to pet two dogs"), "count") == {
        "two girls trying to pet two dogs", "a girl trying to pet three dogs", "a girl trying to pet a dog"}


def test_no_far_from_and_under_only_for_what_one_can_be_under(nlp):
    editor = RuleBasedEditor(nlp=nlp, kinds=("relation",))
    for caption in ("a man next to a bus", "a cat near a dog", "a dog beside a car"):
        assert not any("far from" in e.caption for e in editor.edit(caption)), caption
    assert _captions(editor.edit("a woman on skis"), "relation") == set()
    assert _captions(editor.edit("a man on a horse"), "relation") == set()
    assert _captions(editor.edit("a cat on a table"), "relation") == {"a cat under a table"}
    assert _captions(editor.edit("a man in front of a car"), "relation") == {"a man behind a car"}


def test_object_swaps_keep_compounds_and_measure_phrases(nlp):
    editor = RuleBasedEditor(nlp=nlp, kinds=("object", "count"))
    teddy = {e.caption for e in editor.edit("A brown teddy bear sitting in a red chair")}
    assert "A brown chair bear sitting in a red teddy" not in teddy and not any("teddies" in c for c in teddy)
    assert {e.caption for e in editor.edit("a fire hydrant on the sidewalk")} == set()  # "a hydrant fire", "two fires hydrant"
    slices = {e.caption for e in editor.edit("Two slices of pizza on a plate")}
    assert "Two pizzas of slice on a plate" not in slices and "Two slices of carrot on a plate" in slices
    assert "a coffee of cup" not in {e.caption for e in editor.edit("a cup of coffee")}


def test_attribute_swap_needs_an_adjective_before_its_noun_and_keeps_the_initial_capital(nlp):
    editor = RuleBasedEditor(nlp=nlp, kinds=("attribute",))
    # "pet" (a verb after "to", parsed as an adjective of "dogs") is no attribute to swap
    assert _captions(editor.edit("a black cat trying to pet two dogs"), "attribute") == {
        f"a {c} cat trying to pet two dogs" for c in _replaced_colours(editor, "a black cat trying to pet two dogs")}
    assert _captions(editor.edit("Blue bathroom with two white towels"), "attribute") == {"White bathroom with two blue towels"}
    assert "A white dog with a black cat." in _captions(editor.edit("A black dog with a white cat."), "attribute")


def _replaced_colours(editor, caption):
    return {e.new for e in editor.edit(caption) if e.old == "black"}
