"""The linear probe the ``probe_*.py`` scripts share: a torch logistic regression (scikit-learn is
not a dependency), fit with L-BFGS on standardised features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def probe_accuracy(train_x, train_y, test_x, test_y, classes: int | None = None, steps: int = 300, weight_decay: float = 1e-3) -> float:
    """Test accuracy of a linear probe fit on ``(train_x, train_y)``: binary (float labels 0 / 1, one
    logit) when ``classes`` is None, else softmax over ``classes`` (integer labels)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    shape = (train_x.shape[1],) if classes is None else (train_x.shape[1], classes)
    weight = torch.zeros(shape, requires_grad=True)
    bias = torch.zeros(shape[1:], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")
    loss_fn = F.binary_cross_entropy_with_logits if classes is None else F.cross_entropy

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(train_x @ weight + bias, train_y) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        logits = test_x @ weight + bias
        predicted = (logits > 0).float() if classes is None else logits.argmax(1)
        return float((predicted == test_y).float().mean())
