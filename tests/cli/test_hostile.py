"""The command line against hostile input: every row is an input a careless or malicious user could give (an option
value, a tampered file, no network) and the one line, exit code 2, it must get, with nothing written.

A row: the options added to the command (``{tmp}`` is the test's own folder), a setup that plants files or
monkeypatches before the command runs, the expected exit code and a fragment of the message. Image folders with
damaged files have their own table in tests/test_imagefolder.py.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from floatify.checkpoint import load_state, save_state
from floatify.run_state import STATE_FILE


@dataclass(frozen=True)
class Hostile:
    name: str
    argv: tuple[str, ...] = ()  # added to the command's options; "{tmp}" is the test's folder
    setup: Callable[[Path, Path, pytest.MonkeyPatch], object] | None = None  # (tmp, out, monkeypatch), before the run
    message: str = ""  # a fragment of the one line on stderr (exit code 2)
    code: int = 2
    resume: bool = False  # --out is a copy of the tiny trained run, continued with --resume
    after: Callable[[Path], bool] | None = None  # a check of --out once the command returned
    command: str = "train"


def _command(row: Hostile, out: Path, tmp: Path, tiny: list[str]) -> list[str]:
    """The command line of ``row`` (another command gets its base options here)."""
    argv = [a.replace("{tmp}", str(tmp)) for a in row.argv]
    base = {"train": ["train", "--out", str(out), *tiny],
            "eval": ["eval", str(tmp / "model"), "--out", str(out), "--lams", "0,1", "--no-progress"]}[row.command]
    return base + argv + (["--resume"] if row.resume else [])


# ---------------------------------------------------------------------------------------- setups
def _plain_weights(tmp: Path, change: Callable[[dict], None], name: str = "w.pth", classes: int = 10) -> None:
    import timm

    torch.manual_seed(0)
    state = timm.create_model("resnet10t", num_classes=classes).state_dict()
    change(state)
    torch.save(state, tmp / name)


def _nan_initial(tmp, out, mp):
    _plain_weights(tmp, lambda s: s["fc.weight"].view(-1)[0].fill_(float("nan")))


def _int64_initial(tmp, out, mp):
    _plain_weights(tmp, lambda s: s.update({k: (v * 100).long() for k, v in s.items() if v.is_floating_point()}))


def _fine_initial(tmp, out, mp):
    _plain_weights(tmp, lambda s: None)


def _nan_pretrained(tmp, out, mp):
    from safetensors.torch import save_file

    _plain_weights(tmp, lambda s: s["conv1.0.weight"].fill_(float("inf")), classes=1000)
    save_file(torch.load(tmp / "w.pth"), str(tmp / "pretrained.safetensors"))


def _tamper_state(change: Callable[[dict], None]):
    def setup(tmp, out, mp):
        state = load_state(out / STATE_FILE)
        change(state)
        save_state(out / STATE_FILE, state)
    return setup


def _state_is_a_folder(tmp, out, mp):
    (out / STATE_FILE).unlink()
    (out / STATE_FILE).mkdir()


def _no_network(tmp, out, mp):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    mp.setattr(urllib.request, "urlopen", offline)


def _model_on_images(model_classes: int, data_classes: int):
    """A saved ``model_classes``-way dial at {tmp}/model, recorded as trained on {tmp}/images: tiny random images
    in ``data_classes`` class folders (the val split read in class order)."""
    def setup(tmp, out, mp):
        import numpy as np
        from PIL import Image

        import floatify
        from floatify.models import create_model

        g = np.random.default_rng(0)
        for split in ("train", "val"):
            for c in range(data_classes):
                (tmp / "images" / split / f"c{c}").mkdir(parents=True)
                for i in range(2):
                    pixels = g.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(tmp / "images" / split / f"c{c}" / f"{i}.png")
        floatify.save(floatify.convert(create_model("resnet10t", model_classes)), tmp / "model",
                      training={"dataset": f"imagefolder:{tmp / 'images'}", "image_size": 8, "eps": 0.1})
    return setup


def _report_notes(note: str) -> Callable[[Path], bool]:
    return lambda out: f"Note: {note}" in (out / "report.md").read_text()


def _history_is_valid(out: Path) -> bool:
    history = json.loads((out / "history.json").read_text())
    return [r["epoch"] for r in history] == [1] and "garbage" not in (out / "summary.csv").read_text()


ROWS = [
    # non-finite or foreign weights: refused when read, naming the file and the first bad tensor
    Hostile("initial checkpoint holding NaN", ("--initial-checkpoint", "{tmp}/w.pth"), _nan_initial,
            "holds non-finite values (NaN or inf) in tensor 'fc.weight'"),
    Hostile("initial checkpoint of int64 weights", ("--initial-checkpoint", "{tmp}/w.pth"), _int64_initial,
            "torch.int64 in the file vs torch.float32 in the model"),
    Hostile("pretrained file holding inf", ("--pretrained-file", "{tmp}/pretrained.safetensors"), _nan_pretrained,
            "the weights hold non-finite values (NaN or inf) in 'model.conv1.0.weight'"),
    # a run that diverges stops with where and why; nothing is saved
    Hostile("lr 1e30", ("--lr", "1e30"), message="training diverged: the loss is nan at epoch 1"),
    Hostile("alpha-init 1e30", ("--alpha-init", "1e30"), message="training diverged"),
    # options whose values cannot train
    Hostile("seed -1", ("--seed", "-1"), message="--seed must be an int >= 0, got -1"),
    Hostile("seed 2**70", ("--seed", str(2**70)), message="--seed must be an int in [0, 4294967295]"),
    Hostile("huge image size", ("--image-size", "100000"), message="--image-size 100000 is larger than 4096"),
    Hostile("vit at 8 px", ("--model", "vit_tiny_patch16_224"),
            message="--model vit_tiny_patch16_224 cannot run on inputs of shape (3, 8, 8)"),
    Hostile("alexnet at 8 px", ("--model", "alexnet"), message="--model alexnet cannot run on inputs of shape"),
    Hostile("amp on cpu", ("--amp", "--device", "cpu"), message="--amp (mixed precision) runs on CUDA only"),
    Hostile("download without network", ("--dataset", "cifar10", "--download", "--data-root", "{tmp}/data"),
            _no_network, "cannot download dataset 'cifar10' (no network?"),
    # a resume reads the run state as untrusted input
    Hostile("resume with an initial checkpoint", ("--initial-checkpoint", "{tmp}/w.pth"), _fine_initial,
            "--resume continues from the weights saved in --out", resume=True),
    Hostile("train_state epoch -5", setup=_tamper_state(lambda s: s.update(epoch=-5)),
            message="('epoch' is -5, not an int in [0, 0]", resume=True),
    Hostile("train_state epoch 1e30", setup=_tamper_state(lambda s: s.update(epoch=1e30)),
            message="('epoch' is 1e+30, not an int", resume=True),
    Hostile("train_state history garbage", setup=_tamper_state(lambda s: s.update(history=[1, "x"])),
            message="('history' holds 2 records, not one per epoch trained (1))", resume=True),
    Hostile("train_state with a NaN weight", setup=_tamper_state(lambda s: s["model"]["model.fc.weight"].fill_(
        float("nan"))), message="holds non-finite values (NaN or inf) in 'model.model.fc.weight'", resume=True),
    Hostile("train_state is a folder", setup=_state_is_a_folder, message="is a directory, not the file floatify "
            "writes", resume=True),
    Hostile("train_state truncated", setup=lambda tmp, out, mp: (out / STATE_FILE).write_bytes(b"\0" * 40),
            message="truncated or corrupted", resume=True),
    Hostile("history.json garbage", setup=lambda tmp, out, mp: ((out / "history.json").write_text("garbage{"),
                                                                (out / "summary.csv").write_text("garbage")),
            code=0, resume=True, after=_history_is_valid),
    Hostile("resume with another --mean", ("--mean", "0.5,0.5,0.5"), message="settings changed since the "
            "checkpoint (mean)", resume=True),
    Hostile("resume with another --std", ("--std", "0.5,0.5,0.5"), message="settings changed since the checkpoint "
            "(std)", resume=True),
    # floatify eval: data the model cannot be scored on is one line before any attack; data that says little, a note
    Hostile("eval: data with more classes than the model", ("--eval-attacks", "clean,fgsm"), _model_on_images(2, 3),
            "labels must lie in [0, 1] (the model outputs 2 classes, num_classes=3)", command="eval"),
    Hostile("eval: a λ twice", ("--lams", "0,0.0"), _model_on_images(2, 2), "--lams names a λ twice (0,0)",
            command="eval"),
    Hostile("eval: the test points all of one class", ("--eval-limit", "2", "--eval-attacks", "clean,fgsm"),
            _model_on_images(2, 2), code=0, command="eval",
            after=_report_notes("every test point has label 0: the accuracies measure one class only")),
]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_hostile_input_gets_one_line_and_writes_nothing(trained_run, tmp_path, run_cli, monkeypatch, tiny, row):
    out = tmp_path / "run"
    if row.resume:
        shutil.copytree(trained_run, out)
    if row.setup is not None:
        row.setup(tmp_path, out, monkeypatch)
    before = _files(out) if out.is_dir() else None
    code, err = run_cli(_command(row, out, tmp_path, tiny))
    assert code == row.code, err
    if row.code == 2:
        assert row.message in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"floatify {row.command}: error: ")
        assert (_files(out) == before) if before is not None else not out.exists(), "a refused run wrote to --out"
    if row.after is not None:
        assert row.after(out)
