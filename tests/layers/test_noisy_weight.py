"""floatify.layers.noisy_weight: std(W), and the noisy weight's fast inference paths — eager, and the
``floatify::noisy_weight`` operator a compiled CPU forward calls (the same draws as eager, chosen only where safe)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
import torch.nn as nn

import floatify
from floatify.layers.noise import noise_source
from floatify.layers.noisy_weight import _OP_STDS, noisy_weight_op, weight_std

OP = "floatify.noisy_weight"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))).eval()


def test_the_operator_adds_lam_alpha_std_times_a_fresh_standard_normal_window():
    w, alpha = torch.randn(256, 256), torch.tensor(0.5)
    a, b = noisy_weight_op(w, alpha, torch.tensor(0.8)), noisy_weight_op(w, alpha, torch.tensor(0.8))
    eta = (a - w) / (0.8 * 0.5 * weight_std(w, None))
    assert not torch.equal(a, b)  # a fresh offset per call
    assert abs(eta.mean().item()) < 0.02 and abs(eta.std().item() - 1) < 0.02


def test_the_operators_std_follows_a_write_through_data():
    w, alpha, lam = torch.randn(64, 64), torch.tensor(1.0), torch.tensor(1.0)
    _OP_STDS.clear()
    before = (noisy_weight_op(w, alpha, lam) - w).std().item()
    w.data.mul_(100)  # the version stays; the probe of the cache key sees it
    after = (noisy_weight_op(w, alpha, lam) - w).std().item()
    assert after == pytest.approx(100 * before, rel=0.1)


def _graphs(model: nn.Module, x: torch.Tensor, *, grad: bool, source: str = "bank") -> tuple[torch.Tensor, str]:
    """One compiled forward at λ = 1 (graphs recorded, run as aot_eager would): its output and its graphs' code."""
    torch._dynamo.reset()
    backend = torch._dynamo.testing.EagerAndRecordGraphs()
    compiled = torch.compile(model, backend=backend)
    with noise_source(source), floatify.lam(1.0), (contextlib.nullcontext() if grad else torch.no_grad()):
        out = compiled(x)
    return out, "\n".join(g.code for g in backend.graphs)


# when a compiled forward calls the operator: CPU, no autograd, dense weights, the bank; never otherwise
CHOICES = [
    ("inference (no grad)", dict(grad=False), True),
    ("autograd on (training with fresh draws per forward)", dict(grad=True), False),
    ("fresh noise source", dict(grad=False, source="fresh"), False),
]


@pytest.mark.parametrize("name, kw, uses_op", CHOICES, ids=[c[0] for c in CHOICES])
def test_a_compiled_forward_calls_the_operator_only_where_it_is_the_safe_fast_path(name, kw, uses_op):
    _, code = _graphs(_model(), torch.rand(2, 3, 6, 6), **kw)
    assert (OP in code) == uses_op, name


def test_a_sparse_layer_keeps_the_in_graph_draw():
    model = floatify.sparsify(_model(), 0.5)
    _, code = _graphs(model, torch.rand(2, 3, 6, 6), grad=False)
    assert OP not in code


def test_compiled_inference_draws_exactly_what_eager_inference_draws():
    model, x = _model(), torch.rand(2, 3, 6, 6)
    with torch.no_grad(), floatify.lam(1.0):
        torch.manual_seed(3)
        eager = model(x)  # the eager fast path: a bank window per weight at offsets from the default generator
    torch.manual_seed(3)
    compiled, code = _graphs(model, x, grad=False)
    assert OP in code and torch.allclose(compiled, eager, atol=1e-6)
    with torch.no_grad(), floatify.lam(1.0):
        assert not torch.equal(torch.compile(model, backend="aot_eager")(x), compiled)  # a new draw per call
