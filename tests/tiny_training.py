"""A tiny converted model and data for the training tests (test_losses, test_train, test_run_state)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import floatify


def tiny_model(config: floatify.FloatConfig | None = None) -> nn.Module:
    """Conv, BatchNorm, Linear: converted, seeded (the same weights on every call)."""
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                          nn.Flatten(), nn.Linear(4, 3)), config)


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def loader(n: int = 32, bs: int = 8, shuffle: bool = True) -> DataLoader:
    """``n`` random 3×6×6 images in 3 classes; shuffled by a seeded generator of its own."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(data, batch_size=bs, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    """Every state_dict entry of ``a`` and ``b`` bit for bit equal (and the same keys)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Stop(Exception):
    """Raised by :func:`stop_after` to interrupt a run, as a kill would."""


def stop_after(k: int):
    """An ``on_epoch_end`` hook that interrupts the run after epoch ``k`` (its checkpoint is written)."""

    def hook(epoch, record):
        if epoch == k:
            raise Stop

    return hook
