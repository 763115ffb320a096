"""Filters that drop bad image edits (Sahin et al. 2023, generative negative mining):

- :class:`PixelChangeFilter`: the edit changed the pixels inside the mask and little outside it;
- :class:`ImageTextMatchFilter`: the edited image matches the edited caption (CLIP cosine above a
  threshold), and optionally matches it better than the original caption.

Each filter returns a :class:`FilterResult` whose ``score`` goes into the record's
``counterfactuals[i].score`` for audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["FilterResult", "ImageTextMatchFilter", "PixelChangeFilter", "pixel_change"]


@dataclass(frozen=True)
class FilterResult:
    passed: bool
    score: float
    reason: str

    def __bool__(self) -> bool:
        return self.passed


def _as_float_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def pixel_change(original: Image.Image, edited: Image.Image, mask) -> tuple[float, float]:
    """Mean absolute pixel change (0..1, averaged over RGB) ``(inside, outside)`` the mask.

    ``mask`` is a boolean ``[height, width]`` array (or a PIL mask, white = edited). ``outside`` is
    0.0 when the mask covers the whole image.

    Raises:
        ValueError: the images or the mask differ in size, or the mask is empty.
    """
    if original.size != edited.size:
        raise ValueError(f"original is {original.size[0]}x{original.size[1]}, edited is {edited.size[0]}x{edited.size[1]}")
    mask = np.asarray(mask.convert("L")) > 127 if isinstance(mask, Image.Image) else np.asarray(mask, dtype=bool)
    if mask.shape != (original.size[1], original.size[0]):
        raise ValueError(f"mask has shape {mask.shape}, expected (height, width) = {(original.size[1], original.size[0])}")
    if not mask.any():
        raise ValueError("the mask is empty: no pixel was meant to change")
    change = np.abs(_as_float_rgb(original) - _as_float_rgb(edited)).mean(axis=-1)
    inside = float(change[mask].mean())
    outside = float(change[~mask].mean()) if (~mask).any() else 0.0
    return inside, outside


class PixelChangeFilter:
    """Passes an edit that changed the masked region (mean change >= ``min_inside``) and left the
    rest nearly alone (mean change <= ``max_outside``). Score: the change inside the mask."""

    def __init__(self, min_inside: float = 0.05, max_outside: float = 0.02):
        self.min_inside = min_inside
        self.max_outside = max_outside

    def __call__(self, original: Image.Image, edited: Image.Image, mask) -> FilterResult:
        inside, outside = pixel_change(original, edited, mask)
        problems = []
        if inside < self.min_inside:
            problems.append(f"too little change inside the mask ({inside:.4f} < {self.min_inside})")
        if outside > self.max_outside:
            problems.append(f"too much change outside the mask ({outside:.4f} > {self.max_outside})")
        reason = "; ".join(problems) if problems else f"changed {inside:.4f} inside, {outside:.4f} outside"
        return FilterResult(passed=not problems, score=inside, reason=reason)


class ImageTextMatchFilter:
    """Passes an edited image whose CLIP cosine with the edited caption is >= ``threshold`` and, when
    ``margin`` is set and the original caption is given, exceeds its cosine with the original
    caption by at least ``margin``. Score: the cosine with the edited caption.

    Args:
        scorer: a :class:`hf_counterfactual.scoring.DualEncoderScorer` (its ``encode_images`` /
            ``encode_texts`` give L2-normalised embeddings; the cosine is used, not the
            ``logit_scale``-scaled score, so thresholds do not depend on the temperature).
    """

    def __init__(self, scorer, threshold: float, margin: float | None = None):
        self.scorer = scorer
        self.threshold = threshold
        self.margin = margin

    def scores_batch(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """Cosine of ``images[i]`` with ``texts[i]`` for every ``i``: shape ``[len(images)]``."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images and {len(texts)} texts")
        if not len(images):
            return np.zeros(0, dtype=np.float32)
        image_embeds = self.scorer.encode_images(list(images))
        text_embeds = self.scorer.encode_texts(list(texts))
        return (image_embeds * text_embeds.to(image_embeds.device)).sum(-1).cpu().numpy()

    def batch(
        self,
        edited_images: Sequence[Image.Image],
        edited_captions: Sequence[str],
        original_captions: Sequence[str] | None = None,
    ) -> list[FilterResult]:
        """One :class:`FilterResult` per edited pair (encoded in batches)."""
        scores = self.scores_batch(edited_images, edited_captions)
        use_margin = self.margin is not None and original_captions is not None
        originals = self.scores_batch(edited_images, original_captions) if use_margin else None
        results = []
        for i, score in enumerate(scores):
            problems = []
            if score < self.threshold:
                problems.append(f"edited pair cosine {score:.4f} < threshold {self.threshold}")
            if use_margin and score - originals[i] < self.margin:
                problems.append(
                    f"edited caption beats the original caption by {score - originals[i]:.4f} < margin {self.margin}"
                )
            reason = "; ".join(problems) if problems else f"edited pair cosine {score:.4f}"
            results.append(FilterResult(passed=not problems, score=float(score), reason=reason))
        return results

    def __call__(self, edited_image: Image.Image, edited_caption: str, original_caption: str | None = None) -> FilterResult:
        return self.batch([edited_image], [edited_caption], None if original_caption is None else [original_caption])[0]
