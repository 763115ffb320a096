"""The common form of every compositional benchmark, and its evaluation with any scorer.

A benchmark is a list of :class:`MatchingExample`: a few images x a few captions and which pairs
match. Images are *references* (a row number, a file path and crop box, ...) that the benchmark's
``load_image`` turns into pictures, so that each distinct image is loaded and encoded once per
benchmark even when many examples share it (SugarCrepe reuses COCO images across its subsets).
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..metrics import match_outcomes, summarize

ImageRef = Hashable


@dataclass(frozen=True)
class MatchingExample:
    """``images`` x ``texts``; ``truth[i][t]`` says whether image ``i`` matches text ``t``."""

    id: str
    images: tuple[ImageRef, ...]
    texts: tuple[str, ...]
    truth: tuple[tuple[bool, ...], ...]
    subset: str = ""

    def __post_init__(self) -> None:
        if len(self.truth) != len(self.images) or any(len(row) != len(self.texts) for row in self.truth):
            raise ValueError(
                f"example {self.id!r}: truth must be {len(self.images)} x {len(self.texts)} (images x texts)"
            )


@dataclass
class MatchingBenchmark:
    """A named list of examples and the function that loads an image from its reference."""

    name: str
    examples: list[MatchingExample]
    load_image: Callable[[ImageRef], Image.Image]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The image as stored (a PIL image, an undecoded ``{"bytes", "path"}`` dict or a path), for a fast
    #: image path that decodes JPEGs at a reduced scale itself; ``None``: only ``load_image``.
    load_stored: Callable[[ImageRef], Any] | None = None
    #: An identity of the image's stored content that changes whenever the content does (a ``datasets``
    #: fingerprint with the row and field: :func:`dataset_image_key`), by which a scorer's pixel cache
    #: finds it without reading and digesting the stored bytes; ``None`` (or a ``None`` identity):
    #: keyed by the stored bytes.
    image_key: Callable[[ImageRef], Hashable | None] | None = None
    _plan: _Plan | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.examples)

    def distinct_images(self) -> list[ImageRef]:
        """Every image reference once, in order of first use."""
        return list(self._evaluation_plan().image_refs)

    def distinct_texts(self) -> list[str]:
        """Every caption once, in order of first use."""
        return list(self._evaluation_plan().texts)

    def _evaluation_plan(self) -> _Plan:
        """The :class:`_Plan` of the current examples: made once, and again only when an example
        is added, removed or replaced (they are compared by identity: a frozen example is its content)."""
        plan = self._plan
        if plan is None or len(plan.examples) != len(self.examples) or any(map(operator.is_not, plan.examples, self.examples)):
            plan = self._plan = _Plan.of(self.examples)
        return plan


@dataclass(frozen=True)
class _Plan:
    """What evaluating a benchmark needs of its examples, apart from any model: the distinct images
    and texts, and per example shape the examples' indices, their rows among the distinct images and
    texts, and their truth (one mask when all share it). Kept on the benchmark, so that a repeated
    evaluation (each eval step of a training run) does not redo this per-example Python: ~5 ms for
    the 1,600 procedural test groups, a few percent of a tiny model's forward."""

    examples: tuple[MatchingExample, ...]
    image_refs: list[ImageRef]
    texts: list[str]
    #: (example indices, image rows ``[N, I]``, text rows ``[N, T]``, truth ``[I, T]`` or ``[N, I, T]``) per shape.
    groups: list[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]]
    subsets: list[str] | None

    @classmethod
    def of(cls, examples: Sequence[MatchingExample]) -> _Plan:
        examples = tuple(examples)
        image_refs = list(dict.fromkeys(ref for example in examples for ref in example.images))
        texts = list(dict.fromkeys(text for example in examples for text in example.texts))
        image_row = {ref: i for i, ref in enumerate(image_refs)}
        text_row = {text: i for i, text in enumerate(texts)}
        shapes: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, example in enumerate(examples):
            shapes[(len(example.images), len(example.texts))].append(i)
        groups = []
        for (num_images, num_texts), indices in shapes.items():
            rows = np.fromiter((image_row[ref] for i in indices for ref in examples[i].images), np.int64, len(indices) * num_images)
            cols = np.fromiter((text_row[text] for i in indices for text in examples[i].texts), np.int64, len(indices) * num_texts)
            truths = [examples[i].truth for i in indices]
            # Most benchmarks give every example the same truth (Winoground's diagonal): one mask for all.
            shared = all(truth == truths[0] for truth in truths)
            truth = np.asarray(truths[0] if shared else truths, dtype=bool)
            groups.append((indices, rows.reshape(-1, num_images), cols.reshape(-1, num_texts), truth))
        subsets = [example.subset for example in examples]
        return cls(examples, image_refs, texts, groups, subsets if any(subsets) else None)


