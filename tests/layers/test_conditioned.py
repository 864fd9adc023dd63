"""floatify.layers.conditioned: the λ-conditioned weight W + λ·α·std(W)·η, its gradients, the generated classes."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.context import hold_noise
from floatify.layers.conditioned import (
    conditioned_class,
    generated_classes,
    is_conditioned,
    is_floatify_layer,
    original_class,
)
from floatify.layers.noise import NOISE_SOURCES, noise_source, standard_normal

from cases import CASES


def _pruned_linear() -> nn.Module:
    return floatify.sparsify(nn.Sequential(nn.Linear(8, 8)), 0.5)[0]


def _bn_without_dual() -> nn.Module:
    return floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), floatify.FloatConfig(dual_bn=False))[1]


# name, build, is_floatify_layer, is_conditioned, original class
CLASS_CASES = [
    ("plain-linear", lambda: nn.Linear(4, 2), False, False, nn.Linear),
    ("converted-linear", lambda: floatify.convert(nn.Linear(4, 2)), True, True, nn.Linear),
    ("converted-conv", lambda: floatify.convert(nn.Conv2d(3, 4, 3)), True, True, nn.Conv2d),
    ("dual-bn", lambda: floatify.convert(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))[1], True, True,
     nn.BatchNorm1d),
    ("bn-without-dual", _bn_without_dual, False, False, nn.BatchNorm1d),
    ("pruned-never-converted", _pruned_linear, True, False, nn.Linear),  # a mask, no α
]


@pytest.mark.parametrize("name, build, floatify_layer, conditioned, original", CLASS_CASES,
                         ids=[c[0] for c in CLASS_CASES])
def test_what_a_layer_is_and_what_it_was(name, build, floatify_layer, conditioned, original):
    module = build()
    assert is_floatify_layer(module) is floatify_layer
    assert is_conditioned(module) is conditioned
    assert original_class(module) is original
    assert isinstance(module, original)  # the generated class keeps the original as a base
    if floatify_layer:
        assert type(module) is conditioned_class(original) and type(module) in generated_classes()


@pytest.mark.parametrize("base", [nn.Linear, nn.Conv1d, nn.BatchNorm2d, nn.MultiheadAttention])
def test_conditioned_class_is_made_once_and_is_its_own_conditioned_class(base):
    cls = conditioned_class(base)
    assert conditioned_class(base) is cls and conditioned_class(cls) is cls
    assert issubclass(cls, base) and cls.__module__ == "floatify.layers.conditioned"


def test_a_class_without_a_registered_weight_is_a_type_error():
    with pytest.raises(TypeError, match="ReLU has no registered conditioned weight"):
        conditioned_class(nn.ReLU)


def test_pickle_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    model = floatify.convert(CASES["cnn"][0]())
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(model))
    code = (
        "import pickle,sys,torch; m=pickle.loads(open(sys.argv[1],'rb').read());"
        "print(type(m[0]).__name__, isinstance(m[0], torch.nn.Conv2d))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Float[torch/nn/modules/conv:Conv2d]", "True"]


def test_noise_statistics_match_the_method():
    torch.manual_seed(0)
    layer = floatify.convert(nn.Linear(256, 256, bias=False))
    w = layer._parameters["weight"].detach().clone()
    with torch.no_grad():
        layer.weight_alpha.fill_(0.5)
        with floatify.lam(0.6):
            draws = torch.stack([layer.weight - w for _ in range(8)])
    expected_std = 0.6 * 0.5 * w.std()
    assert draws.std().item() == pytest.approx(expected_std.item(), rel=0.02)
    assert draws.mean().abs().item() < 0.01 * expected_std.item()


@pytest.mark.parametrize("source", NOISE_SOURCES)
def test_alpha_gradient_is_exact(source):
    torch.manual_seed(0)
    layer = floatify.convert(nn.Linear(4, 3, bias=False))
    x = torch.rand(5, 4)
    w = layer._parameters["weight"].detach()
    with noise_source(source):
        torch.manual_seed(1)
        with floatify.lam(0.5):
            layer(x).sum().backward()
        torch.manual_seed(1)  # reason: replays the draw: the same randn, or the same bank offset
        eta = standard_normal(w)
    # d/dα sum(x (W + λ α σ η)^T) = λ σ sum(x η^T)
    expected = 0.5 * w.std() * (x @ eta.T).sum()
    assert layer.weight_alpha.grad.item() == pytest.approx(expected.item(), rel=1e-5)
    assert layer._parameters["weight"].grad is not None  # the identity path reaches W


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_noise_has_weight_dtype(dtype):
    model = floatify.convert(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))).to(dtype)
    x = torch.rand(3, 8, dtype=dtype)
    with floatify.lam(1.0):
        y = model(x)
        assert model[0].weight.dtype == dtype
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert model[0].weight_alpha.dtype == dtype


def test_std_cache_tracks_weight_updates():
    layer = floatify.convert(nn.Linear(16, 16))
    s1 = layer.floatify_weight_std("weight")
    with torch.no_grad():
        layer._parameters["weight"].mul_(3.0)
    s2 = layer.floatify_weight_std("weight")
    assert s2.item() == pytest.approx(3 * s1.item(), rel=1e-5)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])  # no_grad: the cached inference path
def test_noise_std_follows_writes_through_data(grad):
    layer = floatify.convert(nn.Linear(64, 64))
    s1 = layer.floatify_weight_std("weight").item()
    with torch.set_grad_enabled(grad), floatify.lam(1.0):
        before = (layer.weight - layer._parameters["weight"]).std().item()
    layer.weight.data.mul_(100)  # does not bump weight._version
    assert layer.floatify_weight_std("weight").item() == pytest.approx(100 * s1, rel=1e-5)
    with torch.set_grad_enabled(grad), floatify.lam(1.0):
        noise = layer.weight - layer._parameters["weight"]
    assert noise.std().item() == pytest.approx(100 * before, rel=0.2)  # the noise scales with the new std


def test_a_held_scale_follows_alpha_in_place_and_a_new_alpha():
    model = floatify.convert(nn.Linear(64, 64))
    w = model._parameters["weight"]
    with floatify.lam(1.0), hold_noise():
        first = (model.weight - w).norm()
        with torch.no_grad():
            model.weight_alpha.mul_(4.0)  # in place: a new version
        torch.testing.assert_close((model.weight - w).norm(), 4 * first)
        model.weight_alpha = nn.Parameter(model.weight_alpha.detach() * 0.5)  # a new α
        torch.testing.assert_close((model.weight - w).norm(), 2 * first)


def test_held_weight_gradients_are_exact():
    torch.manual_seed(0)
    layer = floatify.convert(nn.Linear(8, 4, bias=False))
    x = torch.rand(5, 8)
    w, alpha = layer._parameters["weight"], layer.weight_alpha
    std = w.detach().std()
    with floatify.lam(0.5), hold_noise():
        noisy = layer.weight
        (x @ noisy.T).sum().backward()
    eta = (noisy.detach() - w.detach()) / (0.5 * std * alpha.detach())
    # d/dα sum(x (W + λ α σ η)^T) = λ σ sum(x η^T);  d/dW = 1 x^T summed over the batch
    torch.testing.assert_close(alpha.grad, 0.5 * std * (x @ eta.T).sum())
    torch.testing.assert_close(w.grad, torch.ones(4, 1) * x.sum(0))


@pytest.mark.parametrize("alpha_init", [0.0, 1e-4, 0.25])
def test_held_weight_gives_alpha_a_finite_gradient_even_at_alpha_zero(alpha_init):
    # reason: η is recovered from the noisy weight as (noisy − W) / α; where α is ~0 it must be kept instead,
    # or α initialised at 0 would get a NaN gradient (or none) and never learn
    torch.manual_seed(0)
    layer = floatify.convert(torch.nn.Linear(6, 4), floatify.FloatConfig(alpha_init=alpha_init))
    x, y = torch.rand(5, 6), torch.randint(0, 4, (5,))
    with floatify.lam(1.0), hold_noise():
        torch.nn.functional.cross_entropy(layer(x), y).backward()
    grad = layer.weight_alpha.grad
    assert grad is not None and torch.isfinite(grad) and grad.abs() > 1e-6
