"""Tests for hf_counterfactual.losses.

Every loss is compared with a naive reference written as plain Python loops over
``.tolist()`` values, straight from the equation in the module docstring.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from hf_counterfactual.losses import (
    CFVLMLossWeights,
    clip_loss,
    counterfactual_separation_loss,
    fine_grained_discrimination_loss,
    info_nce,
    negclip_loss,
)


# ----------------------------------------------------------------------------- naive references


def _rows_mask(mask, n, m):
    """None / [M] / [N, M] bool tensor -> list of N lists of M bools."""
    if mask is None:
        return [[True] * m for _ in range(n)]
    if mask.dim() == 1:
        return [mask.tolist() for _ in range(n)]
    return mask.tolist()


def ref_info_nce(logits, targets=None, row_mask=None, column_mask=None):
    L = logits.double().tolist()
    n, m = logits.shape
    t = list(range(n)) if targets is None else targets.tolist()
    rm = [True] * n if row_mask is None else row_mask.tolist()
    cm = _rows_mask(column_mask, n, m)
    total, count = 0.0, 0
    for i in range(n):
        if not rm[i]:
            continue
        cols = [j for j in range(m) if cm[i][j]]
        denom = sum(math.exp(L[i][j]) for j in cols)
        total += -math.log(math.exp(L[i][t[i]]) / denom)
        count += 1
    return total / count if count else 0.0


def ref_clip(lpi, lpt=None, targets=None, row_mask=None, column_mask=None):
    if lpt is None:
        lpt = lpi.t()
    return (ref_info_nce(lpi, targets, row_mask, column_mask) + ref_info_nce(lpt, targets, row_mask, column_mask)) / 2


def ref_negclip(lpi, neg, lpt=None, targets=None, negative_mask=None, row_mask=None, column_mask=None):
    if lpt is None:
        lpt = lpi.t()
    P, X, T = lpi.double().tolist(), neg.double().tolist(), lpt.double().tolist()
    n, m = lpi.shape
    x = neg.shape[1]
    t = list(range(n)) if targets is None else targets.tolist()
    rm = [True] * n if row_mask is None else row_mask.tolist()
    cm = _rows_mask(column_mask, n, m)
    nm = _rows_mask(negative_mask, n, x)
    rows = [i for i in range(n) if rm[i]]
    i2t = t2i = 0.0
    for i in rows:
        denom = sum(math.exp(P[i][j]) for j in range(m) if cm[i][j])
        denom += sum(math.exp(X[i][k]) for k in range(x) if nm[i][k])
        i2t += math.log(denom) - P[i][t[i]]
        denom = sum(math.exp(T[i][j]) for j in range(m) if cm[i][j])
        t2i += math.log(denom) - T[i][t[i]]
    return (i2t / len(rows) + t2i / len(rows)) / 2 if rows else 0.0


def ref_csd(fact, cf, margin, mask=None):
    f, c = fact.double().tolist(), cf.double().tolist()
    b, k = cf.shape
    mk = _rows_mask(mask, b, k)
    vals = [max(0.0, margin - f[i] + c[i][j]) for i in range(b) for j in range(k) if mk[i][j]]
    return sum(vals) / len(vals) if vals else 0.0


def ref_fcd(fact, edited, margin, mask=None):
    f, e = fact.double().tolist(), edited.double().tolist()
    b, k = edited.shape
    mk = _rows_mask(mask, b, k)
    vals = []
    for i in range(b):
        valid = [e[i][j] for j in range(k) if mk[i][j]]
        if valid:
            vals.append(max(0.0, margin - f[i] + max(valid)))
    return sum(vals) / len(vals) if vals else 0.0


def _check(out, ref):
    assert out.dim() == 0
    assert_close(out, torch.tensor(ref, dtype=out.dtype))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=torch.float64, scale=3.0):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype) * scale


def _randmask(*shape, seed=0, p=0.6):
    return torch.rand(*shape, generator=_gen(seed + 1000)) < p


# ----------------------------------------------------------------------------- info_nce


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 5), (4, 9)])
def test_info_nce_matches_reference(shape, dtype):
    logits = _randn(*shape, seed=sum(shape), dtype=dtype)
    out = info_nce(logits)
    _check(out, ref_info_nce(logits))
    assert out.dtype == dtype
    # And the textbook implementation.
    assert_close(out, F.cross_entropy(logits, torch.arange(shape[0])))


@pytest.mark.parametrize("world,rank,b", [(1, 0, 4), (4, 2, 3), (3, 0, 2), (3, 2, 5)])
def test_info_nce_local_loss_targets(world, rank, b):
    logits = _randn(b, world * b, seed=world * 10 + rank)
    targets = rank * b + torch.arange(b)
    _check(info_nce(logits, targets), ref_info_nce(logits, targets))
    if rank != 0:  # the default arange(N) target is a different (wrong) answer here
        assert not torch.allclose(info_nce(logits, targets), info_nce(logits))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mask_kind", ["row", "col1d", "col2d", "both"])
def test_info_nce_masks_match_reference(seed, mask_kind):
    n, m = 5, 8
    logits = _randn(n, m, seed=seed)
    targets = torch.randint(0, m, (n,), generator=_gen(seed))
    row_mask = column_mask = None
    if mask_kind in ("row", "both"):
        row_mask = _randmask(n, seed=seed)
        row_mask[0] = True
    if mask_kind == "col1d":
        column_mask = _randmask(m, seed=seed)
        column_mask[targets] = True  # every row valid -> targets must be valid
    if mask_kind in ("col2d", "both"):
        column_mask = _randmask(n, m, seed=seed)
        column_mask[torch.arange(n), targets] = True
        if mask_kind == "both":  # an excluded row may mask its own target
            column_mask[~row_mask, targets[~row_mask]] = False
    out = info_nce(logits, targets, row_mask=row_mask, column_mask=column_mask)
    _check(out, ref_info_nce(logits, targets, row_mask, column_mask))


def test_info_nce_2x2_closed_form():
    d = 1.5
    logits = torch.tensor([[d, 0.0], [0.0, d]], dtype=torch.float64)
    expected = math.log(1 + math.exp(-d))
    _check(info_nce(logits), expected)
    _check(clip_loss(logits), expected)
    # Asymmetric: row 0 gap a-b, row 1 gap d-c.
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]], dtype=torch.float64)
    _check(info_nce(logits), (math.log(1 + math.exp(-3.0)) + math.log(1 + math.exp(0.5))) / 2)
    # Masking the negative column leaves a one-column softmax: loss exactly 0.
    _check(info_nce(logits, column_mask=torch.tensor([[True, False], [False, True]])), 0.0)


def test_info_nce_masked_entries_get_no_value_or_gradient():
    n, m = 4, 6
    targets = torch.tensor([0, 5, 2, 3])
    column_mask = torch.ones(n, m, dtype=torch.bool)
    column_mask[0, 1] = column_mask[1, 0] = column_mask[2, 4] = False
    row_mask = torch.tensor([True, True, True, False])
    base = _randn(n, m, seed=3)
    poisoned = base.clone()
    poisoned[~column_mask] = float("nan")
    poisoned[3] = float("inf")  # an excluded row may hold anything
    poisoned.requires_grad_(True)
    out = info_nce(poisoned, targets, row_mask=row_mask, column_mask=column_mask)
    assert torch.isfinite(out)
    _check(out, ref_info_nce(base, targets, row_mask, column_mask))
    out.backward()
    keep = column_mask & row_mask[:, None]
    assert torch.all(poisoned.grad[~keep] == 0)
    assert torch.all(poisoned.grad[keep] != 0)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_info_nce_backward_has_no_nan_even_in_excluded_rows():
    """An excluded (all-masked) row must stay finite inside autograd too, not only in the
    result: anomaly detection, which users turn on to debug NaNs, would otherwise fire."""
    logits = _randn(3, 4, seed=2).requires_grad_(True)
    with torch.autograd.detect_anomaly(check_nan=True):
        out = info_nce(logits, row_mask=torch.tensor([True, False, True]),
                       column_mask=torch.tensor([True, True, True, False]))
        out.backward()
        out = info_nce(logits, row_mask=torch.zeros(3, dtype=torch.bool))
        out.backward()
    assert torch.isfinite(logits.grad).all()


def test_info_nce_no_valid_row_is_connected_zero():
    logits = _randn(3, 3, seed=1).requires_grad_(True)
    out = info_nce(logits, row_mask=torch.zeros(3, dtype=torch.bool))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.all(logits.grad == 0)


def test_info_nce_errors():
    logits = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="2-D"):
        info_nce(torch.zeros(3))
    with pytest.raises(ValueError, match="targets"):
        info_nce(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        info_nce(logits, torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        info_nce(logits, torch.tensor([-1, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        info_nce(logits, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="at least as many columns"):
        info_nce(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="row_mask"):
        info_nce(logits, row_mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        info_nce(logits, row_mask=torch.ones(3))
    with pytest.raises(ValueError, match="column_mask"):
        info_nce(logits, column_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="column_mask"):
        info_nce(logits, column_mask=torch.ones(5, 3, dtype=torch.bool))
    cm = torch.ones(5, dtype=torch.bool)
    cm[1] = False
    with pytest.raises(ValueError, match=r"target column of valid row\(s\) \[1\]"):
        info_nce(logits, column_mask=cm)
    # ... but excluding that row explicitly is fine.
    info_nce(logits, row_mask=torch.tensor([True, False, True]), column_mask=cm)
    with pytest.raises(ValueError, match="floating"):
        info_nce(torch.zeros(3, 3, dtype=torch.long))


def test_info_nce_gradcheck():
    logits = _randn(3, 5, seed=7).requires_grad_(True)
    targets = torch.tensor([4, 0, 2])
    cm = torch.ones(3, 5, dtype=torch.bool)
    cm[0, 1] = cm[2, 3] = False
    rm = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(lambda x: info_nce(x, targets), (logits,))
    assert torch.autograd.gradcheck(lambda x: info_nce(x, targets, row_mask=rm, column_mask=cm), (logits,))


# ----------------------------------------------------------------------------- clip_loss


@pytest.mark.parametrize("n", [1, 2, 6])
def test_clip_loss_matches_reference_and_transpose(n):
    logits = _randn(n, n, seed=n)
    out = clip_loss(logits)
    _check(out, ref_clip(logits))
    assert_close(out, clip_loss(logits, logits.t()))
    assert_close(out, clip_loss(logits, logits.t().contiguous(), torch.arange(n)))
    assert_close(out, (F.cross_entropy(logits, torch.arange(n)) + F.cross_entropy(logits.t(), torch.arange(n))) / 2)


def test_clip_loss_is_symmetric_not_one_directional():
    logits = torch.tensor([[3.0, 2.9], [0.0, 1.0]], dtype=torch.float64)
    assert not torch.allclose(clip_loss(logits), info_nce(logits))
    _check(clip_loss(logits), (ref_info_nce(logits) + ref_info_nce(logits.t())) / 2)


@pytest.mark.parametrize("world,rank,b", [(2, 1, 3), (4, 3, 2)])
@pytest.mark.parametrize("masked", [False, True])
def test_clip_loss_local_loss(world, rank, b, masked):
    lpi = _randn(b, world * b, seed=world + rank)
    lpt = _randn(b, world * b, seed=world + rank + 50)
    targets = rank * b + torch.arange(b)
    row_mask = column_mask = None
    if masked:
        row_mask = torch.ones(b, dtype=torch.bool)
        row_mask[-1] = False
        column_mask = _randmask(world * b, seed=world)
        column_mask[targets[:-1]] = True
        column_mask[targets[-1]] = False  # missing pair: neither a row nor a column
    out = clip_loss(lpi, lpt, targets, row_mask=row_mask, column_mask=column_mask)
    _check(out, ref_clip(lpi, lpt, targets, row_mask, column_mask))


def test_clip_loss_masks_both_directions():
    """Grouping: B factual + B counterfactual pairs, some counterfactual images missing."""
    n = 6
    logits = _randn(n, n, seed=11)
    row_mask = torch.tensor([True, True, True, True, False, True])
    column_mask = row_mask.clone()
    out = clip_loss(logits, row_mask=row_mask, column_mask=column_mask)
    _check(out, ref_clip(logits, None, None, row_mask, column_mask))
    # Same as dropping pair 4 altogether.
    keep = row_mask.nonzero().flatten()
    assert_close(out, clip_loss(logits[keep][:, keep]))
    cm2 = _randmask(n, n, seed=2) | torch.eye(n, dtype=torch.bool)
    _check(clip_loss(logits, column_mask=cm2), ref_clip(logits, None, None, None, cm2))


def test_clip_loss_errors_and_gradcheck():
    with pytest.raises(ValueError, match="square"):
        clip_loss(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="logits_per_text"):
        clip_loss(torch.zeros(2, 4), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="logits_per_image"):
        clip_loss(torch.zeros(2, 3, 4))
    lpi = _randn(3, 6, seed=1).requires_grad_(True)
    lpt = _randn(3, 6, seed=2).requires_grad_(True)
    t = torch.tensor([3, 4, 5])
    assert torch.autograd.gradcheck(lambda a, b: clip_loss(a, b, t), (lpi, lpt))
    sq = _randn(4, 4, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: clip_loss(a, row_mask=torch.tensor([1, 0, 1, 1]).bool()), (sq,))


# ----------------------------------------------------------------------------- negclip_loss


@pytest.mark.parametrize("n,x", [(1, 1), (3, 3), (4, 7), (2, 0)])
@pytest.mark.parametrize("mask_kind", [None, "1d", "2d"])
def test_negclip_matches_reference(n, x, mask_kind):
    lpi = _randn(n, n, seed=n)
    neg = _randn(n, x, seed=n + x + 100)
    mask = None
    if mask_kind == "1d":
        mask = _randmask(x, seed=x)
    elif mask_kind == "2d":
        mask = _randmask(n, x, seed=x)
    out = negclip_loss(lpi, neg, negative_mask=mask)
    _check(out, ref_negclip(lpi, neg, None, None, mask))


@pytest.mark.parametrize("world,rank,b,x", [(2, 1, 3, 6), (4, 2, 2, 3)])
def test_negclip_local_loss(world, rank, b, x):
    lpi = _randn(b, world * b, seed=1)
    lpt = _randn(b, world * b, seed=2)
    neg = _randn(b, x, seed=3)
    targets = rank * b + torch.arange(b)
    mask = _randmask(b, x, seed=4)
    out = negclip_loss(lpi, neg, lpt, targets, negative_mask=mask)
    _check(out, ref_negclip(lpi, neg, lpt, targets, mask))


@pytest.mark.parametrize("world,rank,b,x", [(1, 0, 5, 4), (2, 1, 3, 6)])
def test_negclip_with_row_and_column_masks(world, rank, b, x):
    # the grouping objective: some pairs are absent (masked as rows and as columns)
    lpi, lpt, neg = _randn(b, world * b, seed=21), _randn(b, world * b, seed=22), _randn(b, x, seed=23)
    targets = rank * b + torch.arange(b)
    row_mask = torch.tensor([i % 3 != 1 for i in range(b)])
    column_mask = torch.tensor([(j % 3 != 1) or (j // b != rank) and j % 2 == 0 for j in range(world * b)])
    column_mask[targets[row_mask]] = True
    negative_mask = _randmask(x, seed=24)
    out = negclip_loss(lpi, neg, lpt, targets, row_mask=row_mask, column_mask=column_mask, negative_mask=negative_mask)
    _check(out, ref_negclip(lpi, neg, lpt, targets, negative_mask, row_mask, column_mask))
    none_negative = torch.zeros(x, dtype=torch.bool)
    assert_close(
        negclip_loss(lpi, neg, lpt, targets, row_mask=row_mask, column_mask=column_mask, negative_mask=none_negative),
        clip_loss(lpi, lpt, targets, row_mask=row_mask, column_mask=column_mask),
    )


def test_negclip_negatives_only_in_image_to_text():
    lpi = _randn(3, 3, seed=5)
    neg = _randn(3, 4, seed=6)
    out = negclip_loss(lpi, neg)
    expected = (info_nce(torch.cat([lpi, neg], 1)) + info_nce(lpi.t())) / 2
    assert_close(out, expected)
    # Raising a hard negative's score raises the loss; it is a negative for every image.
    louder = neg.clone()
    louder[:, 0] += 5.0
    assert negclip_loss(lpi, louder) > out


def test_negclip_all_negatives_masked_equals_clip():
    lpi = _randn(4, 4, seed=8)
    neg = _randn(4, 5, seed=9)
    neg_poison = neg.clone().fill_(float("nan")).requires_grad_(True)
    for mask in (torch.zeros(5, dtype=torch.bool), torch.zeros(4, 5, dtype=torch.bool)):
        assert_close(negclip_loss(lpi, neg, negative_mask=mask), clip_loss(lpi))
    out = negclip_loss(lpi, neg_poison, negative_mask=torch.zeros(5, dtype=torch.bool))
    assert_close(out, clip_loss(lpi))
    out.backward()
    assert torch.all(neg_poison.grad == 0)
    # Distributed form too.
    lpi2, lpt2, t = _randn(2, 6, seed=1), _randn(2, 6, seed=2), torch.tensor([2, 3])
    assert_close(
        negclip_loss(lpi2, neg[:2], lpt2, t, negative_mask=torch.zeros(5, dtype=torch.bool)),
        clip_loss(lpi2, lpt2, t),
    )


def test_negclip_masked_negative_zero_gradient_and_gradcheck():
    lpi = _randn(3, 3, seed=10).requires_grad_(True)
    neg = _randn(3, 4, seed=11).requires_grad_(True)
    mask = torch.tensor([[True, False, True, True], [True, True, True, False], [False, True, True, True]])
    negclip_loss(lpi, neg, negative_mask=mask).backward()
    assert torch.all(neg.grad[~mask] == 0) and torch.all(neg.grad[mask] != 0)
    assert torch.autograd.gradcheck(lambda a, b: negclip_loss(a, b, negative_mask=mask), (lpi.detach().requires_grad_(),
                                                                                        neg.detach().requires_grad_()))


def test_negclip_errors():
    with pytest.raises(ValueError, match="negative_logits"):
        negclip_loss(torch.zeros(3, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="negative_logits"):
        negclip_loss(torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="negative_mask"):
        negclip_loss(torch.zeros(3, 3), torch.zeros(3, 4), negative_mask=torch.ones(3, dtype=torch.bool))
    # A target pointing into the negative columns is out of range.
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        negclip_loss(torch.zeros(3, 3), torch.zeros(3, 4), torch.zeros(3, 3), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="square"):
        negclip_loss(torch.zeros(3, 6), torch.zeros(3, 4))


# ----------------------------------------------------------------------------- CF-VLM hinges


@pytest.mark.parametrize("b,k", [(1, 1), (4, 4), (5, 2), (3, 7)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.2, 1.0])
def test_csd_matches_reference(b, k, masked, margin):
    fact = _randn(b, seed=b, scale=0.5)
    cf = _randn(b, k, seed=k + 10, scale=0.5)
    mask = _randmask(b, k, seed=b * k) if masked else None
    _check(counterfactual_separation_loss(fact, cf, margin, mask=mask), ref_csd(fact, cf, margin, mask))


@pytest.mark.parametrize("b,k", [(1, 1), (4, 4), (5, 2), (3, 7)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.2, 1.0])
def test_fcd_matches_reference(b, k, masked, margin):
    fact = _randn(b, seed=b, scale=0.5)
    edited = _randn(b, k, seed=k + 20, scale=0.5)
    mask = _randmask(b, k, seed=b * k + 3) if masked else None
    if masked:
        mask[0] = False  # a row without any edited image is left out
    _check(fine_grained_discrimination_loss(fact, edited, margin, mask=mask), ref_fcd(fact, edited, margin, mask))


def test_hinges_hand_computed():
    fact = torch.tensor([0.75])
    other = torch.tensor([[0.25]])
    for fn in (counterfactual_separation_loss, fine_grained_discrimination_loss):
        assert fn(fact, other, 0.5).item() == 0.0  # gap 0.5 meets margin 0.5 exactly
        assert fn(fact, other, 0.25).item() == 0.0  # gap beyond margin
        assert fn(fact, other, 1.0).item() == 0.5  # margin - gap = 1.0 - 0.5
    # csd averages every counterfactual; fcd only the hardest.
    fact = torch.tensor([1.0, 0.5])
    other = torch.tensor([[0.5, 0.75], [0.0, 0.25]])
    # csd terms (margin 0.5): [0, 0.25, 0, 0.25] -> 0.125 ; fcd: rows [0.25, 0.25] -> 0.25
    assert counterfactual_separation_loss(fact, other, 0.5).item() == 0.125
    assert fine_grained_discrimination_loss(fact, other, 0.5).item() == 0.25
    mask = torch.tensor([[True, False], [False, False]])
    assert counterfactual_separation_loss(fact, other, 0.5, mask=mask).item() == 0.0
    assert fine_grained_discrimination_loss(fact, other, 0.5, mask=mask).item() == 0.0
    mask = torch.tensor([[False, True], [True, True]])
    assert counterfactual_separation_loss(fact, other, 0.5, mask=mask).item() == pytest.approx(0.5 / 3)


def _away_from_kinks(b, k, margin, seed):
    """Scores whose hinge arguments are >= 0.1 away from 0 and whose row maxima are unique."""
    g = _gen(seed)
    fact = torch.rand(b, generator=g, dtype=torch.float64)
    # Offsets from the kink: alternate clearly active / clearly inactive, distinct per row.
    offs = torch.linspace(-1.0, 1.0, k, dtype=torch.float64).repeat(b, 1)
    offs = offs + 0.15 * torch.sign(offs + 1e-9) + 0.01 * torch.arange(b, dtype=torch.float64)[:, None]
    other = fact[:, None] - margin + offs
    return fact, other


def test_hinge_gradcheck():
    margin = 0.3
    fact, other = _away_from_kinks(3, 4, margin, seed=0)
    mask = torch.tensor([[True, True, False, True], [False, True, True, True], [False, False, False, False]])
    for fn in (counterfactual_separation_loss, fine_grained_discrimination_loss):
        for m in (None, mask):
            assert torch.autograd.gradcheck(
                lambda f, o: fn(f, o, margin, mask=m),
                (fact.clone().requires_grad_(), other.clone().requires_grad_()),
            )


def test_hinge_masked_entries_zero_gradient():
    fact = torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64, requires_grad=True)
    other = torch.tensor([[0.9, float("nan"), 0.8], [float("inf"), 0.7, 0.1], [float("nan")] * 3], dtype=torch.float64)
    mask = torch.isfinite(other)
    other.requires_grad_(True)
    for fn, ref in ((counterfactual_separation_loss, ref_csd), (fine_grained_discrimination_loss, ref_fcd)):
        fact.grad = other.grad = None
        out = fn(fact, other, 0.2, mask=mask)
        assert torch.isfinite(out)
        _check(out, ref(fact.detach(), torch.nan_to_num(other.detach(), posinf=0.0), 0.2, mask))
        out.backward()
        assert torch.all(other.grad[~mask] == 0)
        assert fact.grad[2] == 0  # the row with no valid entry contributes nothing


def test_hinge_no_valid_entry_is_connected_zero():
    fact = torch.randn(3, requires_grad=True)
    other = torch.randn(3, 4, requires_grad=True)
    none = torch.zeros(3, 4, dtype=torch.bool)
    for fn in (counterfactual_separation_loss, fine_grained_discrimination_loss):
        out = fn(fact, other, 0.2, mask=none)
        assert out.item() == 0.0 and out.requires_grad
        out.backward()
    assert torch.all(fact.grad == 0) and torch.all(other.grad == 0)
    # K = 0 / B = 0 too.
    for fn in (counterfactual_separation_loss, fine_grained_discrimination_loss):
        out = fn(fact, torch.zeros(3, 0, requires_grad=True), 0.2)
        assert out.item() == 0.0 and out.requires_grad
        assert fn(torch.zeros(0), torch.zeros(0, 4), 0.2).item() == 0.0


def test_fcd_uses_only_the_hardest_edited_image():
    fact = torch.tensor([0.5, 0.6], dtype=torch.float64)
    edited = torch.tensor([[0.4, 0.1, 0.2], [0.3, 0.55, 0.0]], dtype=torch.float64, requires_grad=True)
    out = fine_grained_discrimination_loss(fact, edited, 0.2)
    out.backward()
    expected_grad = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)
    assert_close(edited.grad, expected_grad)
    changed = edited.detach().clone()
    changed[0, 1] = 0.39  # still below the row max
    changed[1, 2] = -3.0
    assert_close(fine_grained_discrimination_loss(fact, changed, 0.2), out.detach())
    # The hardest masked-out image does not count: the next valid one becomes the hardest.
    mask = torch.tensor([[False, True, True], [True, True, True]])
    # row 0: hardest valid is 0.2 -> max(0, 0.2 - 0.5 + 0.2) = 0; row 1: 0.2 - 0.6 + 0.55 = 0.15
    _check(fine_grained_discrimination_loss(fact, edited.detach(), 0.2, mask=mask), (0.0 + 0.15) / 2)
    # With a margin large enough for every hinge to be active, fcd still moves only the
    # row maxima while csd is moved by every counterfactual.
    fcd_in = edited.detach().clone().requires_grad_(True)
    fine_grained_discrimination_loss(fact, fcd_in, 2.0).backward()
    assert (fcd_in.grad != 0).sum() == 2
    cf = edited.detach().clone().requires_grad_(True)
    counterfactual_separation_loss(fact, cf, 2.0).backward()
    assert (cf.grad != 0).sum() == 6


def test_hinge_errors():
    f, o = torch.zeros(3), torch.zeros(3, 4)
    for fn, name in ((counterfactual_separation_loss, "counterfactual_scores"),
                     (fine_grained_discrimination_loss, "edited_image_scores")):
        with pytest.raises(ValueError, match="factual_scores"):
            fn(torch.zeros(3, 1), o, 0.2)
        with pytest.raises(ValueError, match=name):
            fn(f, torch.zeros(2, 4), 0.2)
        with pytest.raises(ValueError, match=name):
            fn(f, torch.zeros(3), 0.2)
        with pytest.raises(ValueError, match="mask"):
            fn(f, o, 0.2, mask=torch.ones(3, 3, dtype=torch.bool))
        with pytest.raises(ValueError, match="bool"):
            fn(f, o, 0.2, mask=torch.ones(3, 4))
        with pytest.raises(ValueError, match="margin"):
            fn(f, o, torch.tensor(0.2))


# ----------------------------------------------------------------------------- dtypes / devices


def _all_losses(s, t, f, o):
    """s: [4, 4] logits, t: [4, 4] text logits, f: [4] factual, o: [4, 3] other scores."""
    return {
        "info_nce": info_nce(s),
        "clip": clip_loss(s, t),
        "negclip": negclip_loss(s, o[:, :3], t),
        "csd": counterfactual_separation_loss(f, o, 0.2),
        "fcd": fine_grained_discrimination_loss(f, o, 0.2),
    }


def test_bf16_inputs_give_float32_close_to_fp32():
    s, t = _randn(4, 4, seed=1, dtype=torch.float32), _randn(4, 4, seed=2, dtype=torch.float32)
    f, o = _randn(4, seed=3, dtype=torch.float32, scale=0.3), _randn(4, 3, seed=4, dtype=torch.float32, scale=0.3)
    ref = _all_losses(s, t, f, o)
    bf = [x.bfloat16().requires_grad_(True) for x in (s, t, f, o)]
    got = _all_losses(*bf)
    exact = _all_losses(*(x.detach().float() for x in bf))
    for name in ref:
        assert got[name].dtype == torch.float32, name
        assert_close(got[name], exact[name])  # the arithmetic itself is float32
        assert_close(got[name], ref[name], atol=3e-2, rtol=1e-2)  # only the input rounding differs
    sum(got.values()).backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 for x in bf)
    # Large bf16 logits would overflow a naive half-precision softmax; still finite here.
    big = (torch.eye(4) * 300).bfloat16()
    assert torch.isfinite(clip_loss(big)) and clip_loss(big).item() == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    s, t = _randn(4, 4, seed=1, dtype=torch.float32), _randn(4, 4, seed=2, dtype=torch.float32)
    f, o = _randn(4, seed=3, dtype=torch.float32), _randn(4, 3, seed=4, dtype=torch.float32)
    cpu = _all_losses(s, t, f, o)
    gpu = _all_losses(*(x.cuda().bfloat16() for x in (s, t, f, o)))
    for name in cpu:
        assert gpu[name].device.type == "cuda" and gpu[name].dtype == torch.float32
        assert_close(gpu[name].cpu(), cpu[name], atol=3e-2, rtol=1e-2)
    m = torch.ones(4, 4, dtype=torch.bool, device="cuda")
    m[0, 1] = False
    assert_close(info_nce(s.cuda(), column_mask=m).cpu(), info_nce(s, column_mask=m.cpu()))


def test_cfvlm_weights():
    w = CFVLMLossWeights()
    assert (w.alpha, w.beta, w.gamma) == (1.0, 0.45, 0.55)
    out = w.combine(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(1.0))
    assert_close(out, torch.tensor(3.0))


def test_record_local_contrastive_loss_by_hand():
    import math

    from hf_counterfactual.losses import record_local_contrastive_loss

    factual = torch.tensor([2.0, 1.0, 0.5], requires_grad=True)
    text = torch.tensor([[1.0, 0.0], [float("nan"), 3.0], [0.0, 0.0]])  # the NaN is masked out
    image = torch.tensor([[0.5, 9.0], [1.0, 1.0], [2.0, 2.0]])
    text_mask = torch.tensor([[True, True], [False, True], [False, False]])  # record 2: no caption negative
    image_mask = torch.tensor([[True, False], [True, True], [False, False]])  # record 2: no edited image
    value = record_local_contrastive_loss(factual, text, image, text_mask=text_mask, image_mask=image_mask)

    def nce(positive, negatives):
        return -positive + math.log(math.exp(positive) + sum(math.exp(n) for n in negatives))

    text_side = (nce(2.0, [1.0, 0.0]) + nce(1.0, [3.0])) / 2  # record 2 has no text negative: left out
    image_side = (nce(2.0, [0.5]) + nce(1.0, [1.0, 1.0])) / 2
    assert value.item() == pytest.approx((text_side + image_side) / 2, rel=1e-6)
    value.backward()
    assert torch.isfinite(factual.grad).all() and factual.grad[2] == 0  # nothing to contrast with record 2

    # No image negatives anywhere: the text side alone (not halved); nothing at all: a connected zero.
    none = torch.zeros_like(image_mask)
    alone = record_local_contrastive_loss(factual, text, image, text_mask=text_mask, image_mask=none)
    assert alone.item() == pytest.approx(text_side, rel=1e-6)
    zero = record_local_contrastive_loss(factual, text, image, text_mask=none, image_mask=none)
    assert zero.item() == 0 and zero.requires_grad


def naive_sigmoid_loss(logits, targets, negatives, row_mask, column_mask, negative_mask):
    """Loops over SigLIP's equation: -log sigmoid(+/- logit) summed over each kept row's kept pairs."""
    total, rows = 0.0, 0
    for i in range(len(logits)):
        if not row_mask[i]:
            continue
        rows += 1
        for j in range(logits.shape[1]):
            if j == targets[i] or column_mask[i][j]:
                label = 1.0 if j == targets[i] else -1.0
                total += math.log1p(math.exp(-label * float(logits[i][j])))
        for x in range(negatives.shape[1]):
            if negative_mask[i][x]:
                total += math.log1p(math.exp(float(negatives[i][x])))
    return total / max(rows, 1)


def test_sigmoid_loss_matches_the_naive_equation_with_masks_and_gradients():
    from hf_counterfactual.losses import sigmoid_loss

    torch.manual_seed(0)
    logits, negatives = torch.randn(4, 6, dtype=torch.float64) * 3, torch.randn(4, 5, dtype=torch.float64) * 3
    targets = torch.tensor([1, 0, 5, 2])
    row_mask = torch.tensor([True, True, False, True])
    column_mask = torch.rand(4, 6) > 0.3
    column_mask[0, 1] = False  # a masked target is still the row's positive
    negative_mask = torch.rand(4, 5) > 0.4
    value = sigmoid_loss(logits, targets, negatives, row_mask=row_mask, column_mask=column_mask, negative_mask=negative_mask)
    assert value.item() == pytest.approx(naive_sigmoid_loss(logits, targets, negatives, row_mask, column_mask, negative_mask), rel=1e-10)
    inputs = (logits.clone().requires_grad_(), negatives.clone().requires_grad_())
    assert torch.autograd.gradcheck(
        lambda a, b: sigmoid_loss(a, targets, b, row_mask=row_mask, column_mask=column_mask, negative_mask=negative_mask), inputs
    )
    # A left-out placeholder (the masked row's, a masked pair's) reaches neither the value nor the gradient.
    poisoned = logits.clone()
    poisoned[2] = float("nan")
    poisoned[3, ~column_mask[3]] = float("inf")
    poisoned[3, targets[3]] = logits[3, targets[3]]
    poisoned.requires_grad_()
    again = sigmoid_loss(poisoned, targets, negatives, row_mask=row_mask, column_mask=column_mask, negative_mask=negative_mask)
    assert again.item() == pytest.approx(value.item(), rel=1e-12)
    again.backward()
    assert torch.isfinite(poisoned.grad).all() and (poisoned.grad[2] == 0).all()
    with pytest.raises(ValueError, match="negative_logits must have N=4 rows"):
        sigmoid_loss(logits, targets, negatives[:3])
