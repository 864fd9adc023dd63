"""floatify.export / export_onnx: the dial shipped as a program with λ as a runtime input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.context import hold_noise
from floatify.convert import FloatifyWarning
from floatify.layers.conditioned import ADV_SUFFIX, BN_BUFFERS, BN_PARAMS, get_bn_mix, is_conditioned, set_bn_mix
from floatify.layers.registry import is_batchnorm

from helpers import wake_up

LAMS = (0.0, 0.5, 1.0)


def _distinct_adv_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every adversarial BatchNorm differ from the clean one, so a wrong selection shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if is_conditioned(m) and is_batchnorm(m):
                for name in (*BN_PARAMS, *BN_BUFFERS[:2]):
                    adv = getattr(m, "_parameters" if name in BN_PARAMS else "_buffers").get(name + ADV_SUFFIX)
                    if adv is not None and adv.is_floating_point():
                        adv.add_(0.2 * torch.rand(adv.shape, generator=g)).abs_()
    return model


def _tiny(bn_mix: str = "interpolate", density: float | None = None, filter_fn=None) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    model = floatify.convert(wake_up(net), floatify.FloatConfig(bn_mix=bn_mix), filter_fn=filter_fn)
    if density is not None:
        model = floatify.sparsify(model, density=density)
    return _distinct_adv_bn(model).eval()


def _timm(name: str, **kwargs) -> nn.Module:
    import timm

    return _distinct_adv_bn(floatify.convert(wake_up(timm.create_model(name, num_classes=10, **kwargs)))).eval()


def _mobilenet() -> nn.Module:
    import torchvision

    return _distinct_adv_bn(floatify.convert(wake_up(torchvision.models.mobilenet_v3_small(num_classes=10)))).eval()


ZOO = {
    "resnet18": lambda: _timm("resnet18"),
    "vit": lambda: _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2),
    "mobilenet_v3_small": _mobilenet,
}


def _zero_alpha(program: torch.export.ExportedProgram) -> None:
    """α = 0 in the program: λ > 0 becomes deterministic (BatchNorm selection only)."""
    with torch.no_grad():
        for key, value in program.state_dict.items():
            if key.endswith("_alpha"):
                value.zero_()


def _eager(model: nn.Module, x: torch.Tensor, lam: float, noise: bool = True) -> torch.Tensor:
    with torch.no_grad(), floatify.lam(lam, noise=noise):
        return model(x)


def _check_dial(model: nn.Module, program: torch.export.ExportedProgram, x: torch.Tensor) -> None:
    run = program.module()
    with torch.no_grad():
        assert torch.equal(run(x, torch.tensor(0.0)), _eager(model, x, 0.0))
        for lam in LAMS[1:]:
            a, b = run(x, torch.tensor(lam)), run(x, torch.tensor(lam))
            assert not torch.equal(a, b), "λ > 0 must draw fresh noise on every call"
            assert not torch.equal(a, _eager(model, x, 0.0))
    _zero_alpha(program)  # now λ > 0 is the BatchNorm choice alone: compare with the noise-free eager model
    run = program.module()
    with torch.no_grad():
        for lam in LAMS:
            torch.testing.assert_close(run(x, torch.tensor(lam)), _eager(model, x, lam, noise=False),
                                       rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- small model
@pytest.mark.parametrize("bn_mix", ["interpolate", "switch"])
def test_dial_program_follows_lambda_and_bn_mix(bn_mix):
    model = _tiny(bn_mix)
    assert {get_bn_mix(m) for m in model.modules() if is_conditioned(m) and is_batchnorm(m)} == {bn_mix}
    x = torch.rand(4, 3, 10, 10)
    _check_dial(model, floatify.export(model, x), x)


def test_mixed_bn_mix_per_layer_and_any_batch_size():
    model = _tiny("interpolate")
    set_bn_mix(model[4], "switch")
    program = floatify.export(model, torch.rand(1, 3, 10, 10))  # a batch of 1 still gives a dynamic batch
    x = torch.rand(7, 3, 10, 10)
    _check_dial(model, program, x)


@pytest.mark.parametrize("filter_fn", [None, lambda m, fqn: not isinstance(m, nn.Linear)],
                         ids=["all-noisy", "pruned-layer-without-noise"])
def test_sparse_model(filter_fn):
    model = _tiny(density=0.4, filter_fn=filter_fn)
    x = torch.rand(3, 3, 10, 10)
    program = floatify.export(model, x)
    _check_dial(model, program, x)
    masks = [v for k, v in program.state_dict.items() if k.startswith("mask_")]
    assert masks and all(v.dtype == torch.bool and not v.all() for v in masks)


def test_noise_spread_matches_eager():
    model = _tiny()
    x = torch.rand(2, 3, 10, 10)
    run = floatify.export(model, x).module()
    with torch.no_grad():
        ours = torch.stack([run(x, torch.tensor(1.0)) for _ in range(40)]).std(0).mean()
        eager = torch.stack([_eager(model, x, 1.0) for _ in range(40)]).std(0).mean()
    assert 0.6 < float(ours / eager) < 1.6


def test_export_leaves_the_model_alone():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    with hold_noise(), floatify.lam(0.3):
        program = floatify.export(model, torch.rand(2, 3, 10, 10))
    assert classes == [type(m) for m in model.modules()]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any("floatify_weight_std" in m.__dict__ for m in model.modules())
    x = torch.rand(2, 3, 10, 10)
    with torch.no_grad():
        assert not torch.equal(program.module()(x, torch.tensor(1.0)), program.module()(x, torch.tensor(1.0)))


# ---------------------------------------------------------------------------------------- refusals
def _weight_norm_model():
    net = nn.Sequential(nn.Linear(4, 4), torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatifyWarning)
        return floatify.convert(net)


@pytest.mark.parametrize("make, message", [
    (lambda: nn.DataParallel(_tiny()), "wrapped in DataParallel; export the bare converted model"),
    (lambda: torch.compile(_tiny()), "compiled with torch.compile; export the original converted model"),
    (lambda: nn.Sequential(nn.Linear(4, 2)), "no λ-conditioned weight; convert it first"),
    (_weight_norm_model, "could not be conditioned, e.g. '1.weight'"),
])
def test_export_refuses_with_one_line(make, message):
    model = make()
    with pytest.raises(ValueError, match=message) as err:
        floatify.export(model, torch.rand(2, 4))
    assert "\n" not in str(err.value)


def _torch_export(model, x):
    return torch.export.export(model, (x,))


def _onnx_legacy_export(model, x):
    import io

    return torch.onnx.export(model, (x,), io.BytesIO(), dynamo=False)


@pytest.mark.parametrize("exporter", [_torch_export, _onnx_legacy_export])
@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_plain_export_at_positive_lam_points_to_floatify_export(exporter, lam):
    # reason: a plain torch.export / ONNX export of the dial at λ > 0 recorded one noise draw (or failed on
    # randn deep inside the ONNX exporter); it must say what to do instead
    model = _tiny().eval()
    with floatify.lam(lam), pytest.raises(Exception, match=r"floatify\.export\(model, example_inputs\).*freeze"):
        exporter(model, torch.rand(2, 3, 8, 8))
    program = _torch_export(model, torch.rand(2, 3, 8, 8))  # λ = 0: the clean network exports as before
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(program.module()(x), model(x))


# example inputs the model cannot take -> one line naming them (not a tracer error from inside torch.export)
HOSTILE_EXAMPLES = [
    ("two tensors", (torch.rand(2, 3, 10, 10), torch.rand(2)), TypeError, "one image batch"),
    ("wrong channels", torch.rand(2, 1, 8, 8), ValueError,
     "the model cannot run on example_inputs of shape \\(2, 1, 8, 8\\) \\(.*channels"),
    ("integer images", torch.randint(0, 255, (2, 3, 8, 8)), TypeError,
     "example_inputs must be floating-point images .* got torch.int64"),
    ("no batch dimension", torch.rand(3, 8, 8), ValueError, "cannot run on example_inputs of shape \\(3, 8, 8\\)"),
]


@pytest.mark.parametrize("name, example, error, message", HOSTILE_EXAMPLES, ids=[r[0] for r in HOSTILE_EXAMPLES])
def test_export_refuses_example_inputs_the_model_cannot_take(name, example, error, message):
    model = _tiny().train()
    with pytest.raises(error, match=message) as err:
        floatify.export(model, example)
    assert "\n" not in str(err.value) and model.training  # the model's mode is left as it was


# ---------------------------------------------------------------------------------------- model table
_FRESH = textwrap.dedent("""
    import sys, torch
    program, inputs, out, threads = sys.argv[1:]
    torch.set_num_threads(int(threads))  # reason: bitwise equality with the parent needs the same kernels
    run = torch.export.load(program).module()
    x = torch.load(inputs)
    assert "floatify" not in sys.modules, "loading the program must not need floatify"
    with torch.no_grad():
        torch.save({lam: [run(x, torch.tensor(lam)) for _ in range(2)] for lam in (0.0, 0.5, 1.0)}, out)
