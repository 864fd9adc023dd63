"""Models and settings for the audit's tests (tests/test_audit.py, tests/test_audit_checks.py): a plain PGD-AT
MLP on the 8 px digits and two ways of masking its gradients."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from floatify.audit import AuditConfig
from floatify.data import DatasetBundle, load_dataset

EPS = 0.1  # the digits' training eps (make demo)
FAST = AuditConfig(subset=100, steps=10, eot_draws=2, square_queries=200)
EVAL = {"eps": EPS, "steps": 10, "eot_draws": 2, "score_draws": 2, "limit": 100, "progress": False}


class InputQuantisation(nn.Module):
    """``round(4x)/4`` before the model, no straight-through: the input gradient is zero almost everywhere."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 4) / 4)


class Temperature(nn.Module):
    """Logits × 1e4: the softmax saturates, so the cross-entropy and its gradient vanish on confident points."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1e4


@functools.cache
def digits() -> DatasetBundle:
    return load_dataset("digits", image_size=8, augment="none")


def pgd_at() -> nn.Module:
    """A plain MLP adversarially trained (PGD, eps 0.1) on the 8 px digits: a second of training (seeded: each test
    module trains its own, so its tests draw the same random numbers whichever modules run before it)."""
    import torchattacks

    torch.manual_seed(0)
    x = torch.stack([digits().train[i][0] for i in range(len(digits().train))])
    y = torch.tensor([int(digits().train[i][1]) for i in range(len(digits().train))])
    net = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(15):
        order = torch.randperm(len(y))
        for i in range(0, len(y), 128):
            idx = order[i:i + 128]
            x_adv = torchattacks.PGD(net, eps=EPS, alpha=EPS / 4, steps=5)(x[idx], y[idx])
            loss = nn.functional.cross_entropy(net.train()(x_adv), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()
