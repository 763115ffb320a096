"""Text plausibility: blind (text-only) scorers of captions, and debiasing negatives against them.

SugarCrepe (Hsieh et al. 2023) showed that the hard negatives of ARO and CREPE can be told from the
true captions by a model that never sees the image: a rule's output reads less like a caption. A
negative that a blind model spots teaches a vision-language model a text prior, not the image. This
module measures that and removes it:

- scorers, each ``score(captions) -> np.ndarray`` (higher = more plausible as a caption):

  - :class:`KneserNeyLM`: an interpolated Kneser-Ney n-gram LM fitted on captions (the default
    blind model: fitted on the input dataset's own factual captions, no download);
  - :class:`CausalLMScorer`: any ``transformers`` causal LM, mean token log-probability;
  - :class:`SequenceClassifierScorer`: a CoLA-style grammaticality classifier, probability of
    its "acceptable" label.

- :func:`score_gaps`: ``score(true caption) - score(negative)`` per pair (positive: the blind model
  prefers the true caption, i.e. it can spot the negative);
- :func:`cross_fit_gaps`: the same with the n-gram LM fitted on the dataset's own true captions,
  cross-fitted over folds of its images (an LM never scores a caption it was fitted on);
- :func:`preference_rate`: per edit kind, the share of pairs whose gap is positive (ties count
  one half): 0.5 is chance, what a debiased set should show;
- :func:`filter_by_gap`: drop negatives whose gap exceeds a threshold;
- :func:`adversarial_refine`: SugarCrepe's adversarial refinement, per edit kind, for one or more
  blind scorers: keep pairs so that each scorer prefers the true caption on half of what is kept;
- :func:`reliability_center`: where to centre that balance so that a *held-out* blind model, not
  only the scorer balanced, is at chance on what is kept (the scorer's noise makes balancing its
  own gaps around zero leave the true gap positive: regression to the mean).

Tokenisation of the n-gram LM (:func:`tokenize`): the caption is lower-cased and split into words,
a word being a run of letters and digits with inner apostrophes kept ("man's", "don't"); all other
characters (punctuation, hyphens, spaces) separate words and are dropped, so "A man." and "a man"
score the same. A caption is padded with ``order - 1`` begin tokens ``<s>`` and one end token
``</s>``; the scored tokens are its words and ``</s>`` (``<s>`` is never predicted), so a caption of
``k`` words has ``k + 1`` scored tokens. Words not seen in fitting (or seen fewer than
``min_count`` times) are ``<unk>``.

Why the n-gram LM is written here rather than taken from NLTK: ``nltk.lm.KneserNeyInterpolated``
(the field's usual Python n-gram toolkit; not installed by this project) was measured on the
development machine (nltk 3.9): fitting a bigram model on 2,000 captions takes 0.5 s, but scoring
100 captions (600 tokens) takes 4 s, about 7 ms per token, because every query scans all contexts
for continuation counts; scoring 100,000 captions against a 50,000-caption model would take hours.
Its recursion also ends in a uniform distribution with no continuation unigram, so its "bigram
Kneser-Ney" never uses the continuation counts that make Kneser-Ney what it is. KenLM needs a
compiled ``lmplz`` binary to fit. The class below fits and scores with numpy (sorted integer codes
of n-grams, ``np.searchsorted``): fitting on 50,000 captions and scoring 100,000 take seconds.

The model (Chen & Goodman 1999, interpolated Kneser-Ney with one discount per order)::

    P_n(w | h)  = max(c(h w) - D_n, 0) / c(h .)       + D_n N1+(h .) / c(h .)       P_{n-1}(w | h')
    P_k(w | h)  = max(N1+(. h w) - D_k, 0) / N1+(. h .) + D_k N1+(h .) / N1+(. h .) P_{k-1}(w | h')
    P_0(w)      = 1 / |V|

for the highest order ``n`` (raw counts ``c``) and the lower orders ``k < n`` (continuation counts
``N1+(. h w)``: the number of distinct words seen before ``h w``); ``h'`` is ``h`` without its
first word, ``N1+(h .)`` the number of distinct words seen after ``h`` and ``|V|`` the vocabulary
size (seen words, ``</s>`` and ``<unk>``). A history never seen is skipped (``P_k = P_{k-1}``).
``D_k`` is ``discount`` if given, else Ney's estimate ``n1 / (n1 + 2 n2)`` from the counts of
counts of order ``k`` (``n1`` n-grams of count 1, ``n2`` of count 2, continuation counts for
lower orders). Probabilities sum to one over ``V`` for every history.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BOS",
    "EOS",
    "UNK",
    "CausalLMScorer",
    "CrossFitNgram",
    "KneserNeyLM",
    "PlausibilityScorer",
    "SequenceClassifierScorer",
    "adversarial_refine",
    "cross_fit_gaps",
    "filter_by_gap",
    "preference_rate",
    "reliability_center",
    "score_gaps",
    "tokenize",
]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


def tokenize(caption: str) -> list[str]:
    """The n-gram LM's words of ``caption``: lower-cased runs of letters and digits (inner
    apostrophes kept); punctuation, hyphens and spaces separate words and are dropped."""
    return _WORD.findall(caption.lower().replace("\u2019", "'")) if isinstance(caption, str) else []


def _log(p: np.ndarray) -> np.ndarray:
    """Natural log, element by element with ``math.log``: numpy's SIMD log may round the last bit
    differently by an element's position in the array, which would make a caption's score depend on
    the captions scored with it (and generation on its batches)."""
    return np.fromiter(map(math.log, p.tolist()), dtype=np.float64, count=len(p))


@runtime_checkable
class PlausibilityScorer(Protocol):
    """Anything that scores captions: ``score(captions) -> np.ndarray`` of shape ``[len(captions)]``,
    higher for a caption that reads more like a real one."""

    def score(self, captions: Sequence[str]) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------
# Kneser-Ney n-gram LM


class KneserNeyLM:
    """Interpolated Kneser-Ney n-gram LM over captions (see the module docstring for the model and
    the tokenisation). Fit with :meth:`fit`; :meth:`score` is the mean log-probability per token
    (natural log), the blind score of :func:`score_gaps`.

    Args:
        order: n of the n-grams (2: bigrams).
        discount: one discount in (0, 1) for every order; ``None``: Ney's estimate per order.
        min_count: words seen fewer times than this in fitting are ``<unk>``.
    """

    def __init__(self, order: int = 2, discount: float | None = None, min_count: int = 1):
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be a positive integer, got {order!r}")
        if discount is not None and not 0.0 < discount < 1.0:
            raise ValueError(f"discount must be in (0, 1) or None, got {discount!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
        self.order = order
        self.discount = discount
        self.min_count = min_count
        self.vocab: dict[str, int] | None = None

    # -- fitting ---------------------------------------------------------------------------------

    def _encode(self, captions: Iterable[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat token ids of the padded captions, the flat position of each caption's first scored
        token (after its ``order - 1`` begin tokens), and each position's offset in its caption."""
        vocab, pad = self.vocab, self.order - 1
        unk, bos, eos = vocab[UNK], vocab[BOS], vocab[EOS]
        ids: list[int] = []
        starts: list[int] = []
        offsets: list[int] = []
        for caption in captions:
            words = [vocab.get(w, unk) for w in tokenize(caption)]
            ids.extend([bos] * pad)
            starts.append(len(ids))
            ids.extend(words)
            ids.append(eos)
            offsets.extend(range(pad + len(words) + 1))
        return np.asarray(ids, dtype=np.int64), np.asarray(starts, dtype=np.int64), np.asarray(offsets, dtype=np.int64)

    def _gram_index(self, ids: np.ndarray) -> list[np.ndarray]:
        """``index[m][j]``: the row in the order-``m`` table of the m-gram ending at flat position
        ``j`` (-1: not in the table, or running past the start); ``index[0]`` is all zeros (the
        empty history)."""
        V = len(self.vocab)
        index = [np.zeros(len(ids), dtype=np.int64)]
        for m in range(1, self.order + 1):
            # the history of the m-gram ending at j is the (m-1)-gram ending at j - 1
            prev = np.zeros(len(ids), dtype=np.int64) if m == 1 else np.concatenate([[-1], index[m - 1][:-1]])
            codes = prev * V + ids
            table = self._codes[m - 1]
            row = np.searchsorted(table, codes)
            row = np.minimum(row, len(table) - 1)
            found = (prev >= 0) & (len(table) > 0)
            if len(table):
                found &= table[row] == codes
            index.append(np.where(found, row, -1))
        return index

    def fit(self, captions: Iterable[str]) -> "KneserNeyLM":
        """Fit on ``captions`` (each one sentence); returns ``self``."""
        captions = list(captions)
        if not captions:
            raise ValueError("KneserNeyLM.fit needs at least one caption")
        counts: dict[str, int] = {}
        for caption in captions:
            for w in tokenize(caption):
                counts[w] = counts.get(w, 0) + 1
        words = sorted(w for w, c in counts.items() if c >= self.min_count and w not in (BOS, EOS, UNK))
        self.vocab = {UNK: 0, BOS: 1, EOS: 2, **{w: i + 3 for i, w in enumerate(words)}}
        V, n = len(self.vocab), self.order
        ids, _, offsets = self._encode(captions)
        # Tables of every order: sorted unique codes (code = row of the history in the table one
        # order down, times V, plus the word), built bottom-up so that each history has a row.
        self._codes: list[np.ndarray] = []
        position_rows: list[np.ndarray] = [np.zeros(len(ids), dtype=np.int64)]
        position_codes: list[np.ndarray] = []
        for m in range(1, n + 1):
            prev = np.zeros(len(ids), dtype=np.int64) if m == 1 else np.concatenate([[-1], position_rows[m - 1][:-1]])
            # an m-gram is one that lies inside one padded caption
            codes = np.where((prev >= 0) & (offsets >= m - 1), prev * V + ids, -1)
            table, rows = np.unique(codes[codes >= 0], return_inverse=True)
            full = np.full(len(ids), -1, dtype=np.int64)
            full[codes >= 0] = rows
            self._codes.append(table)
            position_rows.append(full)
            position_codes.append(codes)
        # Counts per order: raw for the highest, continuation (distinct left words) below. An
        # n-gram ending in <s> (padding, only below the highest order) is a history, never a
        # prediction: its count is zero, so no distribution gives <s> mass.
        bos = self.vocab[BOS]
        self._counts: list[np.ndarray] = []
        for m in range(1, n + 1):
            rows = position_rows[m]
            if m == n:
                count = np.bincount(rows[rows >= 0], minlength=len(self._codes[m - 1])).astype(np.float64)
            else:
                # each distinct (m+1)-gram contributes one to the count of its suffix m-gram
                longer = position_rows[m + 1]
                _, first = np.unique(longer, return_index=True)
                first = first[longer[first] >= 0]
                count = np.bincount(rows[first], minlength=len(self._codes[m - 1])).astype(np.float64)
            count[self._codes[m - 1] % V == bos] = 0.0
            self._counts.append(count)
        # Per-order history statistics and discounts.
        self._denominator: list[np.ndarray] = []
        self._types: list[np.ndarray] = []
        self.discounts: list[float] = []
        for m in range(1, n + 1):
            history = self._codes[m - 1] // V
            size = len(self._codes[m - 2]) if m > 1 else 1
            count = self._counts[m - 1]
            self._denominator.append(np.bincount(history, weights=count, minlength=size))
            self._types.append(np.bincount(history, weights=(count > 0).astype(np.float64), minlength=size))
            if self.discount is not None:
                self.discounts.append(float(self.discount))
            else:
                n1, n2 = int(np.sum(count == 1)), int(np.sum(count == 2))
                estimate = n1 / (n1 + 2 * n2) if n1 + n2 > 0 and n1 > 0 else 0.5
                self.discounts.append(float(min(max(estimate, 0.05), 0.95)))
        return self

    # -- scoring ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """|V|: the words a caption can hold (seen words, ``</s>`` and ``<unk>``; not ``<s>``)."""
        self._check_fitted()
        return len(self.vocab) - 1

    def _check_fitted(self) -> None:
        if self.vocab is None:
            raise RuntimeError("KneserNeyLM is not fitted: call fit(captions) first")

    def _token_probs(self, ids: np.ndarray) -> np.ndarray:
        """P(ids[j] | the order-1 ids before j) for every flat position ``j`` (meaningful where at
        least ``order - 1`` ids precede ``j`` in the same padded caption)."""
        index = self._gram_index(ids)
        p = np.full(len(ids), 1.0 / self.vocab_size)
        for m in range(1, self.order + 1):
            history = np.full(len(ids), -1, dtype=np.int64)
            if m == 1:
                history[:] = 0
            else:
                history[1:] = index[m - 1][:-1]
            seen = history >= 0
            safe = np.where(seen, history, 0)
            denominator = self._denominator[m - 1][safe]
            seen &= denominator > 0
            row = index[m]
            count = np.where(row >= 0, self._counts[m - 1][np.maximum(row, 0)], 0.0)
            D = self.discounts[m - 1]
            denominator = np.where(seen, denominator, 1.0)
            interpolated = (np.maximum(count - D, 0.0) + D * self._types[m - 1][safe] * p) / denominator
            p = np.where(seen, interpolated, p)
        return p

    def prob(self, word: str, history: Sequence[str] = ()) -> float:
        """P(``word`` | ``history``), both as tokens (``<s>``/``</s>``/``<unk>`` allowed; an unseen
        word is ``<unk>``); only the last ``order - 1`` history tokens matter, and a shorter history
        is padded with ``<s>``."""
        self._check_fitted()
        pad = self.order - 1
        history = [BOS] * pad + list(history)
        tokens = (history[len(history) - pad :] if pad else []) + [word]
        ids = np.asarray([self.vocab.get(t, self.vocab[UNK]) for t in tokens], dtype=np.int64)
        return float(self._token_probs(ids)[-1])

    def token_log_probs(self, captions: Sequence[str]) -> list[np.ndarray]:
        """Per caption, the natural-log probability of each scored token (its words, then ``</s>``)."""
        self._check_fitted()
        if not len(captions):
            return []
        ids, starts, _ = self._encode(captions)
        logp = np.log(self._token_probs(ids))
        ends = np.append(starts[1:] - (self.order - 1), len(ids))
        return [logp[s:e] for s, e in zip(starts, ends)]

    def log_probs(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(total log-probability, number of scored tokens)`` per caption, vectorised."""
        self._check_fitted()
        if not len(captions):
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        ids, starts, _ = self._encode(captions)
        logp = _log(self._token_probs(ids))
        ends = np.append(starts[1:] - (self.order - 1), len(ids))
        # Each caption summed on its own, token after token (a vectorised sum would associate a
        # caption's terms by its neighbours' lengths), so that a caption's score does not depend on
        # the captions scored with it, to the last bit.
        lengths = ends - starts
        total = np.zeros(len(starts))
        for t in range(int(lengths.max())):
            live = np.flatnonzero(lengths > t)
            total[live] += logp[starts[live] + t]
        return total, lengths

    def log_prob(self, caption: str) -> float:
        """Total natural-log probability of ``caption`` (its words and ``</s>``)."""
        return float(self.log_probs([caption])[0][0])

    def mean_log_prob(self, caption: str) -> float:
        """Mean log-probability per scored token of ``caption``."""
        return float(self.score([caption])[0])

    def score(self, captions: Sequence[str]) -> np.ndarray:
        """Mean log-probability per scored token of each caption (higher = more plausible)."""
        total, length = self.log_probs(list(captions))
        return total / np.maximum(length, 1)

    def perplexity(self, captions: Sequence[str]) -> float:
        """exp of minus the mean log-probability per token over all of ``captions``."""
        total, length = self.log_probs(list(captions))
        return float(math.exp(-total.sum() / max(int(length.sum()), 1)))


# ---------------------------------------------------------------------------------------------
# transformers scorers


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class CausalLMScorer:
    """Mean token log-probability of each caption under a ``transformers`` causal LM (no gradient,
    batched, right-padded).

    Every token the tokenizer produces is scored given the ones before it; when the tokenizer adds
    no begin token of its own, the model's ``bos_token_id`` (else ``eos_token_id``, as GPT-2 uses
    it) is put in front so that the first word is scored too (``add_bos=None``: decide from the
    tokenizer's output; ``True``/``False``: force). An end token the tokenizer appends is scored.

    Args:
        model: a ``*ForCausalLM`` model.
        tokenizer: its tokenizer.
        batch_size: captions per forward.
        prefix: text put before each caption and not scored (e.g. "A photo of"); "" for none.
    """

    def __init__(self, model, tokenizer, batch_size: int = 32, add_bos: bool | None = None, prefix: str = ""):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.add_bos = add_bos
        self.prefix = prefix

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None, torch_dtype=None, **kwargs) -> "CausalLMScorer":
        """Load a causal LM and its tokenizer (``AutoModelForCausalLM`` / ``AutoTokenizer``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype) if torch_dtype else AutoModelForCausalLM.from_pretrained(name_or_path)
        if device:
            model = model.to(device)
        return cls(model, tokenizer, **kwargs)

    def _start_id(self) -> int | None:
        config = self.model.config
        for value in (getattr(self.tokenizer, "bos_token_id", None), getattr(config, "bos_token_id", None),
                      getattr(self.tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
            if isinstance(value, int):
                return value
        return None

    def _ids(self, caption: str) -> tuple[list[int], int]:
        """Token ids of prefix + caption and how many leading ids are not scored."""
        tok = self.tokenizer
        if self.prefix:
            prefix_ids = tok(self.prefix)["input_ids"]
            full = tok(f"{self.prefix} {caption}")["input_ids"]
            # tokenizers that append an end token put it after the caption only
            n_prefix = len(prefix_ids) - (1 if tok.eos_token_id is not None and prefix_ids[-1:] == [tok.eos_token_id] else 0)
        else:
            full = tok(caption)["input_ids"]
            n_prefix = 0
        start = self._start_id()
        add = self.add_bos
        if add is None:
            add = start is not None and (not full or full[0] != start)
        if add and start is not None:
            full = [start, *full]
            n_prefix += 1
        return full, max(n_prefix, 1)

    def score(self, captions: Sequence[str]) -> np.ndarray:
        import torch

        captions = list(captions)
        out = np.zeros(len(captions), dtype=np.float64)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        pad = pad if isinstance(pad, int) else 0
        for batch in _batches(len(captions), self.batch_size):
            encoded = [self._ids(c) for c in captions[batch]]
            width = max(len(ids) for ids, _ in encoded)
            input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            attention = torch.zeros((len(encoded), width), dtype=torch.long)
            scored = torch.zeros((len(encoded), width), dtype=torch.bool)
            for r, (ids, skip) in enumerate(encoded):
                input_ids[r, : len(ids)] = torch.tensor(ids)
                attention[r, : len(ids)] = 1
                scored[r, skip : len(ids)] = True
            with torch.no_grad():
                logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = input_ids[:, 1:].to(device)
            token = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            mask = scored[:, 1:].to(device)
            total = (token * mask).sum(-1)
            out[batch] = (total / mask.sum(-1).clamp(min=1)).cpu().numpy()
        return out


_ACCEPTABLE = ("acceptable",)


class SequenceClassifierScorer:
    """Probability of the "acceptable" label of a CoLA-style grammaticality classifier (any
    ``*ForSequenceClassification`` model), batched, no gradient.

    ``label`` names the label to read: a label name from ``model.config.id2label`` (compared
    case-insensitively) or its integer id; by default the label named ``acceptable``. Classifiers
    published with generic names (``LABEL_0`` / ``LABEL_1``) need ``label`` spelled out (for CoLA
    fine-tunes ``LABEL_1`` is usually acceptable: check the model card); otherwise construction
    raises ``ValueError`` listing the labels.
    """

    def __init__(self, model, tokenizer, label: str | int | None = None, batch_size: int = 32, max_length: int = 128):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.label_id = self.find_label(model.config, label)

    @staticmethod
    def find_label(config, label: str | int | None = None) -> int:
        """The id of ``label`` (a name or id; ``None``: "acceptable") in ``config.id2label``."""
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        listing = ", ".join(f"{k}: {v!r}" for k, v in sorted(id2label.items())) or "none"
        if isinstance(label, int) and not isinstance(label, bool):
            if label in id2label:
                return label
            raise ValueError(f"label id {label} is not in the classifier's id2label ({listing})")
        wanted = (label,) if label is not None else _ACCEPTABLE
        for name in wanted:
            matches = [k for k, v in id2label.items() if v.strip().lower() == str(name).strip().lower()]
            if len(matches) == 1:
                return matches[0]
        raise ValueError(
            f"cannot find the label {wanted[0]!r} in the classifier's id2label ({listing}); pass label= "
            "with the name or id of its 'acceptable' (grammatical) class, as its model card gives it"
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None, **kwargs) -> "SequenceClassifierScorer":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(name_or_path)
        if device:
            model = model.to(device)
        return cls(model, AutoTokenizer.from_pretrained(name_or_path), **kwargs)

    def score(self, captions: Sequence[str]) -> np.ndarray:
        import torch

        captions = list(captions)
        out = np.zeros(len(captions), dtype=np.float64)
        device = next(self.model.parameters()).device
        for batch in _batches(len(captions), self.batch_size):
            encoded = self.tokenizer(captions[batch], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            encoded = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.no_grad():
                logits = self.model(**encoded).logits.float()
            out[batch] = torch.softmax(logits, dim=-1)[:, self.label_id].cpu().numpy()
        return out


# ---------------------------------------------------------------------------------------------
# Gaps, filter, refinement


def score_gaps(scorer: PlausibilityScorer, true_captions: Sequence[str], negatives: Sequence[str]) -> np.ndarray:
    """``score(true) - score(negative)`` per pair; each distinct caption is scored once. Positive:
    the blind scorer prefers the true caption (it can spot the negative)."""
    if len(true_captions) != len(negatives):
        raise ValueError(f"{len(true_captions)} true captions but {len(negatives)} negatives")
    distinct = list(dict.fromkeys([*true_captions, *negatives]))
    scores = dict(zip(distinct, np.asarray(scorer.score(distinct), dtype=np.float64)))
    return np.asarray([scores[t] - scores[n] for t, n in zip(true_captions, negatives)], dtype=np.float64)


def cross_fit_gaps(
    true_captions: Sequence[str],
    negatives: Sequence[str],
    groups: Sequence,
    num_folds: int = 5,
    seed: int = 0,
    order: int = 2,
    discount: float | None = None,
    extra_captions: dict | None = None,
) -> np.ndarray:
    """:func:`score_gaps` of a :class:`KneserNeyLM` fitted on the dataset's own true captions,
    cross-fitted so that no pair is scored by a model that saw its true caption.

    An LM fitted on the very captions it scores prefers them by memory (on 1,000 COCO captions a
    bigram LM fitted on them prefers the true caption over SugarCrepe's negatives 90-99% of the
    time, against 54-68% held out), and balancing on such gaps keeps few pairs and the wrong ones.
    So the groups (``groups[i]``: the image of pair ``i``; all captions of an image go together,
    since they describe one scene) are dealt into ``num_folds`` folds by a seeded permutation of
    the sorted distinct groups, and the pairs of each fold are scored by an LM fitted on the
    distinct true captions of the other folds (plus ``extra_captions[group]``, e.g. the other
    captions of each image, of those folds).
    """
    n = len(true_captions)
    if len(negatives) != n or len(groups) != n:
        raise ValueError(f"{n} true captions, {len(negatives)} negatives and {len(groups)} groups: one each per pair")
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds!r}")
    distinct = sorted(set(groups), key=repr)  # the items of CrossFitNgram, in this order
    captions_of: dict = {group: {} for group in distinct}
    for caption, group in zip(true_captions, groups):
        captions_of[group][caption] = None
    for group, captions in (extra_captions or {}).items():
        if group in captions_of:
            captions_of[group].update(dict.fromkeys(captions))
    ngram = CrossFitNgram(order=order, num_folds=num_folds, seed=seed, discount=discount).fit([list(captions_of[g]) for g in distinct])
    item = {group: i for i, group in enumerate(distinct)}
    return ngram.gaps(true_captions, negatives, [item[g] for g in groups])


class CrossFitNgram:
    """Kneser-Ney n-gram LMs fitted on a dataset's own captions, cross-fitted over folds of its items.

    Item ``i`` is in fold ``permutation[i] % num_folds`` (``numpy.random.default_rng(seed)``
    permutation of the item indices); its captions are scored by the LM fitted on the distinct
    captions of every item of the other folds. The folds depend on the number of items and the seed
    only, so every process, a resumed run and a run with another batch size score alike.
    ``num_folds=1`` fits one LM on every caption (it then prefers the true captions by memory:
    use it only to see that effect).

    :meth:`score_halves` scores with two more LMs per fold, each fitted on one half of the other
    folds' items (item ``i`` in half ``permutation[i] // num_folds % 2``): their agreement is the
    reliability that :func:`reliability_center` needs.
    """

    def __init__(self, order: int = 2, num_folds: int = 5, seed: int = 0, discount: float | None = None):
        if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 1:
            raise ValueError(f"num_folds must be a positive integer, got {num_folds!r}")
        self.order, self.num_folds, self.seed, self.discount = order, num_folds, seed, discount
        self.folds: np.ndarray | None = None
        self.halves: np.ndarray | None = None
        self.models: list[KneserNeyLM | None] = []
        self._captions: Sequence[Sequence[str]] = ()
        self._half_models: dict[tuple[int, int], KneserNeyLM | None] = {}

    def fit(self, captions_per_item: Sequence[Sequence[str]]) -> "CrossFitNgram":
        n = len(captions_per_item)
        if n < (2 if self.num_folds > 1 else 1):
            raise ValueError(f"cross-fitting the n-gram LM needs at least 2 items, got {n}")
        permutation = np.random.default_rng(self.seed).permutation(n)
        self.folds, self.halves = permutation % self.num_folds, permutation // self.num_folds % 2
        self._captions, self._half_models = captions_per_item, {}
        self.models = []
        for f in range(self.num_folds):
            if self.num_folds > 1 and not np.any(self.folds == f):
                self.models.append(None)  # an empty fold scores nothing
                continue
            self.models.append(self._fit(self.folds != f if self.num_folds > 1 else np.ones(n, dtype=bool)))
        return self

    def _fit(self, train: np.ndarray) -> KneserNeyLM | None:
        captions = dict.fromkeys(c for i in np.flatnonzero(train) for c in self._captions[i])
        return KneserNeyLM(order=self.order, discount=self.discount).fit(list(captions)) if captions else None

    def _score_with(self, model_of, captions: Sequence[str], items: Sequence[int]) -> np.ndarray:
        if self.folds is None:
            raise RuntimeError("CrossFitNgram is not fitted: call fit(captions_per_item) first")
        folds = self.folds[np.asarray(items, dtype=np.int64)] if len(items) else np.zeros(0, dtype=np.int64)
        out = np.full(len(captions), np.nan)
        for f in np.unique(folds):
            rows = np.flatnonzero(folds == f)
            model = model_of(int(f))
            if model is None:
                raise ValueError(f"fold {f} has no training captions: give the items captions")
            out[rows] = model.score([captions[r] for r in rows])
        return out

    def score(self, captions: Sequence[str], items: Sequence[int]) -> np.ndarray:
        """Mean log-probability per token of ``captions[k]`` under the LM of item ``items[k]``'s fold."""
        return self._score_with(lambda f: self.models[f], captions, items)

    def score_halves(self, captions: Sequence[str], items: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score` under the two half-data LMs of each fold (fitted on first use): no caption
        is scored by an LM that saw it, and the two LMs of a fold share no item."""
        if self.num_folds < 2:
            raise ValueError("score_halves needs num_folds >= 2: with one fold every LM saw every caption")

        def model_of(half):
            def get(f):
                if (f, half) not in self._half_models:
                    self._half_models[f, half] = self._fit((self.folds != f) & (self.halves == half))
                return self._half_models[f, half]
            return get

        return self._score_with(model_of(0), captions, items), self._score_with(model_of(1), captions, items)

    def gaps(self, true_captions: Sequence[str], negatives: Sequence[str], items: Sequence[int]) -> np.ndarray:
        """``score(true) - score(negative)`` per pair, pair ``k`` belonging to item ``items[k]``."""
        return self.score(true_captions, items) - self.score(negatives, items)

    def half_gaps(self, true_captions: Sequence[str], negatives: Sequence[str], items: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`gaps` under each of the two half-data LMs (:meth:`score_halves`)."""
        (true_a, true_b), (negative_a, negative_b) = self.score_halves(true_captions, items), self.score_halves(negatives, items)
        return true_a - negative_a, true_b - negative_b


def _as_gap_list(gaps) -> list[np.ndarray]:
    if isinstance(gaps, np.ndarray) and gaps.ndim == 1:
        gaps = [gaps]
    gaps = [np.asarray(g, dtype=np.float64) for g in gaps]
    if not gaps:
        raise ValueError("no gaps given: pass one array per blind scorer")
    if any(g.ndim != 1 or len(g) != len(gaps[0]) for g in gaps):
        raise ValueError(f"every gap array must be 1-D and of one length; got shapes {[g.shape for g in gaps]}")
    if any(not np.all(np.isfinite(g)) for g in gaps):
        raise ValueError("gaps must be finite")
    return gaps


def _as_kinds(kinds, n: int) -> np.ndarray:
    if kinds is None:
        return np.full(n, None, dtype=object)
    kinds = np.asarray(list(kinds), dtype=object)
    if len(kinds) != n:
        raise ValueError(f"{len(kinds)} kinds for {n} gaps")
    return kinds


def preference_rate(gaps, kinds: Sequence[str] | None = None) -> dict:
    """Per kind (``None``: one group, key ``None``), the share of pairs whose gap is positive (the
    blind scorer prefers the true caption), ties counting one half. ``gaps``: one array."""
    gap = _as_gap_list(gaps)
    if len(gap) != 1:
        raise ValueError("preference_rate takes the gaps of one scorer")
    gap = gap[0]
    kinds = _as_kinds(kinds, len(gap))
    out = {}
    for kind in dict.fromkeys(kinds.tolist()):
        g = gap[kinds == kind]
        out[kind] = float((np.sum(g > 0) + 0.5 * np.sum(g == 0)) / len(g))
    return out


def filter_by_gap(gaps, threshold) -> np.ndarray:
    """Indices (ascending) of the pairs to keep: those whose gap is at most ``threshold`` for every
    scorer (``gaps``: one array, or one per scorer; ``threshold``: one number, or one per scorer).
    A negative the blind scorer finds far less plausible than the true caption is dropped."""
    gaps = _as_gap_list(gaps)
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(gaps),))
    keep = np.ones(len(gaps[0]), dtype=bool)
    for g, t in zip(gaps, thresholds):
        keep &= g <= t
    return np.flatnonzero(keep)


def reliability_center(gaps, half_a, half_b, min_pairs: int = 30) -> tuple[float, float | None]:
    """The centre at which to balance one kind's gaps so that the *true* gap, not only the noisy
    estimate, is balanced; and the estimate's reliability. ``(0.0, None)`` when it cannot be
    estimated (fewer than ``min_pairs`` pairs, or halves that do not agree at all).

    A blind scorer fitted on finite data measures each pair's gap ``g = G + e``: the gap ``G`` under
    the language the captions come from, plus fitting noise ``e``. Balancing ``g`` around zero keeps
    pairs whose ``g`` splits evenly, but their ``G`` does not: the best linear estimate of ``G``
    given ``g`` is ``mu + rho (g - mu)`` (``mu`` the kind's mean gap, ``rho = var(G) / var(g)``
    the reliability), so the kept pairs average ``mu (1 - rho) > 0`` and a blind model fitted on
    other captions still prefers the true caption (measured with a held-out bigram LM on SugarCrepe's
    COCO captions: 62-72% after refinement, reliability about 0.6; ``benchmarks/bench_blind_negatives.py``).
    Balancing that estimate around zero instead means balancing ``g`` around

        ``center = mu (1 - 1 / rho)``  (below zero when ``mu > 0``).

    ``rho`` comes from two scorers fitted on disjoint halves of the scorer's data (``half_a``,
    ``half_b``: their gaps on the same pairs, e.g. :meth:`CrossFitNgram.half_gaps`):
    their correlation ``r`` is the reliability of a half-data scorer, and the Spearman-Brown formula
    ``rho = 2 r / (1 + r)`` that of one fitted on both halves (noise variance halves with twice the
    data). ``mu`` is the mean of ``gaps``.
    """
    gaps, half_a, half_b = (np.asarray(x, dtype=np.float64) for x in (gaps, half_a, half_b))
    if not (gaps.shape == half_a.shape == half_b.shape) or gaps.ndim != 1:
        raise ValueError(f"gaps and both halves must be 1-D arrays of one length; got {gaps.shape}, {half_a.shape}, {half_b.shape}")
    ok = np.isfinite(gaps) & np.isfinite(half_a) & np.isfinite(half_b)
    if ok.sum() < max(min_pairs, 3) or np.std(half_a[ok]) == 0 or np.std(half_b[ok]) == 0:
        return 0.0, None
    r = float(np.corrcoef(half_a[ok], half_b[ok])[0, 1])
    if not r > 0:
        return 0.0, None
    rho = 2.0 * r / (1.0 + r)
    return float(np.mean(gaps[ok]) * (1.0 - 1.0 / rho)), rho


def _magnitude_bins(gap: np.ndarray, num_bins: int, bin_width: float | None) -> np.ndarray:
    """Signed bin of each gap: 0 for a zero gap, else sign * (1 + magnitude bin)."""
    magnitude = np.abs(gap)
    if bin_width is not None:
        bins = np.floor(magnitude / bin_width).astype(np.int64)
    else:
        nonzero = magnitude[magnitude > 0]
        if len(nonzero) == 0:
            return np.zeros(len(gap), dtype=np.int64)
        edges = np.quantile(nonzero, np.linspace(0.0, 1.0, num_bins + 1)[1:-1])
        bins = np.searchsorted(edges, magnitude, side="right")
    return np.sign(gap).astype(np.int64) * (bins + 1)


def _center_of(center, kind, num_scorers: int) -> np.ndarray:
    """The per-scorer centre of ``kind`` from :func:`adversarial_refine`'s ``center``."""
    if isinstance(center, Mapping):
        center = center.get(kind)
    value = np.broadcast_to(np.asarray(0.0 if center is None else center, dtype=np.float64), (num_scorers,))
    if not np.all(np.isfinite(value)):
        raise ValueError(f"center must be finite, got {center!r} for kind {kind!r}")
    return value


def adversarial_refine(
    gaps,
    kinds: Sequence[str] | None = None,
    num_bins: int = 10,
    seed: int = 0,
    bin_width: float | None = None,
    center=None,
) -> np.ndarray:
    """SugarCrepe's adversarial refinement, per edit kind, for one or more blind scorers: indices
    (ascending) of the pairs to keep so that, within each kind, every scorer prefers the true
    caption on as many kept pairs as it prefers the negative.

    Each pair is put in a cell by the signs and magnitudes of its gaps (one per scorer: ``gaps`` is
    one array or a list of them, ``score(true) - score(negative)``); the cell whose signs are all
    flipped and magnitudes the same is its mirror. From a cell and its mirror the same number is
    kept: all of the smaller, a random subset of the larger. A zero gap has no sign and is its own
    mirror on that scorer, so pairs tied on every scorer are all kept, and pairs tied on one scorer
    are balanced on the others (SugarCrepe's handling). For every scorer the kept pairs then split
    evenly between positive and negative gaps, magnitude bin by magnitude bin, so a blind model
    thresholding any one score is at chance on what is kept. With two scorers the balance holds for
    both at once (cells are joint), at a lower share kept.

    Magnitudes are binned per kind and scorer into ``num_bins`` quantile bins of the nonzero
    ``|gap|`` (scale-free: log-probabilities and probabilities alike), or, with ``bin_width``, into
    bins of that width (SugarCrepe's: ``bin_width=1/50`` for scores in [0, 1]). More bins match
    magnitudes more closely and keep fewer pairs.

    Args:
        gaps: one array of gaps, or a list with one per blind scorer (same length).
        kinds: the edit kind of each pair (balanced separately); ``None``: one group.
        num_bins: magnitude bins per scorer (ignored with ``bin_width``).
        seed: seed of the random subsets (``numpy.random.default_rng``); same inputs and seed, same
            output.
        bin_width: fixed magnitude bin width instead of quantile bins.
        center: balance ``gap - center`` instead of ``gap`` (SugarCrepe's: 0): one number, one per
            scorer, or ``{kind: number or one per scorer}`` (kinds not named: 0). See
            :func:`reliability_center` for the centre that leaves a held-out blind model at chance.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    if bin_width is not None and not bin_width > 0:
        raise ValueError(f"bin_width must be positive, got {bin_width!r}")
    gaps = _as_gap_list(gaps)
    n = len(gaps[0])
    kinds = _as_kinds(kinds, n)
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for kind in sorted(dict.fromkeys(kinds.tolist()), key=repr):
        members = np.flatnonzero(kinds == kind)
        shift = _center_of(center, kind, len(gaps))
        cells = np.stack([_magnitude_bins(g[members] - c, num_bins, bin_width) for g, c in zip(gaps, shift)], axis=1)
        groups: dict[tuple, list[int]] = {}
        for row, cell in zip(members.tolist(), map(tuple, cells.tolist())):
            groups.setdefault(cell, []).append(row)
        for cell in sorted(groups):
            mirror = tuple(-c for c in cell)
            if cell == mirror:
                keep.append(np.asarray(groups[cell], dtype=np.int64))
                continue
            if cell < mirror or mirror not in groups:
                continue  # each pair of cells once (from its larger key); an unmatched cell keeps nothing
            a, b = np.asarray(groups[cell], dtype=np.int64), np.asarray(groups[mirror], dtype=np.int64)
            size = min(len(a), len(b))
            for side in (a, b):
                keep.append(side if len(side) == size else np.sort(rng.choice(side, size=size, replace=False)))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
