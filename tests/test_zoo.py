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
    """Breadth counted from timm's and torchvision's own registries, not from the labels in zoo_models.py."""
    import timm
    import torchvision
    from timm.models import is_model_in_modules, list_modules

    unknown = [c.name for c in TIMM_CASES if not timm.is_model(c.name)]
    assert not unknown, f"not timm models: {unknown}"
    timm_sources = {m for m in list_modules() if any(is_model_in_modules(c.name, [m]) for c in TIMM_CASES)}
    assert len(TIMM_CASES) >= 40 and len(timm_sources) >= 30, sorted(timm_sources)
    tv_sources = set()  # the torchvision.models source file of every architecture
    for case in TORCHVISION_CASES:
        name = case.name.removeprefix("tv_")
        if name in torchvision.models.list_models():
            tv_sources.add(torchvision.models.get_model_builder(name).__module__.rsplit(".", 1)[1])
        else:  # a toy-sized build of a torchvision class
            tv_sources.add(type(case.build()).__module__.rsplit(".", 1)[1])
    expected = {"alexnet", "convnext", "densenet", "efficientnet", "googlenet", "inception", "maxvit", "mnasnet",
                "mobilenetv2", "mobilenetv3", "regnet", "resnet", "shufflenetv2", "squeezenet", "swin_transformer",
                "vgg", "vision_transformer"}
    assert expected <= tv_sources, expected - tv_sources


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
