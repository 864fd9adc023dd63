"""floatify export SOURCE --out FILE: the saved dial as one program with λ a run-time input."""

from __future__ import annotations

import pytest
import torch

import floatify
from floatify.cli import main
from floatify.models import create_model


def test_export_gives_the_dial_with_lambda_as_an_input(trained_run, tmp_path):
    out = tmp_path / "dial.pt2"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    program = torch.export.load(str(out)).module()
    model = floatify.load(trained_run)
    x = torch.rand(5, 3, 8, 8)
    with floatify.lam(0.0):
        torch.testing.assert_close(program(x, torch.tensor(0.0)), model(x))
    assert program(x, torch.tensor(1.0)).shape == (5, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["dial.pt2"], "no temporary left"


def test_a_frozen_model_exports_as_a_plain_program(tmp_path):
    frozen = floatify.freeze(floatify.convert(create_model("resnet10t", 10)), lam=0.5, seed=0).eval()
    floatify.save(frozen, tmp_path / "m", training={"image_size": 16})
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "f.pt2")]) == 0
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(torch.export.load(str(tmp_path / "f.pt2")).module()(x), frozen(x))


# options -> the one-line message; nothing is written
HOSTILE = [
    (["--out", "OUT/dial.onnx"], "should end in .pt2"),
    (["--out", "OUT/dial.pt2", "--onnx"], "should end in .onnx"),
    (["--out", "OUT/exists.pt2"], "exists; pass --overwrite"),
    (["--out", "FILE/dial.pt2"], "--out's folder"),
    (["--out", "OUT/missing/dial.pt2"], "does not exist; create it first"),
    (["--out", "OUT"], "should end in .pt2"),
    (["--out", "OUT/dial.pt2", "--image-size", "2"], "--image-size must be at least 8"),
]


@pytest.mark.parametrize("argv, message", HOSTILE, ids=[r[1] for r in HOSTILE])
def test_hostile_export_options_are_one_line(trained_run, tmp_path, run_cli, argv, message):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "exists.pt2").write_text("x")
    argv = [a.replace("OUT", str(tmp_path)).replace("FILE", str(tmp_path / "FILE")) for a in argv]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code, err = run_cli(["export", trained_run] + argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_a_pruned_model_exports_with_its_masks(tmp_path):
    model = floatify.convert(create_model("resnet10t", 10))
    floatify.sparsify(model, 0.2, criterion="magnitude")
    floatify.save(model.eval(), tmp_path / "m", training={"image_size": 16})
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "p.pt2")]) == 0
    x = torch.rand(2, 3, 16, 16)
    with floatify.lam(0.0):
        torch.testing.assert_close(torch.export.load(str(tmp_path / "p.pt2")).module()(x, torch.tensor(0.0)), model(x))


def test_onnx_without_its_extra_says_how_to_install_it(trained_run, tmp_path, run_cli):
    try:
        import onnx  # noqa: F401
        pytest.skip("the ONNX extra is installed here")
    except ImportError:
        pass
    code, err = run_cli(["export", trained_run, "--out", tmp_path / "d.onnx", "--onnx"])
    assert code == 2 and "pip install 'floatify[onnx]'" in err
