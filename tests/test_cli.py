"""The command line: every error path, and a tiny end-to-end train + eval run."""

from __future__ import annotations

import json

import pytest
import torch

import floatify
from floatify.checkpoint import save_checkpoint
from floatify.cli import main

TINY = ["--model", "resnet10t", "--image-size", "8", "--train-limit", "256", "--epochs", "1", "--batch-size", "128",
        "--steps", "1",
        "--lams", "0,1", "--eval-attacks", "clean,pgd,eot-pgd,pgd:nonoise", "--eval-steps", "2", "--eot-draws", "2",
        "--score-draws", "2", "--eval-limit", "48", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--out", str(out)] + TINY) == 0
    return out


def test_end_to_end_train_writes_everything(trained_run):
    for name in ("model.safetensors", "report.md", "metrics.json", "tradeoff.png", "train_state.pt"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics["scores"]) == {"0.0", "1.0"}
    assert set(metrics["attacks"]) == {"clean", "pgd-2", "eot-pgd-2x2", "pgd-2 (noise off)"}
    assert "EOT-PGD" in (trained_run / "report.md").read_text()


def test_eval_reruns_from_checkpoint(trained_run, tmp_path):
    out = tmp_path / "ev"
    args = ["eval", "--checkpoint", str(trained_run / "model.safetensors"), "--out", str(out), "--lams", "0",
            "--eval-attacks", "clean", "--eval-limit", "48", "--no-progress"]
    assert main(args) == 0
    first = json.loads((trained_run / "metrics.json").read_text())["scores"]["0.0"]["clean"]["mean"]
    again = json.loads((out / "metrics.json").read_text())["scores"]["0.0"]["clean"]["mean"]
    assert again == first  # λ = 0 is deterministic: the reloaded model gives the same clean accuracy
    assert main(args) == 2  # refuses to overwrite an earlier evaluation


def _err(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


def test_refuses_an_output_dir_holding_a_run(trained_run, capsys):
    code, err = _err(capsys, ["train", "--out", str(trained_run)] + TINY)
    assert code == 2 and "--overwrite" in err and "--resume" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "resnet81"], "unknown model 'resnet81'"),
        (["--dataset", "imagenet22k"], "unknown dataset"),
        (["--dataset", "cifar10", "--data-root", "/nonexistent"], "--download"),
        (["--eval-attacks", "clean,cw"], "unknown attack"),
        (["--resume"], "no train_state.pt"),
        (["--overwrite", "--resume"], "exclude each other"),
    ],
)
def test_train_errors(tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    code, err = _err(capsys, ["train", "--out", str(out), "--no-progress", "--epochs", "1"] + argv)
    assert code == 2 and message in err, err
    assert not (out / "model.safetensors").exists()


def test_lam_out_of_range_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path), "--lams", "0,1.5"])
    assert exc.value.code == 2 and "[0, 1]" in capsys.readouterr().err


def test_unknown_noise_draw_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path), "--noise-draw", "epoch"])
    assert exc.value.code == 2 and "invalid choice: 'epoch'" in capsys.readouterr().err


def test_eval_errors(tmp_path, capsys):
    code, err = _err(capsys, ["eval", "--checkpoint", str(tmp_path / "missing.safetensors")])
    assert code == 2 and "does not exist" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    code, err = _err(capsys, ["eval", "--checkpoint", str(bad)])
    assert code == 2 and "corrupted" in err
    # a checkpoint whose weights belong to a different architecture
    other = floatify.convert(floatify.create_model("resnet10t", 10))
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, torch.nn.Sequential(torch.nn.Linear(2, 2)),
                    {"model": "resnet10t", "num_classes": 10, "image_size": 8, "dataset": "digits",
                     "convert": {"alpha_init": 0.25, "dual_bn": True}})
    code, err = _err(capsys, ["eval", "--checkpoint", str(wrong), "--out", str(tmp_path / "e"), "--no-progress"])
    assert code == 2 and "does not fit this model" in err
    assert other is not None


def test_floats_training_run(tmp_path):
    out = tmp_path / "sparse"
    assert main(["train", "--out", str(out), "--density", "0.2", "--sparsity-criterion", "snip"] + TINY) == 0
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert abs(float(meta["density"]) - 0.2) < 0.01 and float(meta["compressed_MB"]) < float(meta["dense_MB"])
    ev = tmp_path / "ev"
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--out", str(ev), "--lams", "0",
                 "--eval-attacks", "clean", "--eval-limit", "48", "--no-progress"]) == 0
    assert json.loads((ev / "metrics.json").read_text())["scores"]["0.0"]["clean"]["mean"] == \
        json.loads((out / "metrics.json").read_text())["scores"]["0.0"]["clean"]["mean"]


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--dataset", "--epochs", "--strategy", "--eps", "--lams", "--eval-attacks", "--resume",
                   "--overwrite", "--eot-draws", "--score-draws", "--density", "--sparsity-criterion"):
        assert option in text
