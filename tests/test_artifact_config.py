"""floatify.artifact_config: a config.json is untrusted input — every key checked, each refusal names its key."""

from __future__ import annotations

import copy

import pytest

from floatify.artifact_config import FORMAT_VERSION, MAX_CLASSES, ArtifactError, validate_config

VALID = {"format": "floatify", "format_version": FORMAT_VERSION, "floatify_version": "0.1.0",
         "architecture": {"source": "timm", "name": "resnet10t", "num_classes": 10, "kwargs": {"drop_rate": 0.1}},
         "preprocessing": {"normalized": True, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2],
                           "input_size": [3, 32, 32]},
         "conversion": {"alpha_init": 0.1, "dual_bn": True, "bn_mix": "switch", "bn_curve": 1.0, "excluded": []},
         "frozen": None, "sparsity": {"density": 0.5},
         "training": {"dataset": "digits", "image_size": 32, "eps": 0.1, "seed": 0, "val_split": None}}


def _with(dotted: str, value):
    config = copy.deepcopy(VALID)
    *path, last = dotted.split(".")
    target = config
    for key in path:
        target = target[key]
    target[last] = value
    return config


# the key changed, its new value, the message fragment
HOSTILE = [
    ("format", "pytorch", "'format' must be 'floatify'"),
    ("format_version", "1", "'format_version' must be an int"),
    ("format_version", True, "'format_version' must be an int"),
    ("format_version", FORMAT_VERSION + 1, "upgrade floatify"),
    ("architecture", [1], "'architecture' must be an object or null"),
    ("architecture.name", "", "'architecture.name' must be a model name"),
    ("architecture.num_classes", 0, f"an int in [1, {MAX_CLASSES}]"),
    ("architecture.num_classes", MAX_CLASSES + 1, f"an int in [1, {MAX_CLASSES}]"),
    ("architecture.num_classes", 10.0, "'architecture.num_classes' must be"),
    ("architecture.kwargs", {"pretrained": True}, "free of"),
    ("architecture.kwargs", {"checkpoint_path": "/etc/passwd"}, "free of"),
    ("architecture.kwargs", {"act_layer": {"nested": 1}}, "'architecture.kwargs' must be an object of numbers"),
    ("architecture.kwargs", {"drop_rate": float("nan")}, "'architecture.kwargs' must be an object of numbers"),
    ("architecture.source", "keras", "'architecture.source' must be one of"),
    ("preprocessing", None, "'preprocessing' must be an object with 'normalized'"),
    ("preprocessing.normalized", "yes", "'preprocessing' must be an object with 'normalized'"),
    ("preprocessing.mean", [0.5, 0.5], "'preprocessing.mean' must be null or 1 or 3 numbers"),
    ("preprocessing.std", [0.2, -0.2, 0.2], "'preprocessing.std' must be positive"),
    ("preprocessing.input_size", [3, 32], "'preprocessing.input_size' must be null or [channels, height, width]"),
    ("preprocessing.input_size", [3, 10**6, 32], "'preprocessing.input_size' must be"),
    ("conversion", "switch", "'conversion' must be an object or null"),
    ("conversion.bn_mix", "blend", "'conversion' is invalid"),
    ("conversion.excluded", "layer1", "'conversion.excluded' must be a list of module names"),
    ("frozen", {"lam": 1.5}, "'frozen' must be null or {\"lam\": 0..1}"),
    ("frozen", {"lam": 0.5}, "'conversion/frozen' must be exactly one of them set"),
    ("sparsity", {"density": 0}, "'sparsity' must be null or {\"density\": (0, 1]}"),
    ("training", "digits", "'training' must be an object or null"),
    ("training.dataset", "", "'training.dataset' must be null or a dataset name"),
    ("training.image_size", 4, "'training.image_size' must be null or an int in [8, 4096]"),
    ("training.eps", 2, "'training.eps' must be null or a number in [0, 1]"),
    ("training.eps", float("inf"), "'training.eps' must be null or a number in [0, 1]"),
    ("training.seed", -1, "'training.seed' must be null or an int >= 0"),
    ("training.val_split", 1.0, "'training.val_split' must be null or a number in (0, 1)"),
]


def test_the_valid_config_passes():
    assert validate_config(copy.deepcopy(VALID)) == VALID


@pytest.mark.parametrize("key,value,fragment", HOSTILE, ids=[f"{r[0]}={r[1]!r}" for r in HOSTILE])
def test_hostile_key_is_refused_by_name(key, value, fragment):
    with pytest.raises(ArtifactError) as err:
        validate_config(_with(key, value), "m/config.json")
    message = str(err.value)
    assert fragment in message and message.startswith("m/config.json") and "\n" not in message


def test_a_non_object_config_is_refused():
    with pytest.raises(ArtifactError, match="'config' must be a JSON object"):
        validate_config([VALID])
