"""FX-traced converted models keep following λ (functional weight reads included)."""

from __future__ import annotations

import pytest
import torch

import floatify
import floatify.fx

from cases import CASES
from helpers import alpha_grads_at, wake_up


@pytest.mark.parametrize("name", ["functional_qkv", "cnn", "shared"])
def test_symbolic_trace_keeps_conditioning(name):
    builder, shape = CASES[name]
    model = floatify.convert(wake_up(builder())).eval()
    x = torch.rand(shape)
    traced = floatify.fx.symbolic_trace(model)
    assert torch.equal(traced(x), model(x))
    torch.manual_seed(0)
    with floatify.lam(0.7):
        expected = model(x)
    torch.manual_seed(0)
    with floatify.lam(0.7):
        assert torch.equal(traced(x), expected)
    assert all(g > 0 for g in alpha_grads_at(traced, x).values())


class _FunctionalBatchNorm(torch.nn.Module):
    """Reads a BatchNorm's affine parameters and statistics functionally (conditioned layers are FX leaves)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(8)

    def forward(self, x):
        bn = self.bn
        return torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias)


@pytest.mark.parametrize("name", ["functional_qkv", "functional_bn"])
def test_a_trace_taken_at_lam_above_zero_bakes_in_no_draw_and_no_batchnorm_set(name):
    if name == "functional_bn":
        model = floatify.convert(torch.nn.Sequential(torch.nn.Linear(8, 8), _FunctionalBatchNorm())).eval()
        with torch.no_grad():
            model[1].bn.weight_adv.fill_(3.0)
            model[1].bn.running_mean_adv.fill_(0.5)
        x = torch.rand(4, 8)
    else:
        builder, shape = CASES[name]
        model, x = floatify.convert(wake_up(builder())).eval(), torch.rand(shape)
    with floatify.lam(1.0):
        traced = floatify.fx.symbolic_trace(model)
    assert torch.equal(traced(x), model(x))  # at λ = 0 still the original computation
    assert not [n for n, _ in traced.named_buffers() if "_tensor_constant" in n]


def test_plain_fx_trace_would_lose_functional_noise_and_the_pass_restores_it():
    model = floatify.convert(CASES["functional_qkv"][0]()).eval()
    x = torch.rand(4, 8)
    leaves = tuple(floatify.fx.leaf_modules())

    class T(torch.fx.Tracer):
        def is_leaf_module(self, m, q):
            return isinstance(m, leaves) or super().is_leaf_module(m, q)

    def qkv_alpha_grad(graph_module):
        model.zero_grad(set_to_none=True)
        with floatify.lam(1.0):
            graph_module(x).pow(2).sum().backward()
        return model.qkv.weight_alpha.grad

    gm = torch.fx.GraphModule(model, T().trace(model))
    assert qkv_alpha_grad(gm) is None, "without the pass, the qkv read is a frozen Parameter"
    floatify.fx.restore_conditioned_reads(gm, model)
    assert qkv_alpha_grad(gm).abs() > 0


def test_timm_feature_extractor_on_converted_beit():
    import timm

    model = floatify.convert(timm.create_model("beit_base_patch16_224", img_size=32, embed_dim=64, depth=2,
                                               num_heads=2, num_classes=3)).eval()
    features = floatify.fx.create_feature_extractor(model, ["blocks.1"])
    x = torch.rand(1, 3, 32, 32)
    out = features(x)["blocks.1"]
    assert torch.equal(out, model.forward_features(x)) or torch.allclose(out, model.forward_features(x), atol=1e-6)
    model.zero_grad()
    with floatify.lam(1.0):
        features(x)["blocks.1"].pow(2).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.endswith("qkv.weight_alpha")}
    assert grads and all(g is not None and g.abs() > 0 for g in grads.values())
