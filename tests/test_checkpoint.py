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
