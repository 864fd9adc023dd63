"""The top-level API: the verbs and their configs, one name each; helpers live in their submodules."""

from __future__ import annotations

import importlib.metadata

import pytest

import floatify


def test_top_level_is_the_verbs_and_their_configs():
    verbs = {"convert", "lam", "freeze", "sparsify", "fit", "float_loss", "evaluate", "summary"}
    configs = {"FloatConfig", "TrainConfig", "EvalConfig", "AttackSpec", "AuditConfig"}
    assert verbs | configs <= set(floatify.__all__)
    assert set(floatify.__all__) - verbs - configs <= {"export", "export_onnx", "save", "load", "push_to_hub"}
    assert all(callable(getattr(floatify, name)) for name in floatify.__all__)


@pytest.mark.parametrize("name, home", [
    ("Report", "floatify.report"), ("create_model", "floatify.models"), ("get_lam", "floatify.context"),
    ("hold_noise", "floatify.context"), ("ConversionSummary", "floatify.summary"), ("save_sparse", "floatify.sparsity"),
    ("load_original_state_dict", "floatify.convert"), ("operating_point", None), ("nope", None),
])
def test_helpers_are_not_top_level_names(name, home):
    with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
        getattr(floatify, name)
    if home is not None:  # the helper lives in its submodule, under one name
        assert callable(getattr(importlib.import_module(home), name))


def test_version_is_the_installed_distributions():
    assert floatify.__version__ == importlib.metadata.version("floatify")