""")


@pytest.mark.parametrize("name", [
    "resnet18",
    "vit",
    pytest.param("mobilenet_v3_small", marks=pytest.mark.slow),
])
def test_zoo_export_save_load_in_fresh_process(name, tmp_path):
    torch.manual_seed(0)
    model = ZOO[name]()
    x = torch.rand(2, 3, 32, 32)
    program = floatify.export(model, x)
    torch.export.save(program, tmp_path / "dial.pt2")
    torch.save(x, tmp_path / "x.pt")
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    subprocess.run([sys.executable, "-c", _FRESH, str(tmp_path / "dial.pt2"), str(tmp_path / "x.pt"),
                    str(tmp_path / "out.pt"), threads], check=True, env=env, timeout=300)
    outs = torch.load(tmp_path / "out.pt")
    clean = _eager(model, x, 0.0)
    assert all(torch.equal(y, clean) for y in outs[0.0]), "λ = 0 must be bitwise the eager model"
    for lam in LAMS[1:]:
        a, b = outs[lam]
        assert torch.isfinite(a).all() and not torch.equal(a, b) and not torch.equal(a, clean)
    # the BatchNorm choice (and interpolation) inside the graph: α = 0 makes λ > 0 deterministic
    _zero_alpha(program)
    run = program.module()
    with torch.no_grad():
        for lam in LAMS:
            torch.testing.assert_close(run(x, torch.tensor(lam)), _eager(model, x, lam, noise=False),
                                       rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------- ONNX
def test_onnx_dial_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    model = _tiny("switch")
    path = floatify.export_onnx(model, torch.rand(2, 3, 10, 10), tmp_path / "dial.onnx")
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["x", "lam"]
    x = torch.rand(5, 3, 10, 10)

    def run(lam):
        return session.run(None, {"x": x.numpy(), "lam": np.array(lam, dtype=np.float32)})[0]

    np.testing.assert_allclose(run(0.0), _eager(model, x, 0.0).numpy(), rtol=1e-5, atol=1e-6)
    draws = np.stack([run(1.0) for _ in range(30)])
    assert not np.array_equal(draws[0], draws[1])
    eager = torch.stack([_eager(model, x, 1.0) for _ in range(30)]).numpy()
    np.testing.assert_allclose(draws.mean(0), eager.mean(0), atol=4 * eager.std(0).max() / np.sqrt(30) + 1e-4)
    ratio = draws.std(0).mean() / eager.std(0).mean()
    assert 0.6 < ratio < 1.6, f"ONNX noise spread {ratio:.2f}x eager's"


def test_onnx_without_the_extra_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name in ("onnx", "onnxscript"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ImportError, match=r"pip install 'floatify\[onnx\]'"):
        floatify.export_onnx(_tiny(), torch.rand(2, 3, 10, 10), "/nonexistent/dial.onnx")
