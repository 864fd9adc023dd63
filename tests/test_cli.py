"""The command line: every error path, and a tiny end-to-end train + eval run."""

from __future__ import annotations

import json
import shutil

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
    for name in ("model.safetensors", "report.md", "metrics.json", "tradeoff.png", "train_state.safetensors"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics["scores"]) == {"0.0", "1.0"}
    assert list(metrics["attacks"]) == ["clean", "worst case (2 attacks)", "pgd-2", "eot-pgd-2x2", "pgd-2 (noise off)"]
    assert metrics["headline"] == "worst case (2 attacks)" and metrics["meta"]["preset"] == "custom"
    assert "EOT-PGD" in (trained_run / "report.md").read_text()
    # digits defaults to its own threat model (eps 0.1), recorded with the run
    assert metrics["meta"]["eps"] == "0.10000"


def test_overwrite_names_the_final_folder_not_its_staging_copy(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)  # reason: an earlier run to overwrite, without training one more
    assert main(["train", "--out", str(out), "--overwrite"] + TINY) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}/report.md" in printed and ".floatify-staging" not in printed


def test_eval_reruns_from_checkpoint(trained_run, tmp_path):
    out = tmp_path / "ev"
    args = ["eval", "--checkpoint", str(trained_run / "model.safetensors"), "--out", str(out), "--lams", "0",
            "--eval-attacks", "clean", "--eval-limit", "48", "--no-progress"]
    assert main(args) == 0
    first = json.loads((trained_run / "metrics.json").read_text())["scores"]["0.0"]["clean"]["mean"]
    again = json.loads((out / "metrics.json").read_text())["scores"]["0.0"]["clean"]["mean"]
    assert again == first  # λ = 0 is deterministic: the reloaded model gives the same clean accuracy
    assert main(args) == 2  # refuses to overwrite an earlier evaluation
    fresh = tmp_path / "fresh"
    assert main(args[:4] + [str(fresh)] + args[5:] + ["--noise-source", "fresh"]) == 0
    assert json.loads((fresh / "metrics.json").read_text())["meta"]["weight_noise"] == "fresh"  # named in the report


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
        (["--eval-attacks", "strongest"], "unknown attack"),
        (["--resume"], "no train_state.safetensors"),
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
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, torch.nn.Sequential(torch.nn.Linear(2, 2)),
                    {"model": "resnet10t", "num_classes": 10, "image_size": 8, "dataset": "digits",
                     "convert": {"alpha_init": 0.25, "dual_bn": True}})
    code, err = _err(capsys, ["eval", "--checkpoint", str(wrong), "--out", str(tmp_path / "e"), "--no-progress"])
    assert code == 2 and "does not fit this model" in err


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
                   "--overwrite", "--eot-draws", "--score-draws", "--density", "--sparsity-criterion",
                   "--initial-checkpoint", "--pretrained", "--pretrained-file"):
        assert option in text


OLD_RUN = {"model.safetensors": b"old weights", "report.md": b"old report", "metrics.json": b"{}",
           "adversarial.safetensors": b"old adversarial"}


def _old_run(out):
    out.mkdir()
    for name, data in OLD_RUN.items():
        (out / name).write_bytes(data)


def _unchanged(out):
    return sorted(p.name for p in out.iterdir()) == sorted(OLD_RUN) and all(
        (out / n).read_bytes() == d for n, d in OLD_RUN.items())


