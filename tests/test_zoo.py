"""Conversion over the timm + torchvision model zoo (random init, small inputs, no downloads)."""

from __future__ import annotations

import pytest
import torch

import floatify

from helpers import alpha_grads_at, alphas, wake_up
from zoo_models import TIMM_CASES, TORCHVISION_CASES, ZOO


def _params(case):
    return pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.slow else [])


def test_zoo_is_wide_enough():
    assert len(TIMM_CASES) >= 40
    assert len({c.family.split(" ")[0] for c in TIMM_CASES}) >= 30
    tv_families = {c.family.split(" ")[0] for c in TORCHVISION_CASES}
    expected = {"alexnet", "convnext", "densenet", "efficientnet", "efficientnet_v2", "googlenet", "inception",
                "maxvit", "mnasnet", "mobilenet_v2", "mobilenet_v3", "regnet", "resnet", "resnext", "shufflenet_v2",
                "squeezenet", "swin", "swin_v2", "vgg", "vit", "wide_resnet"}
    assert expected <= tv_families, expected - tv_families


@pytest.mark.parametrize("case", [_params(c) for c in ZOO])
def test_zoo_conversion(case):
    original = wake_up(case.build()).eval()
    x = torch.rand(2, 3, case.input_size, case.input_size)
    with torch.no_grad():
        expected = original(x)
    model = floatify.convert(original)

    assert type(model) is type(original)
    with torch.no_grad():
        assert torch.equal(model(x), expected), "λ = 0 must reproduce the original bitwise"
    s = floatify.summary(model)
    assert s.skipped == [], s.skipped
    assert len(s.conditioned) == len(alphas(model)) > 0
    bn_affine = sum(2 * r.shape[0] for r in s.dual_bn if model.get_submodule(r.fqn).affine)
    assert s.added_params == len({id(a) for a in alphas(model).values()}) + bn_affine

    grads = alpha_grads_at(model, x, lam=1.0)
    dead = sorted(k for k, g in grads.items() if not g > 0)
    assert not dead, f"{len(dead)}/{len(grads)} α got no gradient at λ = 1: {dead[:8]}"
