"""Loss functions for counterfactual training: pure functions of score tensors.

Every function here takes *scores* (never models) and returns a scalar tensor. The scorer
(``CLIP``: cosine x logit_scale, or an LLM) and the trainer decide what a score is; the
losses only decide how scores are combined. All of them

* are differentiable and never loop in Python over the batch;
* accept fp16/bf16/fp32/fp64 inputs on any device. The arithmetic runs in float32 (float64
  when the input is float64, so that ``torch.autograd.gradcheck`` works) and the result is
  float32 (float64 for float64 input);
* take boolean masks in which ``False`` entries contribute neither to the value nor to the
  gradient (masked scores are overwritten before any arithmetic, so even NaN/inf there is
  harmless);
* return a zero that is still connected to the autograd graph when nothing is valid, so a
  batch without (say) any counterfactual image does not break ``backward()``.

Distributed convention (open_clip ``local_loss``): on rank ``r`` with local batch ``B`` and
world size ``W`` a caller scores its LOCAL rows against the GLOBAL columns, so
``logits_per_image`` and ``logits_per_text`` are both ``[B, W*B]`` and the positive of row
``i`` is column ``r*B + i``; pass ``targets = r*B + arange(B)``. In one process ``targets``
defaults to ``arange(N)``.

Equations (``S(I, T)`` is the score of image ``I`` with text ``T``; sums run over valid
entries only; ``[x]_+ = max(0, x)``):

CLIP (Radford et al. 2021), symmetric InfoNCE::

    info_nce(L, t)  = 1/|R| * sum_{i in R} -log( exp(L[i, t_i]) / sum_{j valid in row i} exp(L[i, j]) )
    L_clip          = ( info_nce(logits_per_image, t) + info_nce(logits_per_text, t) ) / 2

NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models behave like bags of
words"): the batch's hard-negative captions are extra columns of the image->text softmax
only (each image sees every image's negatives); text->image is plain InfoNCE::

    L_negclip = ( info_nce([logits_per_image | negative_logits], t) + info_nce(logits_per_text, t) ) / 2

CF-VLM (arXiv 2506.17267), total loss ``L = alpha*L_align + beta*L_csd + gamma*L_fcd`` with
the paper's ``alpha = 1.0, beta = 0.45, gamma = 0.55`` and ``K = 4`` counterfactuals per
factual pair (see :class:`CFVLMLossWeights`):

    L_align = L_clip on the factual pairs
    L_csd   = mean_{b, k valid} [ m1 - S(I_a, T_a) + S(I_cf_k, T_cf_k) ]_+
              (complete counterfactual pairs must score below the factual pair by m1)
    L_fcd   = mean_{b with a valid j} [ m2 - S(I_a, T_a) + max_{j valid} S(I_cf_j, T_a) ]_+
              (the hardest minimally edited image, scored with the ORIGINAL text)

Record-local contrast (any scorer: it asks only for pairs of a record with its own counterfactuals)::

    L_text  = mean_{b with a valid k} -log( e^{S(I_a,T_a)} / (e^{S(I_a,T_a)} + sum_{k valid} e^{S(I_a,T_cf_k)}) )
    L_image = mean_{b with a valid j} -log( e^{S(I_a,T_a)} / (e^{S(I_a,T_a)} + sum_{j valid} e^{S(I_cf_j,T_a)}) )
    L_local = the mean of L_text and L_image over the sides that have a valid row

READ-CLIP's reconstruction (a frozen decoder's cross-entropy on a target caption's tokens ``y``, given
the projected text embedding ``z`` as its one-token encoder output), averaged over the batch's tokens::

    L_recon = 1/|tokens| * sum_{b, t valid} -log p_decoder(y_{b,t} | y_{b,<t}, z_b)

The hinge losses are unit-agnostic: their scores may be cosine similarities, temperature-scaled
logits (what the trainer passes: logit_scale * cosine) or log-likelihoods, and the margin is in
the SAME units as the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CFVLMLossWeights",
    "clip_loss",
    "counterfactual_separation_loss",
    "fine_grained_discrimination_loss",
    "info_nce",
    "negclip_loss",
    "record_local_contrastive_loss",
    "sigmoid_loss",
    "token_cross_entropy",
]


# ----------------------------------------------------------------------------- helpers


def _compute_dtype(x: Tensor, name: str) -> torch.dtype:
    """float32 for half/bf16/fp32 (stable log-softmax), float64 kept for gradcheck."""
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating point tensor, got dtype {x.dtype}")
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_bool(mask: Tensor, name: str) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a bool tensor, got {got}")


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_2d(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        got = _shape(x) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor [N, M], got shape {got}")


def _resolve_targets(targets: Tensor | None, n: int, m: int, device: torch.device, name: str) -> Tensor:
    """Validate ``targets`` ([N] integer in [0, M)) or build the default ``arange(N)``."""
    if targets is None:
        if m < n:
            raise ValueError(
                f"default targets arange({n}) need at least as many columns as rows, but {name} "
                f"has shape {(n, m)}; pass targets explicitly"
            )
        return torch.arange(n, device=device)
    if not isinstance(targets, Tensor) or targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        got = targets.dtype if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be an integer (long) tensor, got {got}")
    if _shape(targets) != (n,):
        raise ValueError(f"targets must have shape [N]=({n},) to match {name} {(n, m)}, got {_shape(targets)}")
    if n > 0:
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= m:
            raise ValueError(
                f"targets must lie in [0, {m}) (the columns of {name} {(n, m)}), got values in [{lo}, {hi}]"
            )
    return targets.long()


def _expand_column_mask(mask: Tensor, n: int, m: int, name: str, logits_name: str) -> Tensor:
    """``[M]`` or ``[N, M]`` bool -> ``[N, M]`` bool."""
    _check_bool(mask, name)
    if _shape(mask) == (m,):
        return mask.unsqueeze(0).expand(n, m)
    if _shape(mask) == (n, m):
        return mask
    raise ValueError(f"{name} must have shape [M]=({m},) or [N, M]={(n, m)} to match {logits_name}, got {_shape(mask)}")


def _valid_columns(mask: Tensor | None, n: int, m: int, name: str, logits_name: str, device: torch.device) -> Tensor:
    """:func:`_expand_column_mask` of ``mask``, or every column valid when it is None."""
    if mask is None:
        return torch.ones(n, m, dtype=torch.bool, device=device)
    return _expand_column_mask(mask, n, m, name, logits_name)


def _check_row_mask(row_mask: Tensor, n: int, logits_name: str) -> None:
    _check_bool(row_mask, "row_mask")
    if _shape(row_mask) != (n,):
        raise ValueError(f"row_mask must have shape [N]=({n},) to match {logits_name}, got {_shape(row_mask)}")


def _check_negative_logits(negative_logits: Tensor, n: int, logits_name: str) -> int:
    """Validates hard-negative columns ``[N, X]`` against the ``N`` rows of ``logits_name``; returns ``X``."""
    _check_2d(negative_logits, "negative_logits")
    if negative_logits.shape[0] != n:
        raise ValueError(f"negative_logits must have N={n} rows like {logits_name} (shape [N, X]), got {_shape(negative_logits)}")
    return negative_logits.shape[1]


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over ``valid`` entries; a connected zero when none is valid.

    ``torch.where`` (not multiplication) so a non-finite excluded entry cannot leak in;
    ``clamp_min(1)`` gives ``0 / 1`` for an empty selection without a host sync.
    """
    total = torch.where(valid, values, values.new_zeros(())).sum()
    return total / valid.sum().clamp_min(1).to(values.dtype)