@pytest.mark.parametrize("argv, message", [
    (["--score-draws", "0"], "--score-draws must be at least 1"),
    (["--lams", ","], "--lams is empty"),
    (["--eval-limit", "0"], "--eval-limit must be at least 1"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be at least 1"),
    (["--eval-steps", "0"], "steps must be"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--density", "0"], "--density must be in (0, 1]"),
    (["--density", "1.5"], "--density must be in (0, 1]"),
    (["--grad-clip", "0"], "grad_clip must be a finite number > 0"),
    (["--grad-clip", "-1"], "grad_clip must be a finite number > 0"),
    (["--steps", "-5"], "--steps must be at least 1"),
    (["--train-limit", "10", "--batch-size", "64"], "--train-limit 10 is smaller than --batch-size 64"),
    (["--batch-size", "4096"], "fewer than --batch-size 4096"),
])
def test_bad_options_are_refused_before_the_previous_run_is_touched(tmp_path, capsys, argv, message):
    out = tmp_path / "run1"
    _old_run(out)
    code, err = _err(capsys, ["train", "--out", str(out), "--overwrite", "--model", "resnet10t", "--no-progress"]
                     + argv)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert _unchanged(out)


def test_an_unwritable_out_is_found_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _err(capsys, ["train", "--out", str(tmp_path / "file" / "run")] + TINY)
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


def test_a_failed_overwrite_keeps_the_old_run(tmp_path, monkeypatch):
    out = tmp_path / "run1"
    _old_run(out)

    def killed(model, loader, cfg, checkpoint_dir, **kw):
        assert checkpoint_dir != out and checkpoint_dir.parent == out  # the new run is staged
        raise KeyboardInterrupt

    monkeypatch.setattr(floatify, "fit", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "--out", str(out), "--overwrite"] + TINY)
    assert _unchanged(out)  # the staging folder is gone too


def test_overwrite_replaces_the_run_only_when_complete_and_never_follows_symlinks(tmp_path):
    out = tmp_path / "run1"
    _old_run(out)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for planted in ("train_state.tmp", "report.md.tmp", "metrics.json.tmp", "history.json"):
        (out / planted).symlink_to(victim)
    assert main(["train", "--out", str(out), "--overwrite"] + TINY) == 0
    assert victim.read_text() == "precious"
    assert (out / "model.safetensors").read_bytes() != OLD_RUN["model.safetensors"]
    assert not (out / "adversarial.safetensors").exists()  # a file of the replaced run is not left behind
    assert not (out / "history.json").is_symlink()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("argv, message", [
    (["--density", "0.5"], "density"),
    (["--no-dual-bn"], "dual_bn"),
    (["--alpha-init", "0.5"], "alpha_init"),
    (["--train-limit", "200", "--batch-size", "100"], "changed"),
])
def test_resume_with_other_settings_is_refused(trained_run, tmp_path, capsys, argv, message):
    out = tmp_path / "copy"
    shutil.copytree(trained_run, out)
    args = ["train", "--out", str(out), "--resume"] + TINY
    code, err = _err(capsys, args + argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def _write_meta(path, **changes):
    meta = {"model": "resnet10t", "num_classes": 10, "image_size": 8, "dataset": "digits",
            "convert": {"alpha_init": 0.25, "dual_bn": True}, **changes}
    save_checkpoint(path, torch.nn.Linear(2, 2), meta)


@pytest.mark.parametrize("make, extra, message", [
    (lambda p: p.mkdir(), [], "is a directory"),
    (lambda p: _write_meta(p, convert={"bogus": 1}), [], "invalid 'convert' entry"),
    (lambda p: _write_meta(p, image_size="8"), [], "invalid 'image_size'"),
    (lambda p: _write_meta(p, train={"eps": "x"}), [], "invalid train.eps"),
    (lambda p: _write_meta(p), ["--out", "FILE"], "is not a directory"),
    (lambda p: _write_meta(p), ["--score-draws", "0"], "--score-draws must be at least 1"),
])
def test_eval_errors_are_one_line(tmp_path, capsys, make, extra, message):
    path = tmp_path / "model.safetensors"
    make(path)
    (tmp_path / "FILE").write_text("x")
    extra = [str(tmp_path / "FILE") if a == "FILE" else a for a in extra]
    code, err = _err(capsys, ["eval", "--checkpoint", str(path), "--no-progress"] + extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_option_defaults_are_the_configs_defaults():
    """Every TrainConfig/FloatConfig/EvalConfig field is an option whose default is the field's (one source)."""
    from dataclasses import fields

    from floatify.cli import build_parser
    from floatify.evaluate import EvalConfig
    from floatify.train import TrainConfig

    args = vars(build_parser().parse_args(["train", "--out", "x"]))
    dataset_dependent = {"eps"}  # None on the command line: floatify.data.default_eps(--dataset)
    for cls in (TrainConfig, floatify.FloatConfig):
        for f in fields(cls):
            if f.name not in dataset_dependent:
                assert args[f.name] == f.default, (cls.__name__, f.name, args[f.name], f.default)
    flags = {"attacks": "eval_attacks", "eps": "eval_eps", "steps": "eval_steps", "limit": "eval_limit",
             "batch_size": "eval_batch_size"}
    for f in fields(EvalConfig):
        value = args[flags.get(f.name, f.name)]
        assert (tuple(value) if f.name == "lams" else value) == f.default, (f.name, value, f.default)
    assert build_parser().parse_args(["train", "--out", "x", "--no-dual-bn"]).dual_bn is False
    assert build_parser().parse_args(["train", "--out", "x", "--no-keep-freed-heap"]).keep_freed_heap is False


# ------------------------------------------------------------- initial weights: --initial-checkpoint / --pretrained
FAST = ["--model", "resnet10t", "--image-size", "8", "--train-limit", "256", "--epochs", "1", "--batch-size", "128",
        "--steps", "1", "--lams", "0", "--eval-attacks", "clean", "--eval-limit", "48", "--no-progress"]


def _plain_weights(name="resnet10t", num_classes=10, seed=7):
    """The state_dict of the plain (unconverted, unwrapped) model, as timm/torchvision files hold it."""
    from floatify.models import create_model

    torch.manual_seed(seed)
    return create_model(name, num_classes, normalize=False).state_dict()


def _safetensors(state, path):
    from safetensors.torch import save_file

    save_file(state, str(path))
    return path


def _torch_wrapped(state, path):
    torch.save({"state_dict": state, "epoch": 90}, path)
    return path


def _conv_weights(state):
    return {k: v for k, v in state.items() if k.endswith("weight") and v.ndim == 4}


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty Hugging Face and torch.hub caches, and any attempt to open a connection fails the test."""
    import socket

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(*args, **kwargs):
        raise AssertionError("floatify train tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tmp_path / "hf-cache"


def _in_hub_cache(cache, repo_id, state):
    """Lay ``state`` out in the Hugging Face cache as hf_hub_download leaves a downloaded model.safetensors."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    _safetensors(state, repo / "snapshots" / commit / "model.safetensors")


@pytest.mark.parametrize("source", ["initial-safetensors", "initial-torch-state_dict", "pretrained-file",
                                    "pretrained-hub-cache"])
def test_training_starts_from_the_given_weights(tmp_path, no_network, source):
    from floatify.checkpoint import load_checkpoint

    in1k = source.startswith("pretrained")  # timm's pretrained weights: 1000 classes, the classifier is re-made
    weights = _plain_weights(num_classes=1000 if in1k else 10)
    if source == "initial-safetensors":
        argv = ["--initial-checkpoint", str(_safetensors(weights, tmp_path / "w.safetensors"))]
    elif source == "initial-torch-state_dict":
        argv = ["--initial-checkpoint", str(_torch_wrapped(weights, tmp_path / "w.pth"))]
    elif source == "pretrained-file":
        argv = ["--pretrained-file", str(_safetensors(weights, tmp_path / "in1k.safetensors"))]
    else:
        _in_hub_cache(no_network, "timm/resnet10t.c3_in1k", weights)
        argv = ["--pretrained"]
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--lr", "1e-9"] + argv + FAST) == 0
    state, meta = load_checkpoint(out / "model.safetensors")
    assert meta["initial_weights"] != "random"
    torch.manual_seed(0)  # the CLI's seed: what a run without initial weights starts from
    fresh = _plain_weights(seed=0)
    convs = _conv_weights(weights)
    assert len(convs) >= 10
    for key, value in convs.items():
        torch.testing.assert_close(state["model." + key], value, rtol=0, atol=1e-6)  # lr 1e-9: still the file's
        assert not torch.allclose(state["model." + key], fresh[key])
    if in1k:  # the classifier is the dataset's, freshly initialised, not the file's 1000-class one
        assert state["model.fc.weight"].shape == (10, weights["fc.weight"].shape[1])
    else:
        torch.testing.assert_close(state["model.fc.weight"], weights["fc.weight"], rtol=0, atol=1e-6)


def _resnet18_in1k(path):
    return _safetensors(_plain_weights("resnet18", 1000), path)


@pytest.mark.parametrize("make, name, option, message", [
    (lambda p: _torch_wrapped(_plain_weights(num_classes=5), p), "w.pth", "--initial-checkpoint",
     "'fc.weight' (5, 512) in the file vs (10, 512) in the model"),
    (lambda p: _safetensors({**_plain_weights(), "head.extra": torch.zeros(1)}, p), "w.safetensors",
     "--initial-checkpoint", "1 unexpected key(s), e.g. ['head.extra']"),
    (lambda p: _safetensors(_plain_weights("resnet18"), p), "w.safetensors", "--initial-checkpoint",
     "missing key(s)"),
    (_resnet18_in1k, "r18.safetensors", "--pretrained-file", "size mismatch for layer2.0.downsample"),
    (lambda p: p.write_bytes(b"\x00not weights" * 10), "junk.pth", "--pretrained-file", "cannot be read"),
    (lambda p: p.write_bytes(b"\x00not weights" * 10), "junk.safetensors", "--pretrained-file", "cannot be read"),
    (lambda p: None, "missing.pth", "--pretrained-file", "does not exist"),
    (lambda p: None, "", "--pretrained",
     "are not available locally and floatify does not download them; pass --initial-checkpoint PATH"),
    (lambda p: _torch_wrapped(_plain_weights(), p), "w.pth", "--initial-checkpoint --pretrained",
     "exclude each other"),
])
@pytest.mark.parametrize("old_run", [False, True], ids=["new-out", "overwrite"])
def test_weights_that_do_not_fit_are_refused_before_out_is_touched(tmp_path, capsys, no_network, make, name, option,
                                                                    message, old_run):
    path = tmp_path / (name or "unused")
    make(path)
    out = tmp_path / "run1"
    if old_run:
        _old_run(out)
    argv = [option, str(path)] if option in ("--initial-checkpoint", "--pretrained-file") else \
        ["--pretrained"] if option == "--pretrained" else ["--initial-checkpoint", str(path), "--pretrained"]
    code, err = _err(capsys, ["train", "--out", str(out)] + (["--overwrite"] if old_run else []) + argv + FAST)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert _unchanged(out) if old_run else not out.exists()
