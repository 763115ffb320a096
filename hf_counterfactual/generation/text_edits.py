"""Text edits: a caption -> captions that are *false* of the caption's image, each recording its kind.

Two editors, both returning :class:`TextEdit` (``caption``, ``edit``, ``source``, ``old``, ``new``,
``phrase``, ``target``), which map onto the record's counterfactual fields (``caption``, ``edit``,
``source``); ``target`` names the object an image editor should inpaint:

- :class:`RuleBasedEditor`: rules on a spaCy parse (POS tags, dependencies, lemmas) of an English
  pipeline. Kinds (see the class docstring for exactly what each covers):

  ========== ====================================================================================
  attribute  swap the adjectives of two nouns; else replace a colour / size / material adjective
  object     replace a noun by another of its category (number kept); swap two nouns
  relation   opposite of a preposition or verb (on/under for things one can be under, in front of/behind,
             riding/walking next to)
  position   mirror the horizontal words (left <-> right) or the vertical ones (above <-> below,
             top <-> bottom, upper <-> lower): the text side of a horizontal / vertical image flip
  count      number words and digits +-1, "a X" -> "two Xs" for the first object noun, with the
             head noun inflected (irregular plurals) and the subject's verb agreeing (is/are, sits/sit)
  order      ARO's four word-order shuffles (reused from :mod:`hf_counterfactual.benchmarks.aro`);
             off by default (:data:`DEFAULT_RULE_KINDS`): a blind LM spots 95% of them
  ========== ====================================================================================

- :class:`LLMConceptEditor`: concept replacement by any ``transformers`` causal LM with the prompt
  shape of Sahin et al. 2023 (Generative Negative Mining): a few examples, then the caption; the
  model names the concept to replace, the new concept (at most three words) and a descriptive
  phrase of the new object for the image editor. Generations are cached in a JSON-lines file
  keyed by (model name, prompt hash), so reruns cost nothing (:mod:`.llm`).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..benchmarks.aro import (
    shuffle_all_but_nouns_and_adjectives,
    shuffle_nouns_and_adjectives,
    shuffle_trigrams,
    shuffle_within_trigrams,
)
from ..features import normalize_caption
from .llm import LLMStage

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EXAMPLES",
    "DEFAULT_RULE_KINDS",
    "DEFAULT_VOCAB",
    "LLMConceptEditor",
    "RuleBasedEditor",
    "TextEdit",
    "indefinite_article",
    "pluralize",
]

RULE_KINDS = ("attribute", "object", "relation", "position", "count", "order")
#: The kinds :class:`RuleBasedEditor` makes unless asked: every kind but ``order``. ARO's word-order
#: shuffles read like no caption (a blind bigram LM fitted on COCO captions prefers the true caption
#: over 95% of them, ``benchmarks/bench_blind_negatives.py``): ask for them with ``kinds``.
DEFAULT_RULE_KINDS = ("attribute", "object", "relation", "position", "count")


@dataclass(frozen=True)
class TextEdit:
    """One edited caption. ``caption`` is false of the original image; ``edit`` is its kind
    (attribute | object | relation | position | count | order); ``source`` "rule" or "llm";
    ``old``/``new`` what was replaced and by what (empty for order shuffles); ``phrase`` a
    descriptive phrase of the new object for an image editor (LLM edits only).

    ``target`` is the head noun the edit is about, as it appears in the ORIGINAL caption, so that
    an image editor can find (ground, segment) the one object to inpaint; "" when the edit is not
    about one object:

    - rule ``attribute`` replacement (colour / size / material): the noun the adjective modifies
      ("a red cup of coffee", red -> green: "cup"; "the dog is black": "dog"); "" for a swap of
      the adjectives of two nouns (two objects change);
    - rule ``object`` replacement: the replaced noun itself (``old``); "" for a swap of two nouns;
    - rule ``count``: the counted noun ("four tall towers" -> "five tall towers": "towers");
    - LLM edits: the last word of ``old`` ("black dog" -> "dog");
    - relation, position and order edits: "".
    """

    caption: str
    edit: str
    source: str
    old: str = ""
    new: str = ""
    phrase: str = ""
    target: str = ""


# ---------------------------------------------------------------------------------------------
# Inflection

_IRREGULAR_PLURALS = {
    "child": "children",
    "person": "people",
    "man": "men",
    "woman": "women",
    "mouse": "mice",
    "goose": "geese",
    "foot": "feet",
    "tooth": "teeth",
    "ox": "oxen",
    "knife": "knives",
    "wife": "wives",
    "life": "lives",
    "leaf": "leaves",
    "loaf": "loaves",
    "shelf": "shelves",
    "wolf": "wolves",
    "half": "halves",
    "calf": "calves",
    "scarf": "scarves",
    "potato": "potatoes",
    "tomato": "tomatoes",
    "hero": "heroes",
    "mango": "mangoes",
    "cactus": "cacti",
    "dice": "dice",
}
_INVARIANT_PLURALS = frozenset({"sheep", "fish", "deer", "moose", "bison", "series", "species", "aircraft", "salmon", "shrimp", "people", "children", "men", "women"})
_IRREGULAR_SINGULARS = {plural: singular for singular, plural in _IRREGULAR_PLURALS.items()}
_NOT_MAN_COMPOUNDS = frozenset({"human", "german", "roman", "shaman", "caiman", "talisman"})


def _match_case(template: str, word: str) -> str:
    if template[:1].isupper() and (len(template) == 1 or not template.isupper()):
        return word[:1].upper() + word[1:]
    if template.isupper() and len(template) > 1:
        return word.upper()
    return word


def pluralize(noun: str) -> str:
    """The plural of a singular English noun: a table of irregulars (child/children, person/people,
    knife/knives, sheep, fish ...), -man/-woman compounds, then s/x/z/ch/sh -> +es, consonant+y ->
    ies, else +s. Case follows the input."""
    word = noun.lower()
    if word in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[word]
    elif word in _INVARIANT_PLURALS:
        plural = word
    elif word.endswith("woman"):
        plural = word[:-5] + "women"
    elif word.endswith("man") and word not in _NOT_MAN_COMPOUNDS:
        plural = word[:-3] + "men"
    elif word.endswith(("s", "x", "z", "ch", "sh")):
        plural = word + "es"
    elif len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        plural = word[:-1] + "ies"
    else:
        plural = word + "s"
    return _match_case(noun, plural)


def _singularize(token) -> str:
    """The singular of a (plural) noun token: the irregular table, else spaCy's lemma."""
    word = token.lower_
    if word in _IRREGULAR_SINGULARS:
        singular = _IRREGULAR_SINGULARS[word]
    elif word.endswith("women"):
        singular = word[:-5] + "woman"
    elif word.endswith("men") and word[:-3] + "man" not in _NOT_MAN_COMPOUNDS and len(word) > 3:
        singular = word[:-3] + "man"
    elif token.tag_ in ("NNS", "NNPS") and token.lemma_:
        singular = token.lemma_.lower()
    else:
        singular = word
    return _match_case(token.text, singular)


