"""Peers FLOAT is measured against (benchmarks only, not part of the library).

OAT/FiLM, written from its published description (Wang et al., NeurIPS 2020): every BatchNorm becomes a
dual BatchNorm followed by a FiLM layer whose per-channel γ, β come from a 2-layer MLP
``Linear(d, 2C) -> LeakyReLU -> Linear(2C, 2C)`` fed with an encoding of λ (here: a fixed random
d-dimensional projection of λ followed by a sine, d = 128).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from floatify.context import get_lam

ENC_DIM = 128


class LamEncoding(nn.Module):
    def __init__(self, dim: int = ENC_DIM):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("freq", torch.randn(dim, generator=g) * math.pi)
        self.register_buffer("phase", torch.rand(dim, generator=g) * 2 * math.pi)

    def forward(self) -> torch.Tensor:
        lam = get_lam()
        return torch.sin(lam * self.freq + self.phase)


class FiLMBatchNorm(nn.Module):
    """Dual BatchNorm + FiLM conditioned on λ (the OAT layer)."""

    def __init__(self, bn: nn.BatchNorm2d, encoding: LamEncoding):
        super().__init__()
        c = bn.num_features
        self.bn_clean, self.bn_adv = bn, nn.BatchNorm2d(c)
        self.bn_adv.load_state_dict(bn.state_dict())
        self.mlp = nn.Sequential(nn.Linear(ENC_DIM, 2 * c), nn.LeakyReLU(0.2), nn.Linear(2 * c, 2 * c))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        object.__setattr__(self, "encoding", encoding)  # shared, not a submodule per layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn_adv(x) if get_lam() > 0 else self.bn_clean(x)
        gamma, beta = self.mlp(self.encoding().to(x.dtype)).chunk(2)
        return out * (1 + gamma.view(1, -1, 1, 1)) + beta.view(1, -1, 1, 1)


def filmify(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of ``model`` (in place) by an OAT FiLM block."""
    encoding = LamEncoding()
    model.add_module("film_encoding", encoding)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, FiLMBatchNorm(child, encoding))
            else:
                swap(child)

    swap(model)
    return model
