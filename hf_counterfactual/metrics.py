"""Compositional-matching metrics as plain functions of score arrays (no model, no ``evaluate``).

Every benchmark is a set of examples, each a small grid of scores ``scores[i, c]`` of image ``i``
with caption ``c`` and a truth mask ``truth[i, c]`` saying which pairs match:

- Winoground: 2 images x 2 captions, the diagonal true.
- SugarCrepe, ARO relation/attribution: 1 image x 2 captions (true, false).
- ARO COCO-/Flickr30k-Order: 1 image x 5 captions (the original and 4 shuffles).

Per example:

- text  = every image scores each of its true captions above every false caption
          (Winoground's text score; accuracy for 1 x 2; Precision@1 for 1 x 5);
- image = every caption scores each of its true images above every false image
          (Winoground's image score; undefined, NaN, with a single image);
- group = text and image (NaN where image is undefined).

Ties count as failures: a score must be strictly greater. A model that scores everything equally
(a collapsed encoder) therefore gets 0, not 50% or 100%. ``ties`` flags examples where a tie
decided an outcome, so that it can be reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

OUTCOMES = ("text", "image", "group")


def match_outcomes(scores, truth) -> dict[str, np.ndarray]:
    """Per-example outcomes for a batch of same-shaped examples.

    Args:
        scores: ``[N, I, T]`` scores of image ``i`` with caption ``t`` in example ``n``.
        truth: ``[N, I, T]`` (or ``[I, T]``, shared) bool, which pairs match.

    Returns:
        ``{"text", "image", "group"}``: float arrays ``[N]`` of 1.0 / 0.0, NaN where undefined (an
        outcome is undefined when no image (caption) has both a true and a false partner);
        ``"ties"``: bool ``[N]``, a tie between a true and a false pair occurred.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 3:
        raise ValueError(f"scores must have shape [N, images, texts], got {list(s.shape)}")
    t = np.broadcast_to(np.asarray(truth, dtype=bool), s.shape)
    if np.isnan(s).any():
        bad = np.flatnonzero(np.isnan(s).any(axis=(1, 2)))
        raise ValueError(f"scores contain NaN at example(s) {bad[:10].tolist()}")

    def wins(axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Along `axis` (2: captions of each image; 1: images of each caption): the lowest true
        # score must beat the highest false one.
        lowest_true = np.where(t, s, np.inf).min(axis=axis)
        highest_false = np.where(~t, s, -np.inf).max(axis=axis)
        defined = t.any(axis=axis) & (~t).any(axis=axis)
        win = lowest_true > highest_false
        tie = defined & (lowest_true == highest_false)
        has = defined.any(axis=1)
        outcome = np.where(has, np.all(win | ~defined, axis=1), np.nan)
        return outcome.astype(np.float64), has, tie.any(axis=1)

    text, has_text, text_tie = wins(axis=2)
    image, has_image, image_tie = wins(axis=1)
    group = np.where(has_text & has_image, np.minimum(text, image), np.nan)
    return {"text": text, "image": image, "group": group, "ties": text_tie | image_tie}


def _winoground_grid(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 3 or s.shape[1:] != (2, 2):
        raise ValueError(f"scores must have shape [N, 2, 2], got {list(s.shape)}")
    return s


def winoground_scores(scores) -> dict[str, np.ndarray]:
    """Per-example Winoground outcomes (Thrush et al. 2022) as bools.

    Args:
        scores: ``[N, 2, 2]``, ``scores[n, i, c]`` = score of image ``i`` with caption ``c``;
            caption ``c`` is true of image ``c`` only.

    Returns:
        ``{"text", "image", "group"}`` bool ``[N]`` where
        text  = s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1),
        image = s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0),
        group = text and image.
    """
    outcome = match_outcomes(_winoground_grid(scores), np.eye(2, dtype=bool))
    return {name: outcome[name].astype(bool) for name in OUTCOMES}


def summarize(outcomes: Mapping[str, np.ndarray], subsets: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Means of the outcomes overall and per subset, with micro and macro averages.

    Args:
        outcomes: output of :func:`match_outcomes` (NaN entries are left out of every mean).
        subsets: the subset (tag, relation, SugarCrepe file) of each example.

    Returns:
        ``{"all": {...}, <subset>: {...}, ...}``, each with ``<outcome>_score`` (mean, NaN when
        undefined), ``count`` and ``ties``; ``"all"`` is the micro average (every example weighs
        the same) and, when there are subsets, ``"macro"`` averages the subsets' scores (every
        subset weighs the same).
    """
    n = len(outcomes["text"])
    if subsets is not None and len(subsets) != n:
        raise ValueError(f"got {len(subsets)} subset labels for {n} examples")

    def summary(mask: np.ndarray) -> dict[str, float]:
        row = {}
        for name in OUTCOMES:
            values = outcomes[name][mask]
            values = values[~np.isnan(values)]
            row[f"{name}_score"] = float(values.mean()) if len(values) else float("nan")
        row["count"] = int(mask.sum())
        row["ties"] = int(np.asarray(outcomes["ties"])[mask].sum())
        return row

    results = {"all": summary(np.ones(n, dtype=bool))}
    if subsets is not None:
        names = sorted(set(subsets))
        code = {subset: k for k, subset in enumerate(names)}
        codes = np.fromiter((code[subset] for subset in subsets), np.int64, n)  # integer masks: no object comparisons
        for k, subset in enumerate(names):
            results[subset] = summary(codes == k)
        per_subset = [results[s] for s in names]
        results["macro"] = {
            f"{name}_score": _nanmean([row[f"{name}_score"] for row in per_subset]) for name in OUTCOMES
        } | {"count": len(per_subset), "ties": sum(row["ties"] for row in per_subset)}
    return results


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def winoground_metrics(scores, tags: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Mean text / image / group score overall (``"all"``), per tag and macro over tags."""
    s = _winoground_grid(scores)
    if tags is not None and len(tags) != len(s):
        raise ValueError(f"got {len(tags)} tags for {len(s)} examples")
    return summarize(match_outcomes(s, np.eye(2, dtype=bool)), tags)
