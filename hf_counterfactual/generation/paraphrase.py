"""Paraphrases: a caption -> other captions that are *true* of the same image.

They fill the record's ``paraphrases`` field, the positives of READ-CLIP's sentence-level
paraphrase alignment. A paraphrase is the opposite of a counterfactual: it must keep every fact
of the caption, so a generation that flips a number, a position, a colour or a negation (exactly
the edits :class:`~.text_edits.RuleBasedEditor` makes to build negatives) is rejected, not kept.

:class:`LLMParaphraser` asks any ``transformers`` causal LM with a few-shot prompt and filters the
first line of each greedy generation with :func:`paraphrase_problem`; generations are cached by
:class:`~.llm.CachedGenerator` in ``llm_paraphrases.jsonl``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from .llm import LLMStage
from .text_edits import DEFAULT_VOCAB

__all__ = [
    "DEFAULT_PARAPHRASE_EXAMPLES",
    "LLMParaphraser",
    "first_line",
    "paraphrase_problem",
]

DEFAULT_PARAPHRASE_EXAMPLES: tuple[dict[str, str], ...] = (
    {"caption": "A black dog sitting on a couch.", "paraphrase": "A dog with black fur sits on a sofa."},
    {"caption": "Two men riding horses on the beach.", "paraphrase": "On the beach, two men are on horseback."},
    {"caption": "A cup to the left of a laptop on a desk.", "paraphrase": "On a desk, a cup stands left of a laptop."},
)

_INSTRUCTION = (
    "Rewrite the caption in other words so that it still describes exactly the same image: keep "
    "every object, colour, number and position, and change only the wording. Answer in one line."
)

# ---------------------------------------------------------------------------------------------
# The checks. Words are lower-cased runs of letters/digits (with an apostrophe suffix: isn't).

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_NUMBERS = {word: i for i, word in enumerate(_NUMBER_WORDS)}
# The words the rule editor's position edits mirror (left/right, above/below, top/bottom ...).
_POSITION_WORDS = frozenset(DEFAULT_VOCAB["horizontal"]) | frozenset(DEFAULT_VOCAB["vertical"])
_COLOURS = {c: ("gray" if c == "grey" else c) for c in DEFAULT_VOCAB["colours"]}
_NEGATIONS = frozenset({"no", "not", "without", "none", "nobody", "nothing", "never", "neither", "nor"})
# Function words and frame words: sharing only these with the caption is not sharing content.
_STOPWORDS = frozenset(
    "a an the of on in at to with and or but is are was were be been being it its this that these those "
    "there here their his her he she they them some any by for from as while into onto up down out off "
    "over under near next has have had do does very just also than then which who whom whose what where "
    "photo picture image view shot".split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _numbers(words: Iterable[str]) -> set[int]:
    # "one" is left out: "a dog" and "one dog" say the same, and "one of the men" is no count.
    values = {_NUMBERS[w] if w in _NUMBERS else int(w) for w in words if w in _NUMBERS or w.isdigit()}
    return values - {1}


def _negated(words: Sequence[str]) -> bool:
    return any(w in _NEGATIONS or w.endswith("n't") for w in words)


def _stem(word: str) -> str:
    # Enough to match dog/dogs and bus/buses; content words are compared, not analysed.
    for suffix in ("es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _content(words: Iterable[str]) -> set[str]:
    return {_stem(w) for w in words if len(w) > 2 and w not in _STOPWORDS and not w.isdigit() and w not in _NUMBERS}


def first_line(generation: str) -> str:
    """The answer in a generation: its first line (spaces, tabs and surrounding quotes stripped).
    A generation that starts with a line break has an empty answer."""
    line = generation.lstrip(" \t").split("\n", 1)[0].strip()
    return line.strip("\"'\u201c\u201d").strip()


def paraphrase_problem(
    caption: str,
    paraphrase: str,
    min_length_ratio: float = 0.5,
    max_length_ratio: float = 2.0,
) -> str | None:
    """Why ``paraphrase`` cannot be a paraphrase of ``caption`` (a reason below), or ``None``.

    The reasons, checked in this order (the first that applies is returned):

    - ``empty``: no word.
    - ``unchanged``: the same words as the caption (case and punctuation ignored).
    - ``too_long`` / ``too_short``: with ``n`` the caption's words, more than
      ``max_length_ratio * n + 2`` words or fewer than ``min_length_ratio * n`` (defaults: more
      than twice plus two, fewer than half); the two words of slack let short captions grow
      ("a dog" -> "a dog is shown").
    - ``repetition``: a word immediately repeated ("the the", "in in in"): a degenerate loop.
    - ``number``: the sets of numbers differ (number words zero..twenty and digits, "2" == "two";
      "one" is ignored since "a" says the same): a count missing, changed or added.
    - ``position``: the sets of position words differ (left, right, leftmost, rightmost, above,
      below, top, bottom, upper, lower: the words position edits mirror). Conservative: "above"
      -> "over" is rejected too.
    - ``colour``: the sets of colour words differ (grey == gray).
    - ``negation``: one of the two is negated (no, not, without, never, none, -n't ...) and the
      other is not.
    - ``unrelated``: the caption has content words (not function words, numbers or words of at
      most two letters) and the paraphrase shares none of them (plural -s/-es ignored): a
      paraphrase keeps at least one of the scene's words.

    Each of number / position / colour / negation is a flip that would make a counterfactual of
    the caption, not a paraphrase.
    """
    cap, para = _words(caption), _words(paraphrase)
    if not para:
        return "empty"
    if para == cap:
        return "unchanged"
    n = len(cap)
    if len(para) > max_length_ratio * n + 2:
        return "too_long"
    if len(para) < min_length_ratio * n:
        return "too_short"
    if any(a == b for a, b in zip(para, para[1:])):
        return "repetition"
    if _numbers(cap) != _numbers(para):
        return "number"
    if {w for w in cap if w in _POSITION_WORDS} != {w for w in para if w in _POSITION_WORDS}:
        return "position"
    if {_COLOURS[w] for w in cap if w in _COLOURS} != {_COLOURS[w] for w in para if w in _COLOURS}:
        return "colour"
    if _negated(cap) != _negated(para):
        return "negation"
    content = _content(cap)
    if content and not content & _content(para):
        return "unrelated"
    return None


def _format_example(example: dict[str, str]) -> str:
    return f"Caption: {example['caption']}\nParaphrase: {example['paraphrase']}\n"


class LLMParaphraser(LLMStage):
    """Paraphrases of captions with any ``transformers`` causal LM (READ-CLIP's paraphrase
    alignment needs captions TRUE of the same image; compare :class:`~.text_edits.LLMConceptEditor`,
    whose captions are false of it).

    The prompt: an instruction, ``few_shot`` examples (caption -> paraphrase), then the caption and
    "Paraphrase:". Generation is greedy and batched (left padding) and cached by a
    :class:`~hf_counterfactual.generation.llm.CachedGenerator` (:attr:`generator`) in
    ``cache_dir/llm_paraphrases.jsonl``, keyed by (model name, prompt hash): a rerun runs the model
    on no cached prompt. Only the first line of a generation counts (:func:`first_line`); it is
    accepted unless :func:`paraphrase_problem` gives a reason, and every rejection is counted in
    :attr:`stats` as ``rejected`` and ``rejected_<reason>`` (next to ``accepted``, and the
    generator's ``cached`` / ``generated``). Empty captions are not sent to the model
    (``skipped_empty_caption``).

    ``num_paraphrases`` (at most ``len(few_shot)``) asks for several paraphrases through prompt
    variants: variant ``k`` lists the examples rotated by ``k``, so each greedy generation sees a
    different last example. Accepted paraphrases equal to an earlier one of the same caption (case
    and punctuation ignored) are rejected as ``duplicate``; so a caption gets at most
    ``num_paraphrases`` paraphrases, possibly fewer, possibly none.

    Args:
        model, tokenizer: a causal LM and its tokenizer.
        cache_dir: folder of the cache file; ``None``: an in-memory cache.
        max_new_tokens: generation length (a paraphrase is one line; the rest is cut).
        batch_size: prompts per ``model.generate`` call.
        few_shot: the examples, dicts with ``caption`` and ``paraphrase``.
        model_name: the model's name in cache keys (default: its ``name_or_path``, or its class
            and config hash for a model built from a config).
        min_length_ratio, max_length_ratio: the length rule of :func:`paraphrase_problem`.
    """

    CACHE_FILE = "llm_paraphrases.jsonl"

    def __init__(
        self,
        model,
        tokenizer,
        cache_dir: str | os.PathLike | None = None,
        max_new_tokens: int = 48,
        batch_size: int = 8,
        few_shot: Iterable[dict[str, str]] = DEFAULT_PARAPHRASE_EXAMPLES,
        model_name: str | None = None,
        min_length_ratio: float = 0.5,
        max_length_ratio: float = 2.0,
    ):
        self.few_shot = tuple(few_shot)
        if not self.few_shot:
            raise ValueError("few_shot needs at least one example")
        self.min_length_ratio = min_length_ratio
        self.max_length_ratio = max_length_ratio
        super().__init__(model, tokenizer, cache_dir, max_new_tokens, batch_size, model_name)

    def prompt(self, caption: str, variant: int = 0) -> str:
        """The few-shot prompt for ``caption``; ``variant`` rotates the examples."""
        k = variant % len(self.few_shot)
        examples = self.few_shot[k:] + self.few_shot[:k]
        shots = "\n".join(_format_example(e) for e in examples)
        return f"{_INSTRUCTION}\n\n{shots}\nCaption: {caption.strip()}\nParaphrase:"

    def paraphrase(self, caption: str, num_paraphrases: int = 1) -> list[str]:
        """The accepted paraphrases of one caption (see :meth:`paraphrase_batch`)."""
        return self.paraphrase_batch([caption], num_paraphrases)[0]

    def paraphrase_batch(self, captions: Sequence[str], num_paraphrases: int = 1) -> list[list[str]]:
        """One list per caption: its accepted paraphrases, in variant order, at most
        ``num_paraphrases`` (``[]`` when every generation is rejected). Ready for the record's
        ``paraphrases`` field."""
        if not 1 <= num_paraphrases <= len(self.few_shot):
            raise ValueError(
                f"num_paraphrases must be between 1 and the number of few-shot examples ({len(self.few_shot)}), "
                f"got {num_paraphrases}"
            )
        captions = [c if isinstance(c, str) else "" for c in captions]
        asked = [i for i, c in enumerate(captions) if _words(c)]
        self.stats["skipped_empty_caption"] += len(captions) - len(asked)
        prompts = [self.prompt(captions[i], k) for i in asked for k in range(num_paraphrases)]
        generations = self.generator.generate(prompts)
        out: list[list[str]] = [[] for _ in captions]
        for j, i in enumerate(asked):
            for generation in generations[j * num_paraphrases : (j + 1) * num_paraphrases]:
                self._accept(captions[i], generation, out[i])
        return out

    def _accept(self, caption: str, generation: str, accepted: list[str]) -> None:
        text = first_line(generation)
        reason = paraphrase_problem(caption, text, self.min_length_ratio, self.max_length_ratio)
        if reason is None and any(_words(text) == _words(a) for a in accepted):
            reason = "duplicate"
        if reason is not None:
            self.stats[f"rejected_{reason}"] += 1
            self.stats["rejected"] += 1
            return
        self.stats["accepted"] += 1
        accepted.append(text)
