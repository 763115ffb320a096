"""The common form of every compositional benchmark, and its evaluation with any scorer.

A benchmark is a list of :class:`MatchingExample`: a few images x a few captions and which pairs
match. Images are *references* (a row number, a file path and crop box, ...) that the benchmark's
``load_image`` turns into pictures, so that each distinct image is loaded and encoded once per
benchmark even when many examples share it (SugarCrepe reuses COCO images across its subsets).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
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

    def __len__(self) -> int:
        return len(self.examples)

    def distinct_images(self) -> list[ImageRef]:
        return list(dict.fromkeys(ref for example in self.examples for ref in example.images))

    def distinct_texts(self) -> list[str]:
        return list(dict.fromkeys(text for example in self.examples for text in example.texts))


class LazyImages(Sequence):
    """Images loaded on access, so that a scorer's batching loads one batch at a time."""

    def __init__(self, refs: Sequence[ImageRef], load_image: Callable[[ImageRef], Image.Image], load_stored: Callable[[ImageRef], Any] | None = None):
        self.refs, self.load_image, self.load_stored = refs, load_image, load_stored

    def stored(self, index: int) -> Any:
        """Image ``index`` as stored (:attr:`MatchingBenchmark.load_stored`), or decoded when there is no such loader."""
        return self.load_stored(self.refs[index]) if self.load_stored is not None else self[index]

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.load_image(ref) for ref in self.refs[index]]
        return self.load_image(self.refs[index])


def _same_shape_groups(examples: Sequence[MatchingExample]) -> Iterator[list[int]]:
    """Example indices grouped by (number of images, number of texts), to score each group at once."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        groups[(len(example.images), len(example.texts))].append(i)
    yield from groups.values()


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
    grids: list[np.ndarray] = [None] * len(benchmark.examples)  # type: ignore[list-item]
    for indices, scores in _scores_by_shape(scorer, benchmark):
        for i, grid in zip(indices, scores):
            grids[i] = grid
    return grids


def _scores_by_shape(scorer, benchmark: MatchingBenchmark) -> list[tuple[list[int], np.ndarray]]:
    """:func:`score_benchmark`'s grids stacked per example shape: ``(example indices, scores [N, I, T])``
    for each (number of images, number of texts), as the metrics take them."""
    examples = benchmark.examples
    groups = list(_same_shape_groups(examples))
    grids: list[np.ndarray] = []
    if hasattr(scorer, "score_groups"):  # a pair scorer that batches many small examples together
        for start in range(0, len(examples), GROUPS_PER_CALL):
            chunk = examples[start : start + GROUPS_PER_CALL]
            pairs = [([benchmark.load_image(ref) for ref in example.images], list(example.texts)) for example in chunk]
            grids += [np.asarray(grid, dtype=np.float64) for grid in scorer.score_groups(pairs)]
    elif hasattr(scorer, "encode_images"):
        return _embedding_scores_by_shape(scorer, benchmark, groups)
    elif callable(scorer):
        for example in examples:
            grid = np.asarray(scorer([benchmark.load_image(ref) for ref in example.images], list(example.texts)), dtype=np.float64)
            if grid.shape != (len(example.images), len(example.texts)):
                raise ValueError(f"example {example.id!r}: the scorer returned shape {grid.shape}, expected {(len(example.images), len(example.texts))}")
            grids.append(grid)
    else:
        raise TypeError(f"scorer must have encode_images/encode_texts/score_embeddings or be callable, got {type(scorer).__name__}")
    return [(indices, np.stack([grids[i] for i in indices])) for indices in groups]


def _embedding_scores_by_shape(scorer, benchmark: MatchingBenchmark, groups: list[list[int]]) -> list[tuple[list[int], np.ndarray]]:
    """Each distinct image and text encoded once, then the grids of each shape gathered from the
    embeddings with index arrays, not a loop over examples: a repeated evaluation of a cheap model
    spends as long in per-example Python as in its forward."""
    examples = benchmark.examples
    image_refs, texts = benchmark.distinct_images(), benchmark.distinct_texts()
    image_row = {ref: i for i, ref in enumerate(image_refs)}
    text_row = {text: i for i, text in enumerate(texts)}
    image_embeds = scorer.encode_images(LazyImages(image_refs, benchmark.load_image, benchmark.load_stored))
    text_embeds = scorer.encode_texts(texts)
    out = []
    for indices in groups:
        num_images, num_texts = len(examples[indices[0]].images), len(examples[indices[0]].texts)
        rows = np.fromiter((image_row[ref] for i in indices for ref in examples[i].images), np.int64, len(indices) * num_images)
        cols = np.fromiter((text_row[text] for i in indices for text in examples[i].texts), np.int64, len(indices) * num_texts)
        rows = torch.from_numpy(rows.reshape(-1, num_images)).to(image_embeds.device)
        cols = torch.from_numpy(cols.reshape(-1, num_texts)).to(text_embeds.device)
        out.append((indices, scorer.score_embeddings(image_embeds[rows], text_embeds[cols]).float().cpu().numpy()))
    return out


def evaluate_benchmark(scorer, benchmark: MatchingBenchmark) -> dict[str, dict[str, float]]:
    """Text / image / group scores of ``scorer`` on ``benchmark``: overall (micro), per subset and
    macro over subsets. See :mod:`hf_counterfactual.metrics` for the definitions (ties fail)."""
    if len(benchmark) == 0:
        raise ValueError(f"benchmark {benchmark.name!r} has no examples")
    examples = benchmark.examples
    outcomes = {name: np.empty(len(examples)) for name in ("text", "image", "group")}
    outcomes["ties"] = np.zeros(len(examples), dtype=bool)
    for indices, scores in _scores_by_shape(scorer, benchmark):
        truths = [examples[i].truth for i in indices]
        # Most benchmarks give every example the same truth (Winoground's diagonal): one mask for all.
        shared = all(truth == truths[0] for truth in truths)
        result = match_outcomes(scores, np.asarray(truths[0] if shared else truths, dtype=bool))
        for name, values in result.items():
            outcomes[name][indices] = values
    subsets = [example.subset for example in examples]
    return summarize(outcomes, subsets if any(subsets) else None)


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