# ----------------------------------------------------------------------------- contrastive


def info_nce(
    logits: Tensor,
    targets: Tensor | None = None,
    *,
    row_mask: Tensor | None = None,
    column_mask: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of each row's softmax against its target column (one InfoNCE direction).

    Args:
        logits: ``[N, M]`` scores, row ``i`` = query ``i`` against the ``M`` candidates.
        targets: ``[N]`` integer column of each row's positive; default ``arange(N)``
            (requires ``M >= N``). Under a distributed local loss: ``rank * N + arange(N)``.
        row_mask: ``[N]`` bool; ``False`` rows are left out of the mean (and their logits,
            targets and column masks are ignored entirely, so a missing pair may carry any
            placeholder score and any target).
        column_mask: ``[M]`` or ``[N, M]`` bool; ``False`` columns are left out of that row's
            softmax. The target column of every valid row must be valid: a masked target is a
            ``ValueError``, never a silent skip; exclude such rows with ``row_mask``.

    Validating ``targets`` and the target columns reads two scalars back to the host (a sync
    on GPU); the default ``targets`` with no masks skips both.

    Returns:
        Scalar: mean over valid rows of ``-log softmax(valid columns)[target]``, float32
        (float64 for float64 input). A connected zero if no row is valid.
    """
    _check_2d(logits, "logits")
    n, m = logits.shape
    targets = _resolve_targets(targets, n, m, logits.device, "logits")

    valid = None  # [N, M] bool, or None when everything is valid
    if column_mask is not None:
        valid = _expand_column_mask(column_mask, n, m, "column_mask", f"logits {(n, m)}")
    row_valid = None
    if row_mask is not None:
        _check_row_mask(row_mask, n, f"logits {(n, m)}")
        row_valid = row_mask
        # Fold the row mask into the element mask: an excluded row becomes all-masked, so
        # whatever it held (even NaN) never reaches the value or the gradient.
        rows = row_valid.unsqueeze(1).expand(n, m)
        valid = rows if valid is None else valid & rows

    x = logits.to(_compute_dtype(logits, "logits"))
    if valid is not None:
        if n > 0:
            target_ok = valid.gather(1, targets.unsqueeze(1)).squeeze(1)
            must_be_ok = row_valid if row_valid is not None else torch.ones_like(target_ok)
            bad = must_be_ok & ~target_ok
            if bool(bad.any()):
                rows_bad = bad.nonzero().flatten()[:8].tolist()
                raise ValueError(
                    f"column_mask masks the target column of valid row(s) {rows_bad} "
                    f"(targets {targets[rows_bad].tolist()}); exclude those rows with row_mask instead"
                )
        # Most negative *finite* value rather than -inf: an all-masked (excluded) row then has
        # a finite log-softmax instead of NaN, and a row with a valid entry gets exp(.) == 0.
        x = x.masked_fill(~valid, torch.finfo(x.dtype).min)

    per_row = -x.log_softmax(dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)  # [N]
    if row_valid is None:
        # Plain mean; ``sum / max(n, 1)`` keeps the empty batch a connected zero.
        return per_row.sum() / max(n, 1)
    return _masked_mean(per_row, row_valid)


def _resolve_text_logits(logits_per_image: Tensor, logits_per_text: Tensor | None) -> Tensor:
    _check_2d(logits_per_image, "logits_per_image")
    if logits_per_text is None:
        n, m = logits_per_image.shape
        if n != m:
            raise ValueError(
                f"logits_per_text defaults to logits_per_image.T, which needs a square matrix, but "
                f"logits_per_image has shape {(n, m)}; pass logits_per_text (local rows x global columns)"
            )
        return logits_per_image.t()
    _check_2d(logits_per_text, "logits_per_text")
    if logits_per_text.shape != logits_per_image.shape:
        raise ValueError(
            f"logits_per_text must have the shape of logits_per_image (local rows x global columns): "
            f"got {_shape(logits_per_text)} vs {_shape(logits_per_image)}"
        )
    return logits_per_text


def clip_loss(
    logits_per_image: Tensor,
    logits_per_text: Tensor | None = None,
    targets: Tensor | None = None,
    *,
    row_mask: Tensor | None = None,
    column_mask: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE of CLIP: ``(info_nce(image->text) + info_nce(text->image)) / 2``.

    Args:
        logits_per_image: ``[N, M]``, local images (rows) x global texts (columns).
        logits_per_text: ``[N, M]``, local texts x global images; default
            ``logits_per_image.T`` (single process, requires ``N == M``).
        targets: ``[N]`` positive column of pair ``i`` in BOTH directions; default ``arange(N)``.
        row_mask: ``[N]`` bool, pairs left out as rows of both directions.
        column_mask: ``[M]`` or ``[N, M]`` bool, applied unchanged to both directions: column
            ``j`` is text ``j`` for images and image ``j`` for texts, i.e. pair ``j`` (used by
            the grouping objective, where factual and counterfactual pairs share one batch).

    Returns:
        Scalar float32 (float64 for float64 input).
    """
    logits_per_text = _resolve_text_logits(logits_per_image, logits_per_text)
    kw = dict(row_mask=row_mask, column_mask=column_mask)
    return (info_nce(logits_per_image, targets, **kw) + info_nce(logits_per_text, targets, **kw)) / 2


def negclip_loss(
    logits_per_image: Tensor,
    negative_logits: Tensor,
    logits_per_text: Tensor | None = None,
    targets: Tensor | None = None,
    *,
    row_mask: Tensor | None = None,
    column_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """NegCLIP: CLIP loss with hard-negative captions as extra image->text columns.

    Args:
        logits_per_image: ``[N, M]``, local images x global texts.
        negative_logits: ``[N, X]``, each local image against ALL ``X`` hard-negative captions
            of the (global) batch, so one image's negatives are also negatives for the others.
        logits_per_text: ``[N, M]``, local texts x global images; default ``logits_per_image.T``.
            Hard negatives are captions, so the text->image direction is plain InfoNCE.
        targets: ``[N]`` positive column (in ``[0, M)``, never a negative); default ``arange(N)``.
        row_mask, column_mask: as in :func:`clip_loss`, over the ``N`` rows and ``M`` real columns of
            both directions (the grouping objective: factual + counterfactual pairs, with text-only
            counterfactuals as negatives).
        negative_mask: ``[X]`` or ``[N, X]`` bool; ``False`` negatives are left out (e.g. padding
            for records with fewer counterfactual captions).

    Returns:
        ``(info_nce([logits_per_image | negative_logits], targets) + info_nce(logits_per_text, targets)) / 2``,
        a float32 scalar (float64 for float64 input). With every negative masked this equals
        :func:`clip_loss`.
    """
    logits_per_text = _resolve_text_logits(logits_per_image, logits_per_text)
    n, m = logits_per_image.shape
    x = _check_negative_logits(negative_logits, n, f"logits_per_image {(n, m)}")
    # Targets index the real texts only; validate against M here so the message is not about M + X.
    targets = _resolve_targets(targets, n, m, logits_per_image.device, "logits_per_image")

    i2t_mask = None
    if negative_mask is not None or column_mask is not None:
        device = logits_per_image.device
        real_valid = _valid_columns(column_mask, n, m, "column_mask", f"logits_per_image {(n, m)}", device)
        neg_valid = _valid_columns(negative_mask, n, x, "negative_mask", f"negative_logits {(n, x)}", device)
        i2t_mask = torch.cat([real_valid, neg_valid], dim=1)
    # Mixed dtypes (e.g. bf16 logits, fp32 negatives) are fine: info_nce upcasts anyway.
    dtype = torch.promote_types(logits_per_image.dtype, negative_logits.dtype)
    i2t = torch.cat([logits_per_image.to(dtype), negative_logits.to(dtype)], dim=1)
    return (
        info_nce(i2t, targets, row_mask=row_mask, column_mask=i2t_mask)
        + info_nce(logits_per_text, targets, row_mask=row_mask, column_mask=column_mask)
    ) / 2


# ----------------------------------------------------------------------------- CF-VLM hinges


def _check_hinge_inputs(
    factual_scores: Tensor, other: Tensor, other_name: str, margin: float, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    if not isinstance(factual_scores, Tensor) or factual_scores.dim() != 1:
        got = _shape(factual_scores) if isinstance(factual_scores, Tensor) else type(factual_scores).__name__
        raise ValueError(f"factual_scores must be a 1-D tensor [B], got shape {got}")
    b = factual_scores.shape[0]
    if not isinstance(other, Tensor) or other.dim() != 2 or other.shape[0] != b:
        got = _shape(other) if isinstance(other, Tensor) else type(other).__name__
        raise ValueError(f"{other_name} must have shape [B, K] with B={b} like factual_scores ({b},), got {got}")
    if isinstance(margin, Tensor) or not isinstance(margin, (int, float)):
        raise ValueError(f"margin must be a Python float, got {type(margin).__name__}")
    if mask is not None:
        _check_bool(mask, "mask")
        if mask.shape != other.shape:
            raise ValueError(f"mask must have the shape of {other_name} {_shape(other)}, got {_shape(mask)}")
    dtype = torch.promote_types(_compute_dtype(factual_scores, "factual_scores"), _compute_dtype(other, other_name))
    return factual_scores.to(dtype), other.to(dtype), mask


def counterfactual_separation_loss(
    factual_scores: Tensor,
    counterfactual_scores: Tensor,
    margin: float,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """CF-VLM ``L_csd``: each complete counterfactual pair must score ``margin`` below the factual.

    Args:
        factual_scores: ``[B]``, ``S(I_a, T_a)``.
        counterfactual_scores: ``[B, K]``, ``S(I_cf_k, T_cf_k)`` of the ``K`` complete
            counterfactual pairs of factual pair ``b``.
        margin: ``m1``, in the units of the scores (the trainer passes logit_scale * cosine).
        mask: ``[B, K]`` bool; ``False`` = no such counterfactual (padding), ignored.

    Returns:
        ``mean_{valid (b, k)} max(0, margin - S(I_a,T_a)[b] + S(I_cf_k,T_cf_k)[b, k])``, float32
        (float64 for float64 input); a connected zero if no entry is valid.
    """
    fact, cf, mask = _check_hinge_inputs(factual_scores, counterfactual_scores, "counterfactual_scores", margin, mask)
    if mask is not None:
        # Overwrite padding first so a NaN placeholder cannot reach the value or gradient.
        cf = cf.masked_fill(~mask, 0.0)
    hinge = (margin - fact.unsqueeze(1) + cf).clamp_min(0)  # [B, K]
    if mask is None:
        return hinge.sum() / max(hinge.numel(), 1)
    return _masked_mean(hinge, mask)


def fine_grained_discrimination_loss(
    factual_scores: Tensor,
    edited_image_scores: Tensor,
    margin: float,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """CF-VLM ``L_fcd``: the factual pair must beat the HARDEST minimally edited image by ``margin``.

    Args:
        factual_scores: ``[B]``, ``S(I_a, T_a)``.
        edited_image_scores: ``[B, K]``, ``S(I_cf_j, T_a)``: edited images scored with the
            ORIGINAL (factual) text.
        margin: ``m2``, in the units of the scores (the trainer passes logit_scale * cosine).
        mask: ``[B, K]`` bool; ``False`` = no such edited image (text-only counterfactual or
            padding). Rows with no valid entry are left out of the mean.

    Returns:
        ``mean_{b with a valid j} max(0, margin - S(I_a,T_a)[b] + max_{valid j} S(I_cf_j,T_a)[b, j])``,
        float32 (float64 for float64 input); a connected zero if no row is valid. Only the
        maximal edited score of a row receives gradient (ties share it, as in ``amax``).
    """
    fact, edited, mask = _check_hinge_inputs(factual_scores, edited_image_scores, "edited_image_scores", margin, mask)
    if edited.shape[1] == 0:
        # No edited images at all (K = 0): every row is invalid; a connected zero.
        return _masked_mean((margin - fact).clamp_min(0), torch.zeros_like(fact, dtype=torch.bool))
    if mask is None:
        hardest = edited.amax(dim=1)  # [B]
        return (margin - fact + hardest).clamp_min(0).sum() / max(fact.shape[0], 1)
    # Finite fill (not -inf) so an all-masked row stays finite; its value is discarded below.
    hardest = edited.masked_fill(~mask, torch.finfo(edited.dtype).min).amax(dim=1)
    row_valid = mask.any(dim=1)
    hardest = torch.where(row_valid, hardest, hardest.new_zeros(()))
    return _masked_mean((margin - fact + hardest).clamp_min(0), row_valid)


# ----------------------------------------------------------------------------- record-local contrast


def _one_positive_nce(positive: Tensor, negatives: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per row ``-log softmax([positive | valid negatives])[0]`` and whether the row has a negative."""
    if mask is None:
        mask = torch.ones_like(negatives, dtype=torch.bool)
    logits = torch.cat([positive.unsqueeze(1), negatives.masked_fill(~mask, float("-inf"))], dim=1)
    return -torch.log_softmax(logits, dim=1)[:, 0], mask.any(dim=1)


def record_local_contrastive_loss(
    factual_scores: Tensor,
    text_negative_scores: Tensor,
    image_negative_scores: Tensor,
    *,
    text_mask: Tensor | None = None,
    image_mask: Tensor | None = None,
) -> Tensor:
    """Record-local InfoNCE: the factual pair against its own record's counterfactuals only, on
    the text side (its image with each counterfactual caption) and on the image side (each edited
    image with its caption). Needs no all-pairs scores, so any scorer (a generative VLM's
    log-likelihoods too) can train with it.

    Args:
        factual_scores: ``[B]``, ``S(I_a, T_a)``.
        text_negative_scores: ``[B, K]``, ``S(I_a, T_cf_k)``.
        image_negative_scores: ``[B, K]``, ``S(I_cf_j, T_a)``.
        text_mask, image_mask: ``[B, K]`` bool; ``False`` = no such counterfactual caption / image.

    Returns:
        ``L_local`` of the module docstring, float32 (float64 for float64 input); a connected
        zero when no record has a valid negative on either side.
    """
    fact, text_neg, text_mask = _check_hinge_inputs(factual_scores, text_negative_scores, "text_negative_scores", 0.0, text_mask)
    _, image_neg, image_mask = _check_hinge_inputs(factual_scores, image_negative_scores, "image_negative_scores", 0.0, image_mask)
    values, present = [], []
    for negatives, mask in ((text_neg, text_mask), (image_neg.to(fact.dtype), image_mask)):
        losses, valid = _one_positive_nce(fact, negatives, mask)
        values.append(_masked_mean(torch.where(valid, losses, losses.new_zeros(())), valid))
        present.append(valid.any())
    # The mean over the sides that have a valid row, without a host sync.
    present = torch.stack(present).to(fact.dtype)
    return (torch.stack(values) * present).sum() / present.sum().clamp_min(1)


# ----------------------------------------------------------------------------- weights


@dataclass
class CFVLMLossWeights:
    """CF-VLM's weights (arXiv 2506.17267): ``L = alpha*L_align + beta*L_csd + gamma*L_fcd``."""

    alpha: float = 1.0
    beta: float = 0.45
    gamma: float = 0.55

    def combine(self, align: Tensor, csd: Tensor, fcd: Tensor) -> Tensor:
        """Weighted total ``alpha*align + beta*csd + gamma*fcd``."""
        return self.alpha * align + self.beta * csd + self.gamma * fcd


def sigmoid_loss(
    logits: Tensor,
    targets: Tensor | None = None,
    negative_logits: Tensor | None = None,
    *,
    row_mask: Tensor | None = None,
    column_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss: every (image, text) score is a binary logit, positive at the
    row's target column, negative at every other column and at every hard-negative column.

    Args:
        logits: ``[N, M]``, local images x global texts, ``S = scale * cosine + bias``.
        targets: ``[N]`` the positive column of each row (in ``[0, M)``); default ``arange(N)``.
        negative_logits: ``[N, X]`` extra columns that are all negatives (counterfactual captions).
        row_mask: ``[N]`` bool; ``False`` rows count nowhere (placeholder pairs).
        column_mask: ``[M]`` or ``[N, M]`` bool; ``False`` pairs are left out (known positives that
            are not the row's target). A row's target is always kept.
        negative_mask: ``[X]`` or ``[N, X]`` bool over ``negative_logits``.

    Returns:
        ``sum over kept pairs of -log sigmoid(label * logit)`` divided by the number of kept rows,
        float32 (float64 for float64 input); 0, connected, if no row is kept. On a square batch
        with the default targets and no masks this is ``SiglipModel``'s own loss.
    """
    _check_2d(logits, "logits")
    n, m = logits.shape
    targets = _resolve_targets(targets, n, m, logits.device, "logits")
    dtype = _compute_dtype(logits, "logits")
    labels = -torch.ones(n, m, dtype=dtype, device=logits.device)
    labels[torch.arange(n, device=logits.device), targets] = 1.0
    keep = _valid_columns(column_mask, n, m, "column_mask", f"logits {(n, m)}", logits.device).clone()
    keep[torch.arange(n, device=logits.device), targets] = True
    parts_logits, parts_labels, parts_keep = [logits.to(dtype)], [labels], [keep]
    if negative_logits is not None:
        x = _check_negative_logits(negative_logits, n, f"logits {(n, m)}")
        parts_logits.append(negative_logits.to(dtype))
        parts_labels.append(-torch.ones(n, x, dtype=dtype, device=logits.device))
        parts_keep.append(_valid_columns(negative_mask, n, x, "negative_mask", f"negative_logits {(n, x)}", logits.device))
    keep = torch.cat(parts_keep, dim=1)
    if row_mask is not None:
        _check_row_mask(row_mask, n, f"logits {(n, m)}")
        keep = keep & row_mask.unsqueeze(1)
    # Left-out pairs are replaced before the loss, not multiplied by 0 after: a placeholder (even inf
    # or NaN) then reaches neither the value nor the gradient.
    x = torch.cat(parts_logits, dim=1)
    x = torch.where(keep, x, torch.zeros_like(x))
    pair_losses = -torch.nn.functional.logsigmoid(torch.cat(parts_labels, dim=1) * x)
    total = torch.where(keep, pair_losses, torch.zeros_like(pair_losses)).sum()
    rows = (row_mask.sum() if row_mask is not None else torch.tensor(n, device=logits.device)).clamp(min=1)
    return total / rows


# ----------------------------------------------------------------------------- reconstruction


def token_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy over the tokens of a batch of sequences (READ-CLIP's ``L_recon``: a
    decoder's loss on target captions, as its own ``labels=`` loss computes it).

    Args:
        logits: ``[N, L, V]`` the decoder's logits at each target position.
        labels: ``[N, L]`` int64 target ids, ``ignore_index`` at padding.

    Returns:
        ``-log softmax(logits)[label]`` averaged over every non-ignored token of the batch (so a
        long caption weighs more than a short one), float32 (float64 for float64 input). Raises if
        no token is a target: a batch of empty captions is a data error, not a zero loss.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be a 3-D tensor [N, L, V], got shape {_shape(logits) if isinstance(logits, Tensor) else type(logits).__name__}")
    if not isinstance(labels, Tensor) or labels.shape != logits.shape[:2] or labels.dtype != torch.long:
        raise ValueError(f"labels must be an int64 tensor of shape {tuple(logits.shape[:2])} (logits' [N, L]), got {labels.dtype} {_shape(labels)}")
    valid = labels != ignore_index
    if not bool(valid.any()):
        raise ValueError("labels hold no target token (every entry is ignore_index): an empty target caption?")
    dtype = _compute_dtype(logits, "logits")
    # Ignored positions are overwritten first: whatever a decoder gives there (even NaN) stays out of the gradient.
    logits = torch.where(valid.unsqueeze(-1), logits.to(dtype), torch.zeros((), dtype=dtype, device=logits.device))
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, torch.where(valid, labels, 0).unsqueeze(-1)).squeeze(-1)
    return -_masked_mean(picked, valid)
