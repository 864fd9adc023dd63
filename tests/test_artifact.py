"""floatify.save / load / push_to_hub: round trips, the Hub cache, and every hostile folder refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import floatify
import floatify.card
from floatify.artifact import ArtifactError, read_config
from floatify.layers.conditioned import is_conditioned
from floatify.layers.noise import noise_source
from floatify.models import create_model
from floatify.sparsity import sparsify, sparsity_report

X = torch.rand(2, 3, 32, 32)


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 3))


def _pruned() -> nn.Module:
    model = floatify.convert(create_model("resnet10t", 10))
    sparsify(model, 0.2, criterion="magnitude")
    return model


def _torchvision() -> nn.Module:
    import torchvision

    return floatify.convert(torchvision.models.get_model("mobilenet_v3_small", num_classes=7))


# name, build the model, save() keywords, load() keywords
ROUND_TRIPS = [
    ("timm by name", lambda: floatify.convert(create_model("resnet10t", 10)), {}, {}),
    ("timm.create_model", lambda: floatify.convert(__import__("timm").create_model("resnet10t", num_classes=4)),
     {}, {}),
    ("torchvision get_model", _torchvision, {}, {}),
    ("a layer that checks its state_dict version (MNASNet)",
     lambda: floatify.convert(__import__("torchvision").models.get_model("mnasnet0_5", num_classes=10)), {}, {}),
    ("arch= with kwargs", lambda: floatify.convert(__import__("timm").create_model(
        "vit_tiny_patch16_224", num_classes=5, img_size=32)),
     {"arch": {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32}}}, {}),
    ("pruned", _pruned, {}, {}),
    ("frozen", lambda: floatify.freeze(floatify.convert(create_model("resnet10t", 10)), lam=0.3, seed=0), {}, {}),
    ("filter_fn", lambda: floatify.convert(create_model("resnet10t", 10), filter_fn=lambda m, fqn: fqn != "model.fc"),
     {}, {}),
    ("custom model, model=", lambda: floatify.convert(_small_net()), {}, {"model": _small_net()}),
]


def _logits(model: nn.Module, lam: float, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    with noise_source("fresh"), floatify.lam(lam):
        return model(X)


@pytest.mark.parametrize("name,build,save_kw,load_kw", ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip_is_exact(tmp_path, name, build, save_kw, load_kw):
    model = build().eval()
    folder = floatify.save(model, tmp_path / "dial", **save_kw)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    again = floatify.load(folder, **load_kw)
    assert not again.training, "load returns the model in eval mode"
    for lam in (0.0, 0.5, 1.0):
        assert torch.equal(_logits(model, lam), _logits(again, lam)), f"λ = {lam} differs after the round trip"
    assert any(is_conditioned(m) for m in again.modules()) == any(is_conditioned(m) for m in model.modules())
    if name == "pruned":
        assert sparsity_report(again).density == pytest.approx(sparsity_report(model).density)
        assert read_config(folder)["sparsity"]["density"] == pytest.approx(sparsity_report(model).density, abs=1e-6)
    if name == "frozen":
        assert read_config(folder)["frozen"] == {"lam": 0.3, "seed": 0}


def test_model_argument_is_left_unconverted(tmp_path):
    skeleton = _small_net()
    floatify.save(floatify.convert(_small_net()), tmp_path / "m")
    floatify.load(tmp_path / "m", model=skeleton)
    assert not any(is_conditioned(m) for m in skeleton.modules())


def test_overwrite_replaces_the_folder_as_a_whole(tmp_path):
    first = floatify.convert(create_model("resnet10t", 10))
    second = floatify.convert(create_model("resnet10t", 10))
    floatify.save(first, tmp_path / "m")
    with pytest.raises(ArtifactError, match="pass overwrite=True"):
        floatify.save(second, tmp_path / "m")
    floatify.save(second, tmp_path / "m", overwrite=True)
    assert torch.equal(_logits(floatify.load(tmp_path / "m"), 0.0), _logits(second.eval(), 0.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "no staging folder left behind"


def test_failed_save_leaves_the_old_folder_byte_identical(tmp_path, monkeypatch):
    floatify.save(floatify.convert(create_model("resnet10t", 10)), tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(floatify.card, "model_card", broken)
    with pytest.raises(OSError):
        floatify.save(floatify.convert(create_model("resnet10t", 10)), tmp_path / "m", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _saved(tmp_path: Path) -> Path:
    return floatify.save(floatify.convert(create_model("resnet10t", 10)), tmp_path / "m")


def _edit_config(**changes):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        for dotted, value in changes.items():
            keys = dotted.split("__")
            target = config
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value
        (folder / "config.json").write_text(json.dumps(config))
    return edit


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _as_pickle(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _second_weights(folder: Path) -> None:
    shutil.copy(folder / "model.safetensors", folder / "model-00002.safetensors")


# name, how the saved folder is damaged, the message fragment
HOSTILE_FOLDERS = [
    ("missing weights", lambda f: (f / "model.safetensors").unlink(), "has no model.safetensors"),
    ("pickle weights", _as_pickle, "pickle weights"),
    ("two weight files", _second_weights, "2 weight files"),
    ("truncated weights", _truncate, "truncated or corrupted"),
    ("config not JSON", lambda f: (f / "config.json").write_text("{nonsense"), "not valid JSON"),
    ("config a list", lambda f: (f / "config.json").write_text("[1, 2]"), "'config' must be a JSON object"),
    ("newer format", _edit_config(format_version=99), "upgrade floatify"),
    ("unknown architecture", _edit_config(architecture__name="resnet_9000"), "not a timm or torchvision model"),
    ("num_classes not an int", _edit_config(architecture__num_classes="ten"), "'architecture.num_classes' must be"),
    ("num_classes does not fit", _edit_config(architecture__num_classes=11), "does not fit"),
    ("invalid conversion", _edit_config(conversion__bn_mix="blend"), "'conversion' is invalid"),
    ("zero std", _edit_config(preprocessing__std=[0.2, 0.0, 0.2]), "'preprocessing.std' must be positive"),
    ("no architecture", _edit_config(architecture=None), "pass the unconverted model"),
    ("frozen and converted", _edit_config(frozen={"lam": 0.5}), "exactly one of them set"),
    ("a huge head", _edit_config(architecture__num_classes=10**12), "'architecture.num_classes' must be an int in"),
    ("kwargs that fetch weights", _edit_config(architecture__kwargs={"pretrained": True}), "free of"),
    ("kwargs that are not JSON values", _edit_config(architecture__kwargs={"act_layer": {"x": 1}}),
     "'architecture.kwargs' must be an object of numbers"),
    ("kwargs the constructor refuses", _edit_config(architecture__kwargs={"no_such_argument": 1}),
     "cannot be built"),
    ("a negative image size", _edit_config(training={"image_size": -5}), "'training.image_size' must be"),
    ("eps as text", _edit_config(training={"eps": "0.1"}), "'training.eps' must be"),
]


@pytest.mark.parametrize("name,damage,fragment", HOSTILE_FOLDERS, ids=[r[0] for r in HOSTILE_FOLDERS])
def test_hostile_folder_is_refused_in_one_line(tmp_path, name, damage, fragment):
    folder = _saved(tmp_path)
    damage(folder)
    with pytest.raises(ArtifactError) as err:
        floatify.load(folder)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# name, source, the message fragment
HOSTILE_SOURCES = [
    ("missing folder", "no/such/folder", "does not exist"),
    ("a Hub id without owner", "hf-hub:resnet", "not a Hub id"),
]


@pytest.mark.parametrize("name,source,fragment", HOSTILE_SOURCES, ids=[r[0] for r in HOSTILE_SOURCES])
def test_hostile_source_is_refused_in_one_line(name, source, fragment):
    with pytest.raises(ArtifactError, match=fragment):
        floatify.load(source)


# name, the model, save keywords, where it is saved, the message fragment
HOSTILE_SAVES = [
    ("unconverted", lambda: create_model("resnet10t", 10), {}, "m", "neither converted"),
    ("wrong arch", lambda: floatify.convert(create_model("resnet10t", 10)), {"arch": "resnet18"}, "m",
     "does not match its recorded architecture"),
    ("not a model name", lambda: floatify.convert(create_model("resnet10t", 10)), {"arch": "resnet_9000"}, "m",
     "not a timm or torchvision model name"),
    ("foreign folder", lambda: floatify.convert(create_model("resnet10t", 10)), {"overwrite": True}, "foreign",
     "it is not a model floatify saved"),
    ("a file", lambda: floatify.convert(create_model("resnet10t", 10)), {}, "file", "is not a folder"),
]


@pytest.mark.parametrize("name,build,kw,where,fragment", HOSTILE_SAVES, ids=[r[0] for r in HOSTILE_SAVES])
def test_hostile_save_is_refused_before_writing(tmp_path, name, build, kw, where, fragment):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("a file")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ArtifactError, match=fragment):
        floatify.save(build(), tmp_path / where, **kw)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing written"


def test_earlier_run_folder_still_loads(tmp_path):
    from floatify.checkpoint import save_checkpoint

    model = floatify.convert(create_model("resnet10t", 10), floatify.FloatConfig(bn_mix="switch", bn_curve=1.0))
    (tmp_path / "run").mkdir()
    meta = {"model": "resnet10t", "num_classes": 10, "image_size": 16, "dataset": "digits",
            "convert": {"alpha_init": 0.25, "dual_bn": True}, "train": {"eps": 0.1, "seed": 0}}
    save_checkpoint(tmp_path / "run" / "model.safetensors", model.eval(), meta)
    again = floatify.load(tmp_path / "run")
    for lam in (0.0, 0.5):
        assert torch.equal(_logits(model, lam), _logits(again, lam))