def _lemma(token) -> str:
    if token.lower_ in _IRREGULAR_SINGULARS:
        return _IRREGULAR_SINGULARS[token.lower_]
    return _singularize(token).lower() if token.tag_ in ("NNS", "NNPS") else token.lower_


_SINGULAR_DETERMINERS = frozenset({"a", "an", "this", "that", "every", "each", "another", "one"})
_PLURAL_DETERMINERS = frozenset({"these", "those", "many", "several", "few", "some", "both", "all"})


def _is_plural(token) -> bool:
    """Number of a noun: its numeral or determiner first (one sheep, a fish), else its tag."""
    for child in token.children:
        word = child.lower_
        if child.dep_ == "nummod" and (word in _NUMBERS or word.isdigit()):
            return (_NUMBERS[word] if word in _NUMBERS else int(word)) != 1
        if child.dep_ in ("det", "nummod") and word in _SINGULAR_DETERMINERS:
            return False
        if child.dep_ in ("det", "amod") and word in _PLURAL_DETERMINERS:
            return True
    return token.tag_ in ("NNS", "NNPS") or token.lower_ in _IRREGULAR_SINGULARS


def indefinite_article(word: str) -> str:
    """ "a" or "an" before ``word`` (by spelling, with the common exceptions: an hour, a unicorn,
    a one-way, an 8)."""
    w = word.lower()
    if not w:
        return "a"
    if w.startswith(("hour", "honest", "honor", "honour", "heir")):
        return "an"
    if w.startswith(("uni", "use", "usu", "uti", "uri", "eu", "ewe", "one", "once", "ubiq", "ufo")):
        return "a"
    if w[0] in "aeiou":
        return "an"
    if w[0] == "8" or w in ("11", "18") or w.startswith(("11", "18")) and len(w) in (2, 5):
        return "an"
    return "a"


_VERB_TO_PLURAL = {"is": "are", "was": "were", "has": "have", "does": "do", "'s": "are"}
_VERB_TO_SINGULAR = {"are": "is", "were": "was", "have": "has", "do": "does", "'re": "is"}


def _verb_to_plural(verb: str) -> str:
    w = verb.lower()
    if w in _VERB_TO_PLURAL:
        return _match_case(verb, _VERB_TO_PLURAL[w])
    if w.endswith("ies") and len(w) > 4:
        return _match_case(verb, w[:-3] + "y")
    if w.endswith(("sses", "xes", "zes", "ches", "shes", "oes")):
        return _match_case(verb, w[:-2])
    if w.endswith("s") and not w.endswith("ss"):
        return _match_case(verb, w[:-1])
    return verb


def _verb_to_singular(verb: str) -> str:
    w = verb.lower()
    if w in _VERB_TO_SINGULAR:
        return _match_case(verb, _VERB_TO_SINGULAR[w])
    return pluralize(verb) if w not in _IRREGULAR_PLURALS else verb + "s"


# ---------------------------------------------------------------------------------------------
# Vocabulary

