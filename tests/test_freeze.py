"""freeze(): plain layers, one draw baked in, original keys, torch.export."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.layers import is_conditioned

from cases import CASES
from helpers import wake_up

NAMES = sorted(CASES)


def build(name):
    builder, shape = CASES[name]
    torch.manual_seed(0)
    return wake_up(builder()).eval(), torch.rand(shape)


@pytest.mark.parametrize("name", NAMES)
def test_freeze_at_zero_reproduces_original(name):
    original, x = build(name)
    model = floatify.convert(original)
    plain = floatify.freeze(model, 0.0)
    assert set(plain.state_dict()) == set(original.state_dict())
    assert not any(is_conditioned(m) for m in plain.modules())
    assert all(type(a) is type(b) for a, b in zip(plain.modules(), original.modules()))
    assert torch.equal(plain(x), original(x))


@pytest.mark.parametrize("name", NAMES)
def test_freeze_bakes_one_seeded_draw(name):
    model, x = build(name)
    model = floatify.convert(model)
    a = floatify.freeze(model, 0.5, seed=7)
    b = floatify.freeze(model, 0.5, seed=7)
    c = floatify.freeze(model, 0.5, seed=8)
    assert torch.equal(a(x), b(x))  # the same seed bakes the same draw
    assert not torch.equal(a(x), c(x))
    with floatify.lam(1.0):  # a frozen model no longer follows λ
        assert torch.equal(a(x), b(x))
    # the frozen model computes what the converted one does at λ = 0.5 with that one draw held fixed:
    # W + λ·α·std(W)·η, η from a generator seeded 7, drawn layer by layer in module order, once per weight
    # Parameter (a weight tied between layers gets one draw)
    expected = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7)
    drawn = set()
    with torch.no_grad():
        for m in expected.modules():
            for w in getattr(type(m), "_floatify_weights", ()):
                alpha = m._parameters.get(w + "_alpha")
                weight = m._parameters.get(w)
                if alpha is not None and weight is not None and id(weight) not in drawn:
                    drawn.add(id(weight))
                    weight.add_(0.5 * alpha * weight.std() * torch.randn(weight.shape, generator=g))
    with floatify.lam(0.5, noise=False):  # the λ = 0.5 BatchNorm, no fresh noise
        assert torch.allclose(a(x), expected(x), atol=1e-5)


@pytest.mark.parametrize("bn_mix, bn_curve, lam, adv_share", [
    ("interpolate", 1.0, 0.2, 0.2),
    ("interpolate", 0.5, 0.25, 0.5),     # the mixing weight is λ ** bn_curve
    ("interpolate", 0.7, 1.0, 1.0),
    ("interpolate", 0.7, 0.0, 0.0),
    ("switch", 0.7, 0.2, 1.0),           # the reference: the adversarial set at every λ > 0
])
def test_freeze_bakes_the_batchnorm_the_model_reads_at_lam(bn_mix, bn_curve, lam, adv_share):
    torch.manual_seed(0)
    config = floatify.FloatConfig(bn_mix=bn_mix, bn_curve=bn_curve)
    model = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), config).eval()
    with torch.no_grad():
        model[1].weight_adv.fill_(3.0)
        model[1].running_mean_adv.fill_(0.5)
    frozen = floatify.freeze(model, lam)
    assert torch.allclose(frozen[1].weight, torch.full((4,), 1.0 + 2.0 * adv_share))
    assert torch.allclose(frozen[1].running_mean, torch.full((4,), 0.5 * adv_share))
    x = torch.rand(5, 4)
    with floatify.lam(lam, noise=False):  # what the converted model computes there without fresh noise
        eager = model(x)
    with torch.no_grad():
        frozen[0].weight.copy_(model[0].weight)  # reason: compare the BatchNorm alone, not the baked draw
    assert torch.allclose(frozen(x), eager, atol=1e-6)


def test_freeze_noise_scale():
    torch.manual_seed(0)
    model = floatify.convert(nn.Linear(512, 512, bias=False))
    w = model._parameters["weight"].detach().clone()
    delta = floatify.freeze(model, 0.8, seed=0).weight.detach() - w
    assert delta.std().item() == pytest.approx(0.8 * 0.25 * w.std().item(), rel=0.02)


def test_frozen_model_exports():
    import timm

    model = floatify.convert(timm.create_model("resnet10t", num_classes=3)).eval()
    plain = floatify.freeze(model, 0.3, seed=0)
    x = torch.rand(1, 3, 32, 32)
    exported = torch.export.export(plain, (x,))
    assert torch.allclose(exported.module()(x), plain(x), atol=1e-5)


def test_freeze_errors():
    with pytest.raises(ValueError, match="converted model"):
        floatify.freeze(nn.Linear(2, 2), 0.5)
    with pytest.raises(ValueError, match="lam"):
        floatify.freeze(floatify.convert(nn.Linear(2, 2)), 1.5)


def test_freeze_inplace():
    model = floatify.convert(nn.Linear(2, 2))
    out = floatify.freeze(model, 0.0, inplace=True)
    assert out is model and type(model) is nn.Linear


@pytest.mark.parametrize("inplace", [False, True])
def test_freeze_draws_a_tied_weight_once_and_keeps_it_tied(inplace):
    torch.manual_seed(0)
    first, second = nn.Linear(256, 256, bias=False), nn.Linear(256, 256, bias=False)
    second.weight = first.weight  # one Parameter used by two layers (e.g. tied embeddings/decoder)
    model = floatify.convert(nn.Sequential(first, nn.ReLU(), second))
    w = model[0]._parameters["weight"].detach().clone()
    alpha = model[0]._parameters["weight_alpha"].detach().clone()
    plain = floatify.freeze(model, 0.8, seed=3, inplace=inplace)
    assert plain[0].weight is plain[2].weight, "the frozen model must still share the weight"
    # exactly the one draw freeze bakes into a single layer with this seed: W + λ·α·std(W)·η
    eta = torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(plain[2].weight.detach(), w + 0.8 * alpha * w.std() * eta, rtol=0, atol=1e-6)
    delta = plain[0].weight.detach() - w
    assert delta.std().item() == pytest.approx(0.8 * alpha.item() * w.std().item(), rel=0.02)  # not √2 × that


# a seed freeze cannot use -> one line naming it (not torch's "manual_seed expected a long")
BAD_SEEDS = [("x", TypeError, "seed \\(of the noise draw\\) must be an int >= 0 or None, got 'x'"),
             (1.5, TypeError, "seed"), (True, TypeError, "seed"),
             (-1, ValueError, "seed \\(of the noise draw\\) must be an int >= 0, got -1"),
             (2**64, ValueError, "must be an int below 2\\*\\*64")]


@pytest.mark.parametrize("seed, error, message", BAD_SEEDS, ids=[repr(r[0]) for r in BAD_SEEDS])
def test_freeze_refuses_a_seed_it_cannot_use(seed, error, message):
    with pytest.raises(error, match=message):
        floatify.freeze(build(NAMES[0]), 0.5, seed=seed)
