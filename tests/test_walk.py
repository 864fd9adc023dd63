"""floatify.walk: every module once, depth-first, under its first name."""

from __future__ import annotations

import pytest
import torch.nn as nn

from floatify.walk import iter_modules

shared = nn.Linear(2, 2)


@pytest.mark.parametrize("model, prefix, names", [
    (nn.Sequential(nn.Linear(2, 2), nn.ReLU()), "", ["", "0", "1"]),
    (nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.ReLU()), "", ["", "0", "0.0", "1"]),  # depth first
    (nn.Sequential(nn.Sequential(shared), shared), "", ["", "0", "0.0"]),  # a shared module: one site, first name
    (nn.Sequential(nn.Linear(2, 2)), "net", ["net", "net.0"]),
    (nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Sequential(nn.Identity())}), "", ["", "a", "b", "b.0"]),
])
def test_every_module_once_depth_first_with_its_first_name(model, prefix, names):
    walked = list(iter_modules(model, prefix))
    assert [fqn for fqn, _ in walked] == names
    assert len({id(m) for _, m in walked}) == len(walked)


def test_a_child_set_to_none_is_skipped():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    model._modules["1"] = None  # what torch does for an optional submodule that is absent
    assert [fqn for fqn, _ in iter_modules(model)] == ["", "0"]