_COLOURS = ["black", "white", "red", "blue", "green", "yellow", "brown", "gray", "orange", "pink", "purple", "silver"]
DEFAULT_VOCAB: dict = {
    # attribute: colours are replaced by another colour (grey and gray count as one)
    "colours": _COLOURS + ["grey"],
    # attribute: sizes by their opposite
    "sizes": {
        "big": "small", "small": "big", "large": "small", "little": "big", "tiny": "huge",
        "huge": "tiny", "giant": "tiny", "tall": "short", "short": "tall", "long": "short",
        "old": "young", "young": "old", "wide": "narrow", "narrow": "wide",
    },
    # attribute: materials by another material
    "materials": ["wooden", "metal", "plastic", "glass", "stone", "brick", "leather"],
    # object: nouns (singular) replaced by another of the same category
    "objects": {
        "animal": ["dog", "cat", "horse", "cow", "sheep", "bird", "elephant", "giraffe", "zebra", "bear"],
        "vehicle": ["car", "bus", "truck", "train", "motorcycle", "bicycle", "boat", "airplane"],
        "furniture": ["chair", "table", "couch", "bed", "bench", "desk"],
        "food": ["pizza", "sandwich", "apple", "banana", "orange", "cake", "donut", "broccoli", "carrot"],
        "person": ["man", "woman", "boy", "girl", "child"],
    },
    # relation: phrase (lower-case words) -> opposite; prepositions and -ing / 3rd person verbs
    "relations": {
        "on top of": "under", "on": "under", "under": "on", "underneath": "on", "beneath": "on",
        "in front of": "behind", "behind": "in front of",
        "inside of": "outside of", "outside of": "inside of", "inside": "outside", "outside": "inside",
        "far from": "next to",
        "into": "out of", "out of": "into", "toward": "away from", "towards": "away from", "away from": "toward",
        "riding": "walking next to", "rides": "walks next to",
        "sitting": "standing", "sits": "stands", "standing": "sitting", "stands": "sits",
        "lying": "standing", "laying": "standing",
        "pushing": "pulling", "pulling": "pushing", "opening": "closing", "closing": "opening",
        "entering": "leaving", "leaving": "entering", "throwing": "catching", "catching": "throwing",
        "chasing": "running from", "chases": "runs from",
    },
    # position: mirrored words, horizontal and vertical axes
    "horizontal": {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"},
    "vertical": {"above": "below", "below": "above", "top": "bottom", "bottom": "top", "upper": "lower", "lower": "upper"},
}

# Nouns that are frames or parts of relation phrases, never objects to replace, swap or count.
_FRAME_NOUNS = frozenset(
    "photo photograph picture image view shot close closeup close-up group couple pair bunch lot "
    "number herd flock set variety kind type side top bottom front back middle left right edge "
    "corner background foreground distance area scene part piece".split()
)
# Objects of "on" that make "under" nonsense (on a sunny day, on the phone, on the beach ...).
_ON_GROUND = frozenset(
    "day night morning afternoon evening weekend phone cellphone tv television screen display way side "
    "left right top bottom front back edge corner surface ground road street beach field grass water "
    "snow sidewalk track tracks runway wave waves shore hill slope sand floor court ocean lake river "
    "sea dirt ice mountain highway lawn pavement tarmac trail".split()
)
# Scenes and masses: not swapped with objects ("two dogs on the grass" -/-> "two grasses on the dog").
_SCENE_NOUNS = _ON_GROUND | frozenset(
    "rain sky air park city room kitchen bathroom field forest yard market airport station distance "
    "weather sun light food meal traffic crowd".split()
)
# Nouns "a X" -> "two Xs" leaves alone: a scene or a ground is rarely counted ("in a grassy field"
# -> "in two grassy fields", "a living room" -> "two living rooms" read like no caption).
_COUNT_SKIP = _SCENE_NOUNS | frozenset("table counter desk wall floor".split())
# Words saying there is one ("a lone giraffe", "a single cup", "the only car"): not counted up.
_SINGLE_WORDS = frozenset("lone single only solitary sole".split())
# Objects of "on" that "under" suits ("a cat on a car" -> "a cat under a car"); "on" before anything
# else is left alone ("a woman on skis" -/-> "a woman under skis", "a man on a horse").
_UNDER_OK = frozenset(
    "table desk bench chair bed couch sofa shelf counter stool car truck van tree bridge umbrella "
    "blanket cabinet sink awning canopy roof tarp pillow".split()
)
_QUANTIFIER_ADJECTIVES = frozenset("other many several few same different various much more most next first last only own whole".split())
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_NUMBERS = {word: i for i, word in enumerate(_NUMBER_WORDS)}


# ---------------------------------------------------------------------------------------------
# Rendering a parse with token replacements


def _render(doc, replacements: dict[int, str]) -> str:
    """The doc's text with token ``i`` replaced by ``replacements[i]`` ("" deletes the token and
    its trailing space); "a"/"an" before a changed word re-chosen for the new word."""
    texts = [replacements.get(t.i, t.text) for t in doc]
    for t in doc:
        if t.i in replacements or t.lower_ not in ("a", "an") or t.tag_ != "DT":
            continue
        j = t.i + 1
        while j < len(doc) and texts[j] == "":
            j += 1
        if j >= len(doc) or not any(k in replacements for k in range(t.i + 1, j + 1)):
            continue
        article = indefinite_article(texts[j].split()[0]) if texts[j].split() else t.lower_
        texts[t.i] = _match_case(t.text, article)
    out = []
    for t, text in zip(doc, texts):
        if text == "":
            continue
        out.append(text + t.whitespace_)
    return "".join(out).strip()


def _modified_noun(adjective) -> str:
    """The text of the noun an adjective token describes, or "": through adjective conjunctions
    ("white and black dog"), as a modifier (amod, or compound when the parser takes a colour for a
    noun: "an orange suit"), climbing noun compounds ("a wooden dog house" -> "house"), or as a
    predicate ("the dog is black" -> the subject)."""
    t = adjective
    while t.dep_ == "conj" and t.head.i != t.i and t.head.pos_ == "ADJ":
        t = t.head
    if t.dep_ in ("amod", "compound", "nmod") and t.head.pos_ in ("NOUN", "PROPN"):
        noun = t.head
        while noun.dep_ == "compound" and noun.head.i != noun.i and noun.head.pos_ in ("NOUN", "PROPN"):
            noun = noun.head
        return noun.text
    if t.dep_ == "acomp":
        subjects = [c for c in t.head.children if c.dep_ in ("nsubj", "nsubjpass") and c.pos_ in ("NOUN", "PROPN")]
        return subjects[0].text if subjects else ""
    return ""


def _compound_part(t) -> bool:
    """Whether noun ``t`` is part of a noun compound ("fire hydrant", "teddy bear", "living room"),
    as spaCy marks it (compound) or as the small pipelines misparse it: a noun right before or after
    it, or a word after it hanging on it as a modifier ("fire hydrant" with "hydrant" an adjective
    of "fire", "teddy bear" with "bear" an apposition)."""
    doc = t.doc
    if t.dep_ == "compound" or any(c.dep_ == "compound" for c in t.children):
        return True
    after = doc[t.i + 1] if t.i + 1 < len(doc) else None
    before = doc[t.i - 1] if t.i > 0 else None
    if after is not None and (after.pos_ in ("NOUN", "PROPN") or (after.head.i == t.i and after.dep_ in ("amod", "appos", "compound"))):
        return True
    return before is not None and before.pos_ in ("NOUN", "PROPN") and before.dep_ != "pobj" or (
        t.dep_ == "appos" and t.head.i == t.i - 1
    )


# Nouns of places in relation phrases ("to the left of", "in front of", "on top of").
_PLACE_NOUNS = frozenset("left right front back top bottom side middle edge corner center centre".split())


def _in_of_phrase(t) -> bool:
    """Whether noun ``t`` is either noun of a measure or part phrase "N of X" ("slices of pizza", "a
    cup of coffee"): swapping one of them with another noun breaks the phrase ("two pizzas of
    slice")."""
    if t.dep_ == "pobj" and t.head.lower_ == "of" and t.head.head.pos_ in ("NOUN", "PROPN", "NUM"):
        return t.head.head.lower_ not in _PLACE_NOUNS  # "to the left of a woman" is a place, not a measure
    return any(c.lower_ == "of" and any(g.dep_ == "pobj" for g in c.children) for c in t.children)


def _moved_span(text: str, source, dest) -> str:
    """The case of a span of text moved from token ``source`` to token ``dest``: a capital that only
    marks the caption's first word stays with the first position ("Blue bathroom with two white
    towels" -> "White bathroom with two blue towels")."""
    if source.i == 0 and text[:1].isupper() and not source.text.isupper():
        text = text[:1].lower() + text[1:]
    if dest.i == 0:
        text = text[:1].upper() + text[1:]
    return text


def _caption_rng(seed: int, caption: str, salt: str) -> random.Random:
    return random.Random(f"{seed}\x00{caption}\x00{salt}")


# ---------------------------------------------------------------------------------------------
# Rule-based editor


class RuleBasedEditor:
    """Rule-based text edits on a spaCy parse (an English pipeline with tagger, parser and
    lemmatizer, e.g. ``en_core_web_sm``).

    Kinds and what each covers:

    - ``attribute``: if two nouns carry adjectives (amod, with their conjuncts: "white and black";
      an adjective directly before its noun, with only adjectives, adverbs, conjunctions or nouns
      between and not after "to": "to pet two dogs" has none), the first two differing adjective
      spans are swapped ("a black dog with a white cat" -> "a white dog with a black cat"; the
      caption's initial capital stays in first position). Otherwise (one modified noun, or equal adjectives) every
      colour adjective is replaced by another colour, every size adjective by its opposite
      (big/small, tall/short, old/young ...) and every material by another material.
    - ``object``: every noun of the vocabulary's categories (animals, vehicles, furniture, food,
      people) is replaced by another of its category not already in the caption, plural for a
      plural noun; and the first two object nouns of different lemmas are swapped, each inflected
      for the other's number ("two dogs chasing a cat" -> "two cats chasing a dog"); nouns of a
      measure or part phrase "N of X" ("slices of pizza") are not swapped. Frame nouns (photo,
      group, side, top, ...) and compound nouns ("hot dog", "fire hydrant", "teddy bear", also as
      the small pipelines misparse them: two nouns in a row) are left alone.
    - ``relation``: a preposition or verb from the vocabulary's opposites ("on" -> "under",
      "in front of" -> "behind", "riding" -> "walking next to", "sitting" <-> "standing" ...), one
      edit per occurrence. "on" becomes "under" only before things one can be under (table,
      bench, car, tree, umbrella, ...: "a woman on skis" is left alone). "next to" / "near" /
      "beside" -> "far from" is not made: a blind LM spots all of them.
    - ``position``: above/below is **position**, not relation: the position edits are the text
      side of image flips, so one edit mirrors every horizontal word (left <-> right, leftmost <->
      rightmost; "to the left of" -> "to the right of") and one every vertical word (above <->
      below, top <-> bottom, upper <-> lower). "right" as an adverb (right next to) and "left"
      as a verb are not position words; "on top of" is a relation (-> "under").
    - ``count``: a number word or digit modifying a noun (nummod) is moved by +1 and -1 (not
      below one; one written "a"/"an" where the noun has no other determiner: "two clocks are"
      -> "a clock is", "the two dogs" -> "the one dog"); "a"/"an" becomes "two" before the
      caption's first object noun only (the subject, or the first object: never a scene or
      ground noun such as field, room, street, table, beach, nor after lone / single / only); the
      head noun is inflected (irregular plurals table, then rules) and, when the noun is the
      subject, its verb agrees
      ("a man is riding" -> "two men are riding", "there is a dog" -> "there are two dogs").
    - ``order``: ARO's four word-order shuffles (nouns and adjectives among themselves,
      everything but nouns and adjectives, trigrams, within trigrams) on the caption's
      whitespace words with a final full stop dropped. A shuffle equal to the caption (up to
      case and whitespace) is not an edit; captions with fewer than two content words (nouns,
      verbs, adjectives, numbers) get no order edit ("a photo" -> "photo a" is not a
      compositional negative). Off by default: ask with ``kinds`` (:data:`RULE_KINDS`).

    Every edit differs from the caption under :func:`~hf_counterfactual.features.normalize_caption`
    (case and whitespace ignored: the same tokens are no edit); duplicates (same normalised edited
    caption) keep the first, in ``kinds`` order. Dropped candidates are counted in :attr:`stats`
    (``rejected_same_as_caption``, ``rejected_duplicate``). The number of edits grows with the
    caption's length (one per editable word, each a full copy of the caption, so the output grows
    with its square); two caps keep a runaway caption (a scraped paragraph, a concatenation) from
    stalling a run: a caption of more than ``max_caption_words`` words is not parsed and gets no
    edit (counted as ``skipped_caption_too_long``), and past ``max_edits_per_caption`` edits the
    rest are dropped (counted, one per edit, as ``dropped_over_max_edits``). "a"/"an" is re-chosen before every
    changed word. Choices (replacement words, shuffles) are drawn from ``random.Random`` seeded with (``seed``, caption), so the
    output is deterministic for a seed and independent of batch composition.

    Args:
        pipeline: name of an installed spaCy English pipeline, ``auto``: the first installed of
            :data:`hf_counterfactual.nlp.ENGLISH_PIPELINES` (ignored if ``nlp`` is given).
        nlp: an already loaded spaCy ``Language``.
        kinds: the edit kinds to produce, in the order they are returned (default
            :data:`DEFAULT_RULE_KINDS`: all of :data:`RULE_KINDS` but ``order``).
        seed: seed of the random choices.
        vocab: entries overriding :data:`DEFAULT_VOCAB` (same keys).
        max_caption_words: captions with more whitespace-separated words than this are skipped
            before parsing (no edits; ``stats["skipped_caption_too_long"]``). Edit work and output
            grow with the square of the caption length (a 6,000-word caption gives ~2,000 edits,
            each 6,000 words, and takes seconds), while image captions are short (COCO's average
            about 10 words), so a caption this long is almost surely not one. ``None``: no cap.
        max_edits_per_caption: at most this many edits per caption, the first ones in the usual
            (``kinds``, then caption) order; the others are counted in
            ``stats["dropped_over_max_edits"]``. The pipeline keeps only a few counterfactuals per
            record anyway; the cap bounds memory and downstream work. Ordinary captions give far
            fewer (about 5 to 25). ``None``: no cap.
    """

    def __init__(
        self,
        pipeline: str = "auto",
        nlp=None,
        kinds: Sequence[str] = DEFAULT_RULE_KINDS,
        seed: int = 0,
        vocab: dict | None = None,
        max_caption_words: int | None = 64,
        max_edits_per_caption: int | None = 32,
    ):
        unknown = [kind for kind in kinds if kind not in RULE_KINDS]
        if unknown:
            raise ValueError(f"unknown edit kinds {unknown}; choose from {RULE_KINDS}")
        for name, value in (("max_caption_words", max_caption_words), ("max_edits_per_caption", max_edits_per_caption)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if nlp is None:
            try:
                import spacy
            except ImportError as err:  # pragma: no cover - spaCy is a dependency of this stage
                raise ImportError("rule-based text edits need spaCy: pip install spacy") from err
            from ..nlp import resolve_spacy_pipeline

            nlp = spacy.load(resolve_spacy_pipeline(pipeline, "pipeline"))
        self.nlp = nlp
        self.kinds = tuple(kinds)
        self.seed = seed
        self.vocab = {**DEFAULT_VOCAB, **(vocab or {})}
        self.max_caption_words = max_caption_words
        self.max_edits_per_caption = max_edits_per_caption
        self.stats: Counter = Counter()
        self._category = {word: cat for cat, words in self.vocab["objects"].items() for word in words}
        self._relations = sorted(
            ((tuple(k.split()), v) for k, v in self.vocab["relations"].items()), key=lambda kv: -len(kv[0])
        )

    # -- public API ----------------------------------------------------------------------------

    def edit(self, caption: str) -> list[TextEdit]:
        """All applicable edits of ``caption`` (``[]`` when none applies)."""
        return self.edit_batch([caption])[0]

    def edit_batch(self, captions: list[str], batch_size: int = 256) -> list[list[TextEdit]]:
        """:meth:`edit` for many captions, parsed with ``nlp.pipe``; captions over
        ``max_caption_words`` are not parsed and get ``[]``."""
        return self.edit_batch_with_stats(captions, batch_size=batch_size)[0]

    def edit_batch_with_stats(self, captions: list[str], batch_size: int = 256) -> tuple[list[list[TextEdit]], list[Counter]]:
        """:meth:`edit_batch`, also returning each caption's own share of :attr:`stats` (a
        ``Counter`` per caption, same keys: ``skipped_caption_too_long``, ``dropped_over_max_edits``,
        ``rejected_same_as_caption``, ``rejected_duplicate``), so that a caller can tell why one
        caption got no (or fewer) edits. :attr:`stats` is updated as by :meth:`edit_batch`."""
        captions = [c if isinstance(c, str) else "" for c in captions]
        cap = self.max_caption_words
        kept = [i for i, c in enumerate(captions) if cap is None or len(c.split()) <= cap]
        per_caption = [Counter() for _ in captions]
        skipped = len(captions) - len(kept)
        if skipped:
            if not self.stats["skipped_caption_too_long"]:
                logger.warning(
                    "RuleBasedEditor: skipping %d caption(s) of more than max_caption_words=%d words (no edits); "
                    "further skips are only counted in stats['skipped_caption_too_long']", skipped, cap,
                )
            kept_set = set(kept)
            for i in range(len(captions)):
                if i not in kept_set:
                    per_caption[i]["skipped_caption_too_long"] += 1
        out: list[list[TextEdit]] = [[] for _ in captions]
        docs = list(self.nlp.pipe((captions[i] for i in kept), batch_size=batch_size))
        word_docs: list = [None] * len(kept)
        if "order" in self.kinds:
            from spacy.tokens import Doc

            stripped = [self._order_text(captions[i]) for i in kept]
            nonempty = [j for j, s in enumerate(stripped) if s.split()]
            parsed = self.nlp.pipe((Doc(self.nlp.vocab, words=stripped[j].split()) for j in nonempty), batch_size=batch_size)
            for j, wdoc in zip(nonempty, parsed):
                word_docs[j] = wdoc
        for i, doc, wdoc in zip(kept, docs, word_docs):
            out[i] = self._edits(captions[i], doc, wdoc, per_caption[i])
        for counter in per_caption:
            self.stats.update(counter)
        return out, per_caption

    # -- per caption -----------------------------------------------------------------------------

    def _edits(self, caption: str, doc, word_doc, stats: Counter) -> list[TextEdit]:
        out: list[TextEdit] = []
        # Compared as the model sees them: "A dog" and "a  dog" are one caption, not an edit.
        original = normalize_caption(caption)
        seen = {original}
        for kind in self.kinds:
            rng = _caption_rng(self.seed, caption, kind)
            if kind == "order":
                candidates = self._order(caption, doc, word_doc, rng)
            else:
                candidates = getattr(self, f"_{kind}")(doc, rng)
            for new_caption, old, new, target in candidates:
                key = normalize_caption(new_caption)
                if not key:
                    continue
                if key in seen:
                    stats["rejected_same_as_caption" if key == original else "rejected_duplicate"] += 1
                    continue
                seen.add(key)
                if self.max_edits_per_caption is not None and len(out) >= self.max_edits_per_caption:
                    stats["dropped_over_max_edits"] += 1
                    continue
                out.append(TextEdit(caption=new_caption.strip(), edit=kind, source="rule", old=old, new=new, target=target))
        return out

    # attribute ------------------------------------------------------------------------------------

    @staticmethod
    def _premodifier(adjective, noun) -> bool:
        """Whether an amod adjective really modifies ``noun`` from before it: nothing but adjectives,
        adverbs, conjunctions, punctuation or nouns between them, and no "to" before it ("to pet
        two dogs" is a verb)."""
        doc = noun.doc
        if adjective.i > 0 and doc[adjective.i - 1].lower_ == "to":
            return False
        return all(doc[k].pos_ in ("ADJ", "ADV", "CCONJ", "PUNCT", "NOUN", "PROPN") for k in range(adjective.i + 1, noun.i))

    def _adjective_span(self, noun) -> tuple[int, int] | None:
        adjectives = [
            c for c in noun.children
            if c.dep_ == "amod" and c.pos_ == "ADJ" and c.i < noun.i and c.lower_ not in _QUANTIFIER_ADJECTIVES
            and self._premodifier(c, noun)
        ]
        if not adjectives:
            return None
        indices = [t.i for a in adjectives for t in a.subtree if t.i < noun.i]
        return min(indices), max(indices)

    def _attribute(self, doc, rng):
        spans = []
        for noun in doc:
            if noun.pos_ in ("NOUN", "PROPN") and noun.lower_ not in _FRAME_NOUNS:
                span = self._adjective_span(noun)
                if span is not None:
                    spans.append(span)
        edits = []
        for a in range(len(spans)):
            for b in range(a + 1, len(spans)):
                (a0, a1), (b0, b1) = spans[a], spans[b]
                text_a, text_b = doc[a0 : a1 + 1].text, doc[b0 : b1 + 1].text
                if text_a.lower() == text_b.lower() or not (a1 < b0 or b1 < a0):
                    continue
                repl = {a0: _moved_span(text_b, doc[b0], doc[a0]), b0: _moved_span(text_a, doc[a0], doc[b0])}
                repl.update({i: "" for i in range(a0 + 1, a1 + 1)})
                repl.update({i: "" for i in range(b0 + 1, b1 + 1)})
                # two objects change: no single target
                edits.append((_render(doc, repl), f"{text_a} / {text_b}", f"{text_b} / {text_a}", ""))
                break
            if edits:
                break
        if edits:
            return edits
        colours, sizes, materials = self.vocab["colours"], self.vocab["sizes"], self.vocab["materials"]
        for t in doc:
            if not (t.pos_ == "ADJ" or t.dep_ in ("amod", "acomp", "conj", "compound")):
                continue
            word = t.lower_
            if word in colours:
                same = {word, "gray", "grey"} if word in ("gray", "grey") else {word}
                present = {x.lower_ for x in doc}
                choices = [c for c in colours if c not in same and c not in present and c != "grey"]
                new = rng.choice(choices) if choices else None
            elif word in sizes:
                new = sizes[word]
            elif word in materials:
                choices = [m for m in materials if m != word]
                new = rng.choice(choices)
            else:
                continue
            if new:
                new = _match_case(t.text, new)
                edits.append((_render(doc, {t.i: new}), t.text, new, _modified_noun(t)))
        return edits

    # object -----------------------------------------------------------------------------------------

    @staticmethod
    def _object_noun(t) -> bool:
        return (
            t.pos_ == "NOUN"
            and not _compound_part(t)
            and t.lower_ not in _FRAME_NOUNS
            and len(t.text) > 1
        )

    def _inflect(self, singular: str, plural: bool, template: str) -> str:
        return _match_case(template, pluralize(singular) if plural else singular)

    def _object(self, doc, rng):
        edits = []
        lemmas_present = {_lemma(t) for t in doc if t.pos_ == "NOUN"}
        for t in doc:
            if not self._object_noun(t):
                continue
            lemma = _lemma(t)
            category = self._category.get(lemma)
            if category is None:
                continue
            choices = [w for w in self.vocab["objects"][category] if w != lemma and w not in lemmas_present]
            if not choices:
                continue
            new = self._inflect(rng.choice(choices), _is_plural(t), t.text)
            edits.append((_render(doc, {t.i: new}), t.text, new, t.text))
        nouns = [t for t in doc if self._object_noun(t) and _lemma(t) not in _SCENE_NOUNS and not _in_of_phrase(t)]
        for i, a in enumerate(nouns):
            b = next((n for n in nouns[i + 1 :] if _lemma(n) != _lemma(a)), None)
            if b is None:
                continue
            new_a = self._inflect(_lemma(b), _is_plural(a), a.text)
            new_b = self._inflect(_lemma(a), _is_plural(b), b.text)
            edits.append((_render(doc, {a.i: new_a, b.i: new_b}), f"{a.text} / {b.text}", f"{new_a} / {new_b}", ""))
            break
        return edits

    # relation ---------------------------------------------------------------------------------------

    def _relation(self, doc, rng):
        edits = []
        words = [t.lower_ for t in doc]
        i = 0
        while i < len(doc):
            matched = False
            for phrase, opposite in self._relations:
                n = len(phrase)
                if tuple(words[i : i + n]) != phrase:
                    continue
                first = doc[i]
                if not self._relation_ok(doc, first, phrase):
                    continue
                repl = {i: _match_case(first.text, opposite)}
                repl.update({k: "" for k in range(i + 1, i + n)})
                edits.append((_render(doc, repl), doc[i : i + n].text, opposite, ""))
                i += n
                matched = True
                break
            if not matched:
                i += 1
        return edits

    @staticmethod
    def _relation_ok(doc, first, phrase) -> bool:
        if len(phrase) > 1:
            return first.pos_ in ("ADP", "ADV", "ADJ", "SCONJ", "VERB", "NOUN")
        if phrase[0].endswith(("ing", "s")) and phrase[0] not in ("towards",):
            return first.pos_ in ("VERB", "AUX")
        if first.pos_ not in ("ADP", "ADV", "SCONJ"):
            return False
        if phrase[0] == "on":
            objects = [c for c in first.children if c.dep_ == "pobj"]
            if not objects or any(o.lower_ in _ON_GROUND or _lemma(o) in _ON_GROUND for o in objects):
                return False
            if not all(_lemma(o) in _UNDER_OK for o in objects):
                return False
            if first.head.pos_ == "VERB" and first.head.lemma_ in ("talk", "put", "turn", "wait", "work"):
                return False
        return True

    # position ---------------------------------------------------------------------------------------

    def _position(self, doc, rng):
        edits = []
        for axis in ("horizontal", "vertical"):
            mapping = self.vocab[axis]
            repl = {}
            for t in doc:
                if t.lower_ not in mapping or not self._position_ok(doc, t):
                    continue
                repl[t.i] = _match_case(t.text, mapping[t.lower_])
            if repl:
                old = " ".join(doc[i].text for i in sorted(repl))
                new = " ".join(repl[i] for i in sorted(repl))
                edits.append((_render(doc, repl), old, new, ""))
        return edits

    @staticmethod
    def _position_ok(doc, t) -> bool:
        word = t.lower_
        if word == "left":
            return t.pos_ != "VERB" or (t.i > 0 and doc[t.i - 1].lower_ in ("the", "to", "on", "at", "far"))
        if word == "right":
            return t.pos_ not in ("ADV", "INTJ") or (t.i > 0 and doc[t.i - 1].lower_ in ("the", "far"))
        if word in ("top", "bottom"):
            if t.i > 0 and doc[t.i - 1].lower_ == "on" and word == "top":
                return False  # "on top of" is a relation
            return not any(c.dep_ == "compound" for c in t.children)  # tank top
        if word in ("above", "below"):
            return t.pos_ in ("ADP", "ADV", "SCONJ")
        return t.pos_ in ("ADJ", "NOUN")

    # count --------------------------------------------------------------------------------------------

    def _count(self, doc, rng):
        edits = []
        # "a X" -> "two Xs" only for the first object noun: the subject, or the first object
        first = next((n for n in doc if self._object_noun(n) and _lemma(n) not in _COUNT_SKIP), None)
        for t in doc:
            head = t.head
            if head.pos_ != "NOUN" or head.i <= t.i or not self._object_noun(head):
                continue
            if any(c.lower_ in _SINGLE_WORDS for c in head.children):
                continue
            word = t.lower_
            targets: list[int] = []
            if t.dep_ == "nummod" and (word in _NUMBERS or word.isdigit()):
                n = _NUMBERS[word] if word in _NUMBERS else int(word)
                targets = [m for m in (n + 1, n - 1) if m >= 1]
                digits = word.isdigit()
            elif word in ("a", "an") and t.dep_ == "det" and not _is_plural(head) and first is not None and head.i == first.i:
                if t.i + 2 < len(doc) and doc[t.i + 1].lower_ == "couple":
                    continue
                targets, digits = [2], False
            else:
                continue
            for m in targets:
                plural = m != 1
                number = str(m) if digits else (_NUMBER_WORDS[m] if m < len(_NUMBER_WORDS) else str(m))
                if m == 1 and not digits and not any(c.dep_ in ("det", "poss") for c in head.children):
                    # "two clocks are" -> "a clock is": a caption writer's "one" is rare, and a blind
                    # LM spotted "one clock" 84% of the time; "the two dogs" keeps "one"
                    number = indefinite_article(doc[t.i + 1].text if t.i + 1 < head.i else _singularize(head))
                noun = pluralize(_lemma(head)) if plural else _singularize(head) if _is_plural(head) else head.text
                noun = _match_case(head.text, noun.lower()) if noun.lower() != head.lower_ else head.text
                repl = {t.i: _match_case(t.text, number), head.i: noun}
                repl.update(self._agreement(head, plural))
                new_span = " ".join(repl.get(k, doc[k].text) for k in range(t.i, head.i + 1))
                edits.append((_render(doc, repl), doc[t.i : head.i + 1].text, new_span, head.text))
        return edits

    @staticmethod
    def _agreement(noun, plural: bool) -> dict[int, str]:
        """Replacements making the verb of ``noun`` agree when ``noun`` is its subject (or the
        attribute of an existential "there is")."""
        if any(c.dep_ == "conj" for c in noun.children) or noun.dep_ == "conj":
            return {}
        verb = noun.head
        if noun.dep_ in ("nsubj", "nsubjpass"):
            pass
        elif noun.dep_ == "attr" and any(c.dep_ == "expl" for c in verb.children):
            pass
        else:
            return {}
        finite = [c for c in verb.children if c.dep_ in ("aux", "auxpass") and c.tag_ in ("VBZ", "VBP", "VBD")]
        if not finite and verb.tag_ in ("VBZ", "VBP") or (not finite and verb.lower_ in ("was", "were")):
            finite = [verb]
        repl = {}
        for v in finite[:1]:
            if plural and (v.tag_ == "VBZ" or v.lower_ == "was"):
                repl[v.i] = _verb_to_plural(v.text)
            elif not plural and (v.tag_ == "VBP" or v.lower_ == "were"):
                repl[v.i] = _verb_to_singular(v.text)
        return repl

    # order ------------------------------------------------------------------------------------------

    @staticmethod
    def _order_text(caption: str) -> str:
        return re.sub(r"\s*[.!]+\s*$", "", caption.strip())

    def _order(self, caption, doc, word_doc, rng):
        if word_doc is None:
            return []
        content = sum(t.pos_ in ("NOUN", "PROPN", "VERB", "ADJ", "NUM") for t in doc)
        if content < 2:
            return []
        original = self._order_text(caption)
        ending = caption.strip()[len(original):].strip()
        shuffles = [
            ("nouns_and_adjectives", lambda r: shuffle_nouns_and_adjectives(word_doc, r)),
            ("all_but_nouns_and_adjectives", lambda r: shuffle_all_but_nouns_and_adjectives(word_doc, r)),
            ("trigrams", lambda r: shuffle_trigrams(original, r)),
            ("within_trigrams", lambda r: shuffle_within_trigrams(original, r)),
        ]
        edits = []
        for name, shuffle in shuffles:
            local = random.Random(f"{rng.random()}:{name}")
            for _ in range(5):  # a few tries for a shuffle that moves something
                shuffled = shuffle(local)
                # The shuffles rejoin words with one space: a caption with a double space would
                # otherwise count an identity shuffle as a move.
                if normalize_caption(shuffled) != normalize_caption(original):
                    edits.append((shuffled + ending, "", "", ""))
                    break
        return edits


# ---------------------------------------------------------------------------------------------
# LLM concept replacement (Sahin et al. 2023)

DEFAULT_EXAMPLES: tuple[dict[str, str], ...] = (
    {"caption": "A black dog sitting on a couch.", "old": "black dog", "new": "white cat",
     "phrase": "a fluffy white cat curled up"},
    {"caption": "A man riding a horse on the beach.", "old": "horse", "new": "camel",
     "phrase": "a tall brown camel with one hump"},
    {"caption": "Two red apples on a wooden table.", "old": "red apples", "new": "green pears",
     "phrase": "two ripe green pears"},
)

_INSTRUCTION = (
    "Replace one concept (an object or an object with its attribute) in the caption with a "
    "different concept of at most three words, so that the new caption describes a different "
    "image. Then describe the new concept in a short phrase for an image editor."
)


def _format_example(example: dict[str, str]) -> str:
    return f"Caption: {example['caption']}\nOld: {example['old']}\nNew: {example['new']}\nPhrase: {example['phrase']}\n"


_FIELDS = re.compile(r"Old:\s*(?P<old>[^\n]*?)\s*\n\s*New:\s*(?P<new>[^\n]*?)\s*\n\s*Phrase:\s*(?P<phrase>[^\n]*)", re.S)


def parse_generation(generation: str) -> tuple[str, str, str] | None:
    """(old, new, phrase) from a generation that continues a prompt ending in "Old:", or None."""
    match = _FIELDS.search("Old:" + generation)
    if match is None:
        return None
    phrase = match["phrase"].split("Caption:")[0].strip()
    return match["old"].strip().strip(".\"'"), match["new"].strip().strip(".\"'"), phrase.strip()


class LLMConceptEditor(LLMStage):
    """Concept replacement with any ``transformers`` causal LM, the prompt shape of Sahin et al.
    2023: an instruction, ``few_shot`` examples (caption -> old concept, new concept in at most
    three words, descriptive phrase for the image editor), then the caption and "Old:".

    The generation is parsed into (old, new, phrase) and rejected when it does not parse, old or
    new is empty, new (or old) is longer than three words, new equals old, or old is not in the
    caption (case-insensitive, whole words); the reasons are counted in :attr:`stats`. The edited
    caption replaces the first occurrence of old by new (with "a"/"an" fixed before it); the kind is
    "attribute" when old and new share their last word (black dog -> white dog), else "object".

    Generation (greedy, batched with left padding) and its cache are a
    :class:`~hf_counterfactual.generation.llm.CachedGenerator` (:attr:`generator`): raw
    generations are cached in ``cache_dir/llm_concept_edits.jsonl``, one JSON line per (model,
    prompt hash), so a rerun neither loads nor runs anything for cached captions. ``model_name``
    defaults to the model's ``name_or_path``, or for a model built from a config (empty name) its
    class and a hash of its config. ``model``, ``tokenizer``, ``max_new_tokens``, ``batch_size``,
    ``model_name``, ``cache_path`` and ``stats`` are the generator's; :meth:`_generate` is the hook
    that runs the model on uncached prompts (override it to script replies).
    """

    CACHE_FILE = "llm_concept_edits.jsonl"

    def __init__(
        self,
        model,
        tokenizer,
        cache_dir: str | os.PathLike | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        few_shot: Iterable[dict[str, str]] = DEFAULT_EXAMPLES,
        model_name: str | None = None,
    ):
        self.few_shot = tuple(few_shot)
        super().__init__(model, tokenizer, cache_dir, max_new_tokens, batch_size, model_name)

    def prompt(self, caption: str) -> str:
        """The few-shot prompt for ``caption``, ending in "Old:" (what the model continues)."""
        examples = "\n".join(_format_example(e) for e in self.few_shot)
        return f"{_INSTRUCTION}\n\n{examples}\nCaption: {caption.strip()}\nOld:"

    def edit(self, caption: str) -> list[TextEdit]:
        """:meth:`edit_batch` for one caption."""
        return self.edit_batch([caption])[0]

    def edit_batch(self, captions: list[str]) -> list[list[TextEdit]]:
        """One list per caption: ``[edit]`` when the model's proposal is accepted, else ``[]``."""
        generations = self.generator.generate([self.prompt(c) for c in captions])
        return [self._to_edits(c, g) for c, g in zip(captions, generations)]

    def _reject(self, reason: str) -> list[TextEdit]:
        self.stats[f"rejected_{reason}"] += 1
        self.stats["rejected"] += 1
        return []

    def _to_edits(self, caption: str, generation: str) -> list[TextEdit]:
        parsed = parse_generation(generation)
        if parsed is None:
            return self._reject("unparsed")
        old, new, phrase = parsed
        if not old or not new:
            return self._reject("empty")
        if len(new.split()) > 3 or len(old.split()) > 3:
            return self._reject("too_long")
        if new.lower() == old.lower():
            return self._reject("unchanged")
        match = re.search(r"(?<!\w)" + re.escape(old) + r"(?!\w)", caption, flags=re.I)
        if match is None:
            return self._reject("not_in_caption")
        replacement = _match_case(match.group(0), new)
        before = caption[: match.start()]
        article = re.search(r"(?i)(?<!\w)(an?)(\s+)$", before)
        if article is not None:
            fixed = _match_case(article.group(1), indefinite_article(new.split()[0]))
            before = before[: article.start()] + fixed + article.group(2)
        edited = before + replacement + caption[match.end() :]
        if normalize_caption(edited) == normalize_caption(caption):
            return self._reject("unchanged")
        kind = "attribute" if old.split()[-1].lower() == new.split()[-1].lower() else "object"
        self.stats["accepted"] += 1
        target = re.sub(r"^\W+|\W+$", "", match.group(0).split()[-1])
        return [TextEdit(caption=edited, edit=kind, source="llm", old=match.group(0), new=new, phrase=phrase, target=target)]