def dataset_image_key(rows) -> Callable[[ImageRef], Hashable] | None:
    """:attr:`MatchingBenchmark.image_key` for a benchmark whose image references index ``rows``: the
    Dataset's fingerprint with the reference, or ``None`` where that does not identify the content
    (not a ``datasets.Dataset``, or one with a format or transform, which may change what a row holds).

    A Dataset is immutable and every transform gives it a new fingerprint, so the pair names the
    stored image; a repeated evaluation finds its pixels without reading each stored image to digest
    it (39 us for an 89 KB JPEG, against 0.1 us)."""
    import datasets

    fingerprint = getattr(rows, "_fingerprint", None)
    if not isinstance(rows, datasets.Dataset) or fingerprint is None or rows.format.get("type") is not None:
        return None
    return lambda ref: ("datasets.Dataset", fingerprint, ref)


class LazyImages(Sequence):
    """Images loaded on access, so that a scorer's batching loads one batch at a time."""

    def __init__(
        self, refs: Sequence[ImageRef], load_image: Callable[[ImageRef], Image.Image], load_stored: Callable[[ImageRef], Any] | None = None,
        image_key: Callable[[ImageRef], Hashable | None] | None = None,
    ):  # fmt: skip
        self.refs, self.load_image, self.load_stored, self.image_key = refs, load_image, load_stored, image_key

    def stored(self, index: int) -> Any:
        """Image ``index`` as stored (:attr:`MatchingBenchmark.load_stored`), or decoded when there is no such loader."""
        return self.load_stored(self.refs[index]) if self.load_stored is not None else self[index]

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.load_image(ref) for ref in self.refs[index]]
        return self.load_image(self.refs[index])


GROUPS_PER_CALL = 16  # examples per score_groups call: enough pairs to fill a batch, few images in memory


def score_benchmark(scorer, benchmark: MatchingBenchmark) -> list[np.ndarray]:
    """The score grid ``[images, texts]`` of every example.

    ``scorer`` is either an embedding scorer (``encode_images``, ``encode_texts``,
    ``score_embeddings``, e.g. :class:`~hf_counterfactual.scoring.DualEncoderScorer`): each distinct image
    and text is encoded once; a pair scorer with ``score_groups([(images, texts), ...])`` (e.g.
    :class:`~hf_counterfactual.vlm_scoring.VLMScorer`), called with :data:`GROUPS_PER_CALL` examples
    at a time so that their pairs share batches; or any callable ``scorer(images, texts) ->
    [len(images), len(texts)]`` (your own function), called once per example.
    """
    plan = benchmark._evaluation_plan()
    grids: list[np.ndarray] = [None] * len(benchmark.examples)  # type: ignore[list-item]
    for (indices, *_), scores in zip(plan.groups, _scores_by_shape(scorer, benchmark, plan)):
        for i, grid in zip(indices, scores):
            grids[i] = grid
    return grids


