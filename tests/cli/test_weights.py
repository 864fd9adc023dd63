"""floatify.cli.weights: a run starts from random weights, --initial-checkpoint or timm's --pretrained (local only),
and weights that do not fit are refused in one line before the run folder is touched."""

from __future__ import annotations

import json

import pytest
import torch

from floatify.cli import main

from helpers import old_run_unchanged, plant_old_run

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
    state, _ = load_checkpoint(out / "model.safetensors")
    assert json.loads((out / "config.json").read_text())["training"]["initial_weights"] != "random"
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
def test_weights_that_do_not_fit_are_refused_before_out_is_touched(tmp_path, run_cli, no_network, make, name, option,
                                                                    message, old_run):
    path = tmp_path / (name or "unused")
    make(path)
    out = tmp_path / "run1"
    if old_run:
        plant_old_run(out)
    argv = [option, str(path)] if option in ("--initial-checkpoint", "--pretrained-file") else \
        ["--pretrained"] if option == "--pretrained" else ["--initial-checkpoint", str(path), "--pretrained"]
    code, err = run_cli(["train", "--out", str(out)] + (["--overwrite"] if old_run else []) + argv + FAST)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert old_run_unchanged(out) if old_run else not out.exists()
