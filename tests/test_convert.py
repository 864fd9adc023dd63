"""convert(): generic invariants over a table of architectures, then the special cases."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.convert import FloatifyWarning, convert_sync_batchnorm, load_original_state_dict
from floatify.layers import is_conditioned
from floatify.layers.dual_bn import get_bn_mix

from cases import CASES, SharedBlock, TiedLinears
from helpers import alpha_grads_at, alphas, wake_up

NAMES = sorted(CASES)


def build(name):
    builder, shape = CASES[name]
    torch.manual_seed(0)
    return wake_up(builder()), torch.rand(shape)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_lam_zero_is_bitwise_original(name, train):
    original, x = build(name)
    model = floatify.convert(original)
    original.train(train)
    model.train(train)
    torch.manual_seed(1)
    expected = original(x)
    torch.manual_seed(1)
    assert torch.equal(model(x), expected)
    if train:  # the clean BatchNorm statistics moved exactly as the original's did
        converted = model.state_dict()
        for k, v in original.state_dict().items():
            assert torch.equal(v, converted[k]), k


@pytest.mark.parametrize("name", NAMES)
def test_noise_reaches_every_alpha_and_changes_the_output(name):
    model, x = build(name)
    model = floatify.convert(model).eval()
    with torch.no_grad(), floatify.lam(1.0):
        assert not torch.equal(model(x), model(x)), "noise must be resampled at every forward in eval mode"
    grads = alpha_grads_at(model, x)
    assert grads and all(g > 0 for g in grads.values()), grads


@pytest.mark.parametrize("name", NAMES)
def test_keys_class_and_state_dict_round_trip(name):
    original, x = build(name)
    model = floatify.convert(original)
    assert type(model) is type(original)
    original_keys = set(original.state_dict())
    assert original_keys <= set(model.state_dict())
    for key in set(model.state_dict()) - original_keys:
        assert key.endswith(("_alpha", "_adv")), key
    with torch.no_grad():
        for a in alphas(model).values():
            a.fill_(0.7)
    fresh = floatify.convert(build(name)[0])
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    torch.manual_seed(3)
    with floatify.lam(0.5):
        expected = model(x)
    torch.manual_seed(3)
    with floatify.lam(0.5):
        assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("name", NAMES)
def test_convert_twice_is_idempotent(name):
    model = floatify.convert(build(name)[0])
    with torch.no_grad():
        for a in alphas(model).values():
            a.fill_(0.9)
    again = floatify.convert(model)
    assert set(again.state_dict()) == set(model.state_dict())
    assert all(a.item() == pytest.approx(0.9) for a in alphas(again).values())


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_and_pickle(name):
    model, x = build(name)
    model = floatify.convert(model).eval()
    with floatify.lam(0.4):
        model(x)  # fill the std cache; copies must not share it
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone) is type(model)
        torch.manual_seed(5)
        with floatify.lam(0.4):
            a = model(x)
        torch.manual_seed(5)
        with floatify.lam(0.4):
            assert torch.equal(clone(x), a)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=False)) is type(model)


def test_shared_module_and_tied_weights_get_one_alpha():
    model = floatify.convert(SharedBlock())
    assert [k for k in model.state_dict() if k.endswith("_alpha")] == ["fc.weight_alpha", "head.weight_alpha"]
    tied = floatify.convert(TiedLinears())
    assert tied.a.weight_alpha is tied.b.weight_alpha
    assert len(floatify.summary(tied).conditioned) == 2  # two sites, one α
    assert floatify.summary(tied).added_params == 1


def test_filter_fn_keeps_classifier_clean_and_reports_it():
    model = floatify.convert(CASES["cnn"][0](), filter_fn=lambda m, fqn: fqn != "7")
    s = floatify.summary(model)
    assert ("7", "excluded by filter_fn") in s.skipped
    assert "7.weight" not in [r.fqn for r in s.conditioned]
    assert not is_conditioned(model[7])


def test_filter_matching_nothing_is_an_error_and_changes_nothing():
    model = CASES["cnn"][0]()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="filter_fn excluded all"):
        floatify.convert(model, filter_fn=lambda m, fqn: False, inplace=True)
    assert not any(is_conditioned(m) for m in model.modules())
    assert set(model.state_dict()) == set(before)


def test_model_without_layers_is_an_error():
    with pytest.raises(ValueError, match="no Conv/Linear"):
        floatify.convert(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))


@pytest.mark.parametrize(
    "wrap, match",
    [
        (lambda m: nn.DataParallel(m), "DataParallel"),
        (lambda m: torch.compile(m), "torch.compile"),
        (lambda m: "not a model", "nn.Module"),
    ],
    ids=["dataparallel", "compiled", "not-a-module"],
)
def test_wrapped_models_are_refused(wrap, match):
    with pytest.raises(TypeError, match=match):
        floatify.convert(wrap(CASES["mlp"][0]()))


def test_ddp_wrapped_model_is_refused():
    ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(ddp)
    with pytest.raises(TypeError, match="convert the bare model first"):
        floatify.convert(ddp)


def test_lazy_uninitialised_layer_is_an_error():
    with pytest.raises(ValueError, match="lazy"):
        floatify.convert(nn.Sequential(nn.Linear(3, 3), nn.LazyLinear(2)))


def test_unconvertible_weight_is_warned_about_and_reported():
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)), nn.Linear(4, 2))
    with pytest.warns(FloatifyWarning, match="0.weight"):
        converted = floatify.convert(model)
    skipped = dict(floatify.summary(converted).skipped)
    assert "0.weight" in skipped and "not a registered Parameter" in skipped["0.weight"]


@pytest.mark.parametrize("bad, error, message", [
    (dict(alpha_init=-1.0), ValueError, "alpha_init .* must be a finite number >= 0, got -1.0"),
    (dict(alpha_init=float("nan")), ValueError, "alpha_init .* must be a finite number >= 0, got nan"),
    (dict(alpha_init="0.25"), TypeError, "alpha_init .* must be a number >= 0, got '0.25'"),
    (dict(dual_bn="yes"), TypeError, "dual_bn must be True or False, got 'yes'"),
    (dict(bn_mix="average"), ValueError, "bn_mix must be one of interpolate, switch, got 'average'"),
    (dict(bn_curve=0), ValueError, "bn_curve must be a number in \\(0, 4\\]"),
])
@pytest.mark.parametrize("how", ["config", "override"])
def test_config_and_overrides_are_validated_alike(bad, error, message, how):
    with pytest.raises(error, match=message):
        if how == "config":
            floatify.FloatConfig(**bad)
        else:
            floatify.convert(CASES["mlp"][0](), **bad)


SWITCH = floatify.FloatConfig(alpha_init=0.5, bn_mix="switch")


@pytest.mark.parametrize("config, overrides, expected", [
    (None, dict(alpha_init=0.5, bn_mix="switch"), SWITCH),
    (floatify.FloatConfig(alpha_init=0.5), dict(bn_mix="switch"), SWITCH),
    (floatify.FloatConfig(alpha_init=0.5, dual_bn=False), dict(alpha_init=0.1), floatify.FloatConfig(0.1, False)),
])
def test_overrides_replace_the_configs_fields(config, overrides, expected):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    converted = floatify.convert(model, config, **overrides)
    got, want = converted.state_dict(), floatify.convert(model, expected).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert float(got["0.weight_alpha"]) == pytest.approx(expected.alpha_init)
    assert is_conditioned(converted[1]) is expected.dual_bn
    assert not expected.dual_bn or get_bn_mix(converted[1]) == expected.bn_mix


@pytest.mark.parametrize("config, overrides, message", [
    (None, dict(alpha=0.5), "convert\\(\\) got an unknown option 'alpha'; valid options: alpha_init, dual_bn, bn_mix, "
                            "bn_curve"),
    (floatify.EvalConfig(), {}, "convert\\(\\) takes a floatify.FloatConfig as config, got EvalConfig"),
    (0.5, {}, "takes a floatify.FloatConfig as config, got float"),
])
def test_unknown_overrides_and_foreign_configs_are_type_errors(config, overrides, message):
    with pytest.raises(TypeError, match=message):
        floatify.convert(CASES["mlp"][0](), config, **overrides)


def test_inplace_false_leaves_original_untouched_and_inplace_true_converts_it():
    model = CASES["cnn"][0]()
    converted = floatify.convert(model)
    assert converted is not model and not is_conditioned(model[0])
    same = floatify.convert(model, inplace=True)
    assert same is model and is_conditioned(model[0])


@pytest.mark.parametrize("curve", [0.0, -1.0, 5.0, float("nan"), True, "0.7"])
def test_bn_curve_must_be_a_positive_exponent(curve):
    with pytest.raises(ValueError, match="bn_curve must be a number in \\(0, 4\\]"):
        floatify.FloatConfig(bn_curve=curve)


def test_sync_batchnorm_conversion_keeps_dual_bn():
    model = floatify.convert(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    with torch.no_grad():
        model[1].weight_adv.fill_(3.0)
    synced = convert_sync_batchnorm(model)
    assert isinstance(synced[1], nn.SyncBatchNorm) and is_conditioned(synced[1])
    assert torch.equal(synced[1].weight_adv, torch.full((4,), 3.0))
    with floatify.lam(1.0):
        assert torch.equal(synced[1].weight, torch.full((4,), 3.0))


def test_load_original_checkpoint_into_converted_model():
    original, x = build("timm_resnet10t")
    model = floatify.convert(build("timm_resnet10t")[0])
    with torch.no_grad():
        for p in original.parameters():
            p.add_(0.01)
    load_original_state_dict(model, original.state_dict())
    original.eval()
    model.eval()
    assert torch.equal(model(x), original(x))
    assert torch.equal(model.bn1.weight_adv, original.bn1.weight)
    with pytest.raises(KeyError, match="different architecture"):
        load_original_state_dict(model, CASES["mlp"][0]().state_dict())


def test_no_warning_for_clean_conversion():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        floatify.convert(CASES["cnn"][0]())


def test_meta_device_workflow_initialises_alpha():
    plain = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with torch.device("meta"):
        model = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
                                 floatify.FloatConfig(alpha_init=0.5))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        model[0].weight_alpha.fill_(1.66e38)  # what uninitialised memory may hold
    load_original_state_dict(model, plain.state_dict())
    assert model[0].weight_alpha.item() == 0.5
    assert torch.equal(model[1].running_var_adv, plain[1].running_var)


@pytest.mark.parametrize("key", ["0.weight_alpha", "1.weight_adv", "1.running_mean_adv"])
def test_load_original_state_dict_refuses_a_converted_checkpoint(key):
    model = floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    state = {k: v.clone() for k, v in nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).state_dict().items()}
    state[key] = model.state_dict()[key].clone() + 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"converted floatify model .*'{key}'.*model.load_state_dict"):
        load_original_state_dict(model, state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing loaded


def test_quantized_layers_are_reported_not_skipped_silently():
    qlinear = torch.ao.nn.quantized.dynamic.Linear(8, 4)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), qlinear)
    with pytest.warns(FloatifyWarning, match="3: quantized layer"):
        converted = floatify.convert(model)
    s = floatify.summary(converted)
    assert [site for site, _ in s.skipped] == ["3"] and "quantize" in str(s)
    assert [r.fqn for r in s.conditioned] == ["0.weight"]
    with pytest.raises(ValueError, match="quantized layers .*convert the float model first"):
        floatify.convert(nn.Sequential(torch.ao.nn.quantized.dynamic.Linear(8, 4)))


def _weight_normed(only: bool) -> nn.Module:
    linear = nn.utils.weight_norm(nn.Linear(4, 2))  # old style: `weight` is computed, not a Parameter
    return nn.Sequential(linear) if only else nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), linear)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("only,inplace,expect", [
    (False, False, "pass inplace=True"),  # deepcopy of old-style weight_norm: a clear error, not a RuntimeError
    (False, True, "warn"),  # converted in place: the weight-normed site is warned about and reported
    (True, True, "remove the old-style weight_norm"),  # nothing convertible: never blames an absent filter_fn
])
def test_old_style_weight_norm(only, inplace, expect):
    model = _weight_normed(only)
    if expect == "warn":
        with pytest.warns(FloatifyWarning, match="2.weight"):
            floatify.convert(model, inplace=inplace)
        return
    with pytest.raises(ValueError, match=expect) as err:
        floatify.convert(model, inplace=inplace)
    assert "filter_fn" not in str(err.value)