def _scores_by_shape(scorer, benchmark: MatchingBenchmark, plan: _Plan) -> list[np.ndarray]:
    """:func:`score_benchmark`'s grids stacked per example shape, ``scores [N, I, T]`` for each group
    of ``plan`` (:meth:`MatchingBenchmark._evaluation_plan`) in its order, as the metrics take them."""
    examples = benchmark.examples
    grids: list[np.ndarray] = []
    if hasattr(scorer, "score_groups"):  # a pair scorer that batches many small examples together
        for start in range(0, len(examples), GROUPS_PER_CALL):
            chunk = examples[start : start + GROUPS_PER_CALL]
            pairs = [([benchmark.load_image(ref) for ref in example.images], list(example.texts)) for example in chunk]
            scored = list(scorer.score_groups(pairs))
            if len(scored) != len(chunk):
                raise ValueError(f"examples {chunk[0].id!r}..{chunk[-1].id!r}: the scorer returned {len(scored)} grids for {len(chunk)} examples")
            grids += [_checked_grid(example, grid) for example, grid in zip(chunk, scored)]
    elif hasattr(scorer, "encode_images"):
        return _embedding_scores_by_shape(scorer, benchmark, plan)
    elif callable(scorer):
        for example in examples:
            grids.append(_checked_grid(example, scorer([benchmark.load_image(ref) for ref in example.images], list(example.texts))))
    else:
        raise TypeError(f"scorer must have encode_images/encode_texts/score_embeddings or be callable, got {type(scorer).__name__}")
    return [np.stack([grids[i] for i in indices]) for indices, *_ in plan.groups]


def _checked_grid(example: MatchingExample, grid) -> np.ndarray:
    """``grid`` as float64, or a ValueError naming ``example`` when it is not ``[images, texts]``."""
    grid = np.asarray(grid, dtype=np.float64)
    if grid.shape != (len(example.images), len(example.texts)):
        raise ValueError(f"example {example.id!r}: the scorer returned shape {grid.shape}, expected {(len(example.images), len(example.texts))}")
    return grid


def _embedding_scores_by_shape(scorer, benchmark: MatchingBenchmark, plan: _Plan) -> list[np.ndarray]:
    """Each distinct image and text encoded once, then the grids of each shape gathered from the
    embeddings with the plan's index arrays."""
    image_embeds = scorer.encode_images(LazyImages(plan.image_refs, benchmark.load_image, benchmark.load_stored, benchmark.image_key))
    text_embeds = scorer.encode_texts(plan.texts)
    out = []
    for _, rows, cols, _ in plan.groups:
        rows, cols = torch.from_numpy(rows).to(image_embeds.device), torch.from_numpy(cols).to(text_embeds.device)
        out.append(scorer.score_embeddings(image_embeds[rows], text_embeds[cols]).float().cpu().numpy())
    return out


def evaluate_benchmark(scorer, benchmark: MatchingBenchmark) -> dict[str, dict[str, float]]:
    """Text / image / group scores of ``scorer`` on ``benchmark``: overall (micro), per subset and
    macro over subsets. See :mod:`hf_counterfactual.metrics` for the definitions (ties fail)."""
    if len(benchmark) == 0:
        raise ValueError(f"benchmark {benchmark.name!r} has no examples")
    outcomes = {name: np.empty(len(benchmark)) for name in ("text", "image", "group")}
    outcomes["ties"] = np.zeros(len(benchmark), dtype=bool)
    plan = benchmark._evaluation_plan()
    for (indices, _, _, truth), scores in zip(plan.groups, _scores_by_shape(scorer, benchmark, plan)):
        for name, values in match_outcomes(scores, truth).items():
            outcomes[name][indices] = values
    return summarize(outcomes, plan.subsets)


def format_results(results: Mapping[str, Mapping[str, float]], before: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """A plain-text table (scores in %) of :func:`evaluate_benchmark` results, optionally ``before -> after``."""
    columns = [c for c in ("text_score", "image_score", "group_score") if not np.isnan(results["all"][c])]
    header = f"{'subset':<24}{'n':>7}" + "".join(f"{c.split('_')[0]:>18}" for c in columns)
    lines = [header, "-" * len(header)]
    order = ["all", *(["macro"] if "macro" in results else []), *sorted(k for k in results if k not in ("all", "macro"))]
    for name in order:
        cells = []
        for c in columns:
            cell = f"{100 * results[name][c]:.1f}"
            if before is not None:
                cell = f"{100 * before[name][c]:.1f} -> {cell}"
            cells.append(f"{cell:>18}")
        count = f"{results[name]['count']}" + (" sub" if name == "macro" else "")
        lines.append(f"{name:<24}{count:>7}" + "".join(cells))
    return "\n".join(lines)
