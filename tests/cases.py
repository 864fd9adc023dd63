"""Small architectures covering every conversion path, shared by the table-driven tests."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SharedBlock(nn.Module):
    """One Linear called twice: one site, one α."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.fc(torch.relu(self.bn(self.fc(x)))))


class TiedLinears(nn.Module):
    """Two Linear layers holding the same weight Parameter."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class FunctionalQKV(nn.Module):
    """Reads a Linear's weight functionally, as timm beit/eva and torchvision swin do."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(24))
        self.proj = nn.Linear(8, 3)

    def forward(self, x):
        qkv = F.linear(x, self.qkv.weight, self.q_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        return self.proj(q * torch.sigmoid(k) + v)


class WithMHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = x.view(x.shape[0], 1, 8).expand(-1, 4, -1)
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


def mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
        nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )


def conv1d3d():
    return nn.Sequential(
        nn.Unflatten(1, (1, 8)), nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Unflatten(1, (1, 4, 6)),
        nn.Unflatten(3, (2, 3)), nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2), nn.Flatten(), nn.Linear(48, 3),
    )


def timm_resnet():
    import timm

    return timm.create_model("resnet10t", num_classes=3)


# name -> (builder, input shape)
CASES = {
    "mlp": (mlp, (4, 8)),
    "cnn": (cnn, (4, 3, 8, 8)),
    "conv1d3d": (conv1d3d, (4, 8)),
    "shared": (SharedBlock, (4, 8)),
    "tied": (TiedLinears, (4, 8)),
    "functional_qkv": (FunctionalQKV, (4, 8)),
    "mha": (WithMHA, (4, 8)),
    "timm_resnet10t": (timm_resnet, (2, 3, 32, 32)),
}
