"""floatify.layers.dual_bn: the clean set at λ = 0, the adversarial set above, and the mix in between."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.convert import convert_sync_batchnorm
from floatify.layers.dual_bn import (
    BN_MIXES,
    bn_mix_weight,
    dual_bn_entries,
    get_bn_curve,
    get_bn_mix,
    mixed_bn_value,
    reset_dual_running_stats,
    set_bn_mix,
    validate_bn_curve,
)


def dual_bn(mix: str = "interpolate", curve: float = 1.0) -> nn.Module:
    """A converted BatchNorm1d(4): clean weight 1, running_mean 0; adversarial weight 3, running_mean 2."""
    model = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
                             floatify.FloatConfig(bn_mix=mix, bn_curve=curve))
    with torch.no_grad():
        model[1].weight_adv.fill_(3.0)
        model[1].running_mean_adv.fill_(2.0)
    return model[1].eval()


@pytest.mark.parametrize("mix, curve", [("switch", None), ("interpolate", 0.5), ("switch", 2), ("interpolate", 4.0)])
def test_set_bn_mix_sets_the_mix_and_the_curve(mix, curve):
    bn = dual_bn("interpolate", 1.0)
    set_bn_mix(bn, mix, curve)
    assert get_bn_mix(bn) == mix
    assert get_bn_curve(bn) == (1.0 if curve is None else float(curve))  # None keeps the current curve
    assert copy.deepcopy(bn).__dict__["_floatify_bn_mix"] == mix  # instance state: copies carry it


@pytest.mark.parametrize("mix, curve, error", [
    ("average", None, "bn_mix must be one of interpolate, switch, got 'average'"),
    ("interpolate", 0, "bn_curve must be a number in \\(0, 4\\]"),
    ("interpolate", 4.5, "bn_curve must be a number in \\(0, 4\\]"),
])
def test_set_bn_mix_refuses_a_bad_mix_or_curve(mix, curve, error):
    bn = dual_bn("switch", 0.5)
    with pytest.raises(ValueError, match=error):
        set_bn_mix(bn, mix, curve)
    assert (get_bn_mix(bn), get_bn_curve(bn)) == ("switch", 0.5)  # nothing changed


@pytest.mark.parametrize("curve, valid", [
    (1, True), (0.5, True), (4, True), (1e-6, True),
    (0, False), (-1.0, False), (4.0001, False), (float("nan"), False), (float("inf"), False), (True, False),
    ("0.7", False), (None, False),
])
def test_validate_bn_curve(curve, valid):
    if valid:
        assert validate_bn_curve(curve) == float(curve) and isinstance(validate_bn_curve(curve), float)
    else:
        with pytest.raises(ValueError, match="bn_curve must be a number in \\(0, 4\\] .*1 is linear"):
            validate_bn_curve(curve)


@pytest.mark.parametrize("mix, curve, lam, name, expected", [
    ("interpolate", 1.0, 0.0, "weight", 1.0),
    ("interpolate", 1.0, 0.25, "weight", 1.5),
    ("interpolate", 0.5, 0.25, "running_mean", 1.0),  # the adversarial share is 0.25 ** 0.5 = 0.5
    ("interpolate", 2.0, 0.5, "running_mean", 0.5),
    ("interpolate", 1.0, 1.0, "weight", 3.0),
    ("switch", 1.0, 0.25, "weight", 3.0),  # any λ > 0: the adversarial set
    ("switch", 1.0, 0.0, "running_mean", 0.0),
    ("interpolate", 1.0, 0.5, "num_batches_tracked", 7),  # a count is never interpolated
])
def test_mixed_bn_value_is_what_the_layer_reads_in_eval(mix, curve, lam, name, expected):
    bn = dual_bn(mix, curve)
    bn.num_batches_tracked_adv.fill_(7)
    got = mixed_bn_value(bn, name, lam)
    assert torch.allclose(got.float(), torch.full_like(got, expected).float())
    with floatify.lam(lam), torch.no_grad():
        assert torch.equal(getattr(bn, name), got)  # the eager read, bit for bit


def test_mixed_bn_value_of_an_absent_entry_is_a_key_error():
    bn = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False)))[1]
    with pytest.raises(KeyError, match="BatchNorm1d] has no BatchNorm entry 'weight'"):
        mixed_bn_value(bn, "weight", 0.5)


@pytest.mark.parametrize("curve, lam, expected", [(1.0, 0.25, 0.25), (0.5, 0.25, 0.5), (2.0, 0.5, 0.25),
                                                  (0.7, 1.0, 1.0), (0.7, 0.0, 0.0)])
def test_bn_mix_weight_is_lam_to_the_curve(curve, lam, expected):
    assert bn_mix_weight(dual_bn("interpolate", curve), torch.tensor(lam)).item() == pytest.approx(expected)


@pytest.mark.parametrize("affine", [True, False])
def test_dual_bn_entries_and_reset_cover_both_sets(affine):
    bn = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=affine)))[1]
    names = [(name, adv) for _, name, adv in dual_bn_entries(bn)]
    expected = (["weight", "bias"] if affine else []) + ["running_mean", "running_var", "num_batches_tracked"]
    assert names == [(n, n + "_adv") for n in expected]
    for store, name, adv in dual_bn_entries(bn):
        with torch.no_grad():
            store[name].fill_(5)
            store[adv].fill_(6)
    reset_dual_running_stats(bn)
    for buffer, value in (("running_mean", 0), ("running_var", 1), ("num_batches_tracked", 0)):
        assert (bn._buffers[buffer] == value).all() and (bn._buffers[buffer + "_adv"] == value).all()
    if affine:  # the affine parameters are not statistics: left alone
        assert (bn._parameters["weight"] == 5).all() and (bn._parameters["weight_adv"] == 6).all()
    assert set(BN_MIXES) == {"interpolate", "switch"}


def test_dual_bn_uses_clean_set_at_zero_and_adversarial_set_above():
    model = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))).train()
    x = torch.rand(16, 4)
    with floatify.lam(1.0):
        model(x)
    bn = model[1]
    assert int(bn.num_batches_tracked_adv) == 1 and int(bn._buffers["num_batches_tracked"]) == 0
    assert torch.equal(bn._buffers["running_mean"], torch.zeros(4))
    model(x)
    assert int(bn._buffers["num_batches_tracked"]) == 1
    with floatify.lam(0.5):
        assert bn.running_mean is bn.running_mean_adv
    assert bn.running_mean is bn._buffers["running_mean"]
    no_dual = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), floatify.FloatConfig(dual_bn=False))
    assert "1.weight_adv" not in no_dual.state_dict()


@pytest.mark.parametrize("mix,curve,lam,weight,mean", [
    ("interpolate", 1.0, 0.0, 1.0, 0.0), ("interpolate", 1.0, 0.25, 1.5, 0.5), ("interpolate", 1.0, 0.5, 2.0, 1.0),
    ("interpolate", 1.0, 1.0, 3.0, 2.0),
    ("interpolate", 0.5, 0.25, 2.0, 1.0),   # the adversarial share is λ ** bn_curve: 0.25 ** 0.5 = 0.5
    ("interpolate", 2.0, 0.5, 1.5, 0.5), ("interpolate", 0.5, 1.0, 3.0, 2.0), ("interpolate", 0.5, 0.0, 1.0, 0.0),
    ("switch", 1.0, 0.25, 3.0, 2.0), ("switch", 0.5, 0.25, 3.0, 2.0), ("switch", 1.0, 1.0, 3.0, 2.0),
    ("switch", 1.0, 0.0, 1.0, 0.0),
])
def test_bn_mix_in_eval(mix, curve, lam, weight, mean):
    config = floatify.FloatConfig(bn_mix=mix, bn_curve=curve)
    model = floatify.convert(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), config)
    with torch.no_grad():
        model[1].weight_adv.fill_(3.0)
        model[1].running_mean_adv.fill_(2.0)
    for m in (model, copy.deepcopy(model), convert_sync_batchnorm(model)):  # the mix travels along
        m.eval()
        with floatify.lam(lam):
            assert torch.allclose(m[1].weight, torch.full((4,), weight)), (m, lam)
            assert torch.allclose(m[1].running_mean, torch.full((4,), mean))


def test_bn_mix_interpolate_trains_both_affine_sets_and_updates_adversarial_statistics():
    model = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))).train()
    with floatify.lam(0.25):
        model(torch.rand(16, 4)).sum().backward()
    bn = model[1]
    assert int(bn.num_batches_tracked_adv) == 1 and int(bn._buffers["num_batches_tracked"]) == 0
    # d/dw of lerp(w_c, w_a, s) is 1 - s for the clean set and s for the adversarial one, s = 0.25 ** bn_curve
    share = 0.25 ** floatify.FloatConfig().bn_curve
    assert torch.allclose(bn._parameters["weight"].grad * share, (1 - share) * bn.weight_adv.grad)


@pytest.mark.parametrize("bn_mix", ["interpolate", "switch"])
def test_bn_at_lam_one_trains_only_the_adversarial_set(bn_mix):
    config = floatify.FloatConfig(bn_mix=bn_mix)
    model = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), config).train()
    with floatify.lam(1.0):
        model(torch.rand(16, 4)).sum().backward()
    bn = model[1]
    # no gradient at all for the clean set (not a zero one, which momentum and weight decay would act on)
    assert bn._parameters["weight"].grad is None and bn._parameters["bias"].grad is None
    assert bn.weight_adv.grad is not None and bn.weight_adv.grad.abs().sum() > 0


def test_inference_bn_mix_is_computed_once_and_follows_training():
    torch.manual_seed(0)
    model = floatify.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    bn = model[1]
    with torch.no_grad(), floatify.lam(0.5):
        first = bn.running_mean
        assert bn.running_mean is first  # one lerp per λ, not one per read
    model.train()
    with floatify.lam(0.5):
        model(torch.rand(8, 3, 6, 6) * 5)  # moves the adversarial running statistics in place (same version)
    model.eval()
    with torch.no_grad(), floatify.lam(0.5):
        expected = torch.lerp(bn._buffers["running_mean"], bn._buffers["running_mean_adv"], 0.5 ** get_bn_curve(bn))
        assert torch.equal(bn.running_mean, expected) and not torch.equal(expected, first)
