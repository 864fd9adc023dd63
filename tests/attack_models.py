"""Models and tasks shared by the attack tests (test_attacks, test_apgd, test_evaluate): a small converted CNN, and a
linear model whose exact robust accuracy is known."""

from __future__ import annotations

import torch
import torch.nn as nn

import floatify


def small_model():
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(6, 3))).eval()


D, K = 20, 3


class Linear3(nn.Module):
    """A 3-class linear model; ``scale`` saturates the softmax (cross-entropy gradients vanish) without
    changing any decision."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.scale = nn.Linear(D, K), scale

    def forward(self, x):
        return self.scale * self.fc(x.flatten(1))


def exact_robust_accuracy(fc: nn.Linear, x, y, eps) -> float:
    """A point of a linear model is robust iff every margin survives eps·‖w_y − w_j‖₁ (box never binds here)."""
    w, b = fc.weight.detach(), fc.bias.detach()
    z = x @ w.T + b
    robust = torch.ones(len(y), dtype=torch.bool)
    for j in range(K):
        margin = z.gather(1, y[:, None]).squeeze(1) - z[:, j] - eps * (w[y] - w[j]).abs().sum(1)
        robust &= (margin > 0) | (y == j)
    return robust.float().mean().item()


def linear_task(scale: float = 1.0, n: int = 300):
    model = floatify.convert(Linear3(scale)).eval()
    x = 0.3 + 0.4 * torch.rand(n, D, generator=torch.Generator().manual_seed(1))  # interior: [0, 1] never binds
    with torch.no_grad():
        y = model(x).argmax(1)  # every point clean-correct
    return model, x, y
