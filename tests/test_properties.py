"""Property tests: random small Conv/Linear/BN/activation stacks, with and without shared layers."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings

import floatify

from helpers import wake_up

# reason: no plain ReLU: a dead ReLU layer makes the output input-independent at any λ
ACTIVATIONS = [nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Identity]


class Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], reuse: int | None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.reuse = reuse  # index of a shape-preserving layer applied twice (a shared module)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == self.reuse:
                x = layer(x)
        return x


@st.composite
def architectures(draw):
    conv = draw(st.booleans())
    width = draw(st.integers(2, 6))
    n = draw(st.integers(1, 3))
    layers: list[nn.Module] = []
    reusable = []
    channels = 3 if conv else 5
    for _ in range(n):
        out = draw(st.integers(2, width))
        if conv:
            layers.append(nn.Conv2d(channels, out, draw(st.sampled_from([1, 3])), padding="same",
                                    bias=draw(st.booleans())))
        else:
            layers.append(nn.Linear(channels, out, bias=draw(st.booleans())))
        if out == channels:
            reusable.append(len(layers) - 1)
        channels = out
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(channels) if conv else nn.BatchNorm1d(channels))
        layers.append(draw(st.sampled_from(ACTIVATIONS))())
    if conv:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers.append(nn.Linear(channels, 3))
    reuse = draw(st.sampled_from(reusable)) if reusable and draw(st.booleans()) else None
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = wake_up(Stack(layers, reuse)).eval()
    x = torch.rand((4, 3, 6, 6) if conv else (4, 5))
    return model, x


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(architectures(), st.floats(0.05, 1.0))
def test_random_architectures(arch, lam):
    original, x = arch
    model = floatify.convert(original)
    with torch.no_grad():
        # λ = 0 is the original, bitwise
        assert torch.equal(model(x), original(x))
        # freeze(·, 0) round-trips to the original
        assert torch.equal(floatify.freeze(model, 0)(x), original(x))
        # state_dict round-trips into a fresh conversion
        twin = floatify.convert(original)
        twin.load_state_dict(model.state_dict())
        torch.manual_seed(1)
        with floatify.lam(lam):
            a = model(x)
        torch.manual_seed(1)
        with floatify.lam(lam):
            b = twin(x)
        assert torch.equal(a, b)
        # the output differs at λ = 1
        with floatify.lam(1.0):
            assert not torch.equal(model(x), original(x))
