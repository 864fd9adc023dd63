"""The top-level API: the verbs and their configs; helpers moved to submodules still resolve (deprecated)."""

from __future__ import annotations

import importlib

import pytest

import floatify


def test_top_level_is_the_verbs_and_their_configs():
    verbs = {"convert", "lam", "freeze", "sparsify", "fit", "float_loss", "evaluate", "summary"}
    configs = {"FloatConfig", "TrainConfig", "EvalConfig", "AttackSpec"}
    assert verbs | configs <= set(floatify.__all__)
    assert set(floatify.__all__) - verbs - configs <= {"export", "export_onnx"}  # other verbs, no helpers
    assert all(callable(getattr(floatify, name)) for name in floatify.__all__)


@pytest.mark.parametrize("name", sorted(floatify._MOVED))
def test_moved_helpers_resolve_to_their_submodule_with_a_warning(name):
    home = importlib.import_module(floatify._MOVED[name])
    with pytest.warns(DeprecationWarning, match=f"floatify.{name} moved to {floatify._MOVED[name]}"):
        assert getattr(floatify, name) is getattr(home, name)
    assert name not in floatify.__all__


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        floatify.nope  # noqa: B018
