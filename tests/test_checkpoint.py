"""floatify.checkpoint: model checkpoints and pickle-free state files; every damage is a clear error."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.checkpoint import CheckpointError, load_checkpoint, load_into, load_state, save_checkpoint, save_state


def test_state_round_trips_tensors_and_containers(tmp_path):
    obj = {"a": torch.arange(3), 4: (1, 2.5, None, "s", [torch.ones(2, dtype=torch.uint8)]), "__ft_x": True,
           "nested": {"b": torch.zeros(0)}}
    save_state(tmp_path / "s", obj)
    back = load_state(tmp_path / "s")
    assert set(back) == {"a", 4, "__ft_x", "nested"} and torch.equal(back["a"], obj["a"])
    assert back[4][:4] == (1, 2.5, None, "s") and torch.equal(back[4][4][0], obj[4][4][0])
    assert back["nested"]["b"].shape == (0,)
    with pytest.raises(TypeError, match="cannot store a object"):
        save_state(tmp_path / "t", {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def _meta_not_json(path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "floatify-checkpoint-v1", "meta": "{broken"})


def _dir(path):
    path.mkdir()


def _unreadable(path):
    save_checkpoint(path, nn.Linear(2, 2), {})
    os.chmod(path, 0)


@pytest.mark.parametrize("make, message", [
    (_dir, "is a directory"),
    (_meta_not_json, "corrupted metadata"),
    (lambda p: p.write_bytes(b"\x00" * 64), "corrupted or not a safetensors file"),
    (_unreadable, "cannot read checkpoint"),
])
def test_load_checkpoint_errors_name_the_file(tmp_path, make, message):
    path = tmp_path / "model.safetensors"
    make(path)
    if message == "cannot read checkpoint" and os.access(path, os.R_OK):
        pytest.skip("running as a user who can read any file")
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_load_into_names_the_tensor_whose_shape_differs(tmp_path):
    save_checkpoint(tmp_path / "m", floatify.convert(nn.Linear(4, 3)), {"k": 1})
    state, meta = load_checkpoint(tmp_path / "m")
    assert meta == {"k": 1}
    with pytest.raises(CheckpointError, match=r"'weight' has shape \(3, 4\) in the checkpoint but \(3, 5\)"):
        load_into(floatify.convert(nn.Linear(5, 3)), state, "m")


def test_save_checkpoint_does_not_write_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "model.safetensors").symlink_to(victim)
    (tmp_path / "model.safetensors.tmp").symlink_to(victim)  # the old fixed temporary name
    save_checkpoint(tmp_path / "model.safetensors", nn.Linear(2, 2), {"a": [1]})
    assert victim.read_text() == "precious"
    assert json.loads(json.dumps(load_checkpoint(tmp_path / "model.safetensors")[1])) == {"a": [1]}


# ------------------------------------------------------------------ load_initial_checkpoint (fine-tuning)
def _plain():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _trained():
    torch.manual_seed(1)
    net = _plain()
    with torch.no_grad():
        net[1].running_mean.uniform_()
    return net


def _save_safetensors(state, path):
    from safetensors.torch import save_file

    save_file(state, str(path))


@pytest.mark.parametrize("write", [
    _save_safetensors,
    lambda sd, p: torch.save(sd, p),
    lambda sd, p: torch.save({"state_dict": sd, "epoch": 3, "arch": "x"}, p),
    lambda sd, p: torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}}, p),
    lambda sd, p: torch.save({"model_state_dict": sd}, p, _use_new_zipfile_serialization=False),
], ids=["safetensors", "bare", "state_dict", "model+module.", "legacy-format"])
def test_load_initial_checkpoint_reads_the_common_layouts(tmp_path, write):
    from floatify.checkpoint import load_initial_checkpoint

    source = _trained()
    write(source.state_dict(), tmp_path / "w")
    model = load_initial_checkpoint(_plain(), tmp_path / "w")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    converted = floatify.convert(model)  # then FLOAT fine-tuning starts from exactly these weights
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(converted.eval()(x), source.eval()(x))


def test_load_initial_checkpoint_into_normalized_model(tmp_path):
    from floatify.checkpoint import load_initial_checkpoint
    from floatify.models import Normalized

    source = _trained()
    torch.save(source.state_dict(), tmp_path / "inner.pth")
    torch.save(Normalized(source).state_dict(), tmp_path / "outer.pth")
    for name in ("inner.pth", "outer.pth"):
        model = load_initial_checkpoint(Normalized(_plain()), tmp_path / name)
        assert torch.equal(model.model[0].weight, source[0].weight)


def test_load_initial_checkpoint_mismatch_is_one_line_and_loads_nothing(tmp_path):
    from floatify.checkpoint import load_initial_checkpoint

    sd = _trained().state_dict()
    sd["3.weight"] = torch.zeros(10, 4 * 6 * 6)  # another num_classes
    sd["extra.weight"] = torch.zeros(1)
    del sd["1.running_var"]
    torch.save(sd, tmp_path / "w.pth")
    model = _plain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_initial_checkpoint(model, tmp_path / "w.pth")
    message = str(err.value)
    assert "\n" not in message and "nothing was loaded" in message
    assert r"'3.weight' (10, 144) in the file vs (3, 144) in the model" in message
    assert "1 missing key(s), e.g. ['1.running_var']" in message and "['extra.weight']" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_initial_checkpoint_refuses_what_it_cannot_use(tmp_path):
    from floatify.checkpoint import load_initial_checkpoint

    with pytest.raises(CheckpointError, match="does not exist"):
        load_initial_checkpoint(_plain(), tmp_path / "nope.pth")
    (tmp_path / "junk").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="neither a safetensors file .* nor a torch checkpoint readable"):
        load_initial_checkpoint(_plain(), tmp_path / "junk")
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"entries are not tensors, e.g. \['weights'\]"):
        load_initial_checkpoint(_plain(), tmp_path / "odd.pth")

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_initial_checkpoint(_plain(), tmp_path / "evil.pth")
    save_checkpoint(tmp_path / "conv.safetensors", floatify.convert(_plain()), {})
    with pytest.raises(CheckpointError, match="floatify checkpoint of an already converted model"):
        load_initial_checkpoint(_plain(), tmp_path / "conv.safetensors")
    torch.save(_plain().state_dict(), tmp_path / "ok.pth")
    with pytest.raises(CheckpointError, match="already converted: load the initial checkpoint"):
        load_initial_checkpoint(floatify.convert(_plain()), tmp_path / "ok.pth")
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        load_initial_checkpoint({"a": 1}, tmp_path / "ok.pth")


def _poisoned(value: float):
    """The plain model's state_dict with ``value`` in its classifier's weight (the file another run diverged into)."""
    def make(path):
        sd = _plain().state_dict()
        sd["3.weight"][0, 0] = value
        torch.save(sd, path)
    return make


def _integer_weights(path):
    torch.save({k: (v * 100).long() if v.is_floating_point() else v for k, v in _plain().state_dict().items()}, path)


def _checkpoint_with_nan(path):
    model = floatify.convert(_plain())
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(path, model, {})


# a hostile weights file -> the message naming it (and its first bad tensor); nothing is loaded
HOSTILE_INITIAL = [
    ("nan", _poisoned(float("nan")), "holds non-finite values (NaN or inf) in tensor '3.weight'"),
    ("inf", _poisoned(float("-inf")), "holds non-finite values (NaN or inf) in tensor '3.weight'"),
    ("int64", _integer_weights, "'0.weight' torch.int64 in the file vs torch.float32 in the model"),
]


@pytest.mark.parametrize("name, make, message", HOSTILE_INITIAL, ids=[r[0] for r in HOSTILE_INITIAL])
def test_a_hostile_initial_checkpoint_is_refused_and_loads_nothing(tmp_path, name, make, message):
    from floatify.checkpoint import load_initial_checkpoint

    make(tmp_path / "w.pth")
    model = _plain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_initial_checkpoint(model, tmp_path / "w.pth")
    assert message in str(err.value) and str(tmp_path / "w.pth") in str(err.value), err.value
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_holding_nan_is_refused_when_read(tmp_path):
    _checkpoint_with_nan(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"m.safetensors holds non-finite values \(NaN or inf\) in tensor "
                                              r"'0.weight'"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_load_into_refuses_integer_values_for_float_weights():
    model = floatify.convert(_plain())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight"] = (state["0.weight"] * 100).long()
    with pytest.raises(CheckpointError, match="'0.weight' is torch.int64 in the checkpoint but torch.float32"):
        load_into(model, state, "m.safetensors")
