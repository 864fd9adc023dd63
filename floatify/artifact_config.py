"""The ``config.json`` of a saved model, read as untrusted input: :func:`validate_config`.

A config comes from a folder anyone may have written (a download, a Hub repository): every key is checked for type
and range before anything is built from it, and a bad one is refused with an :class:`ArtifactError` that names the
key. Architectures are names and plain constructor arguments; arguments that would fetch or read weights are refused
(weights come from ``model.safetensors`` only).

Example:
    >>> from floatify.artifact_config import ArtifactError, validate_config
    >>> validate_config({"format": "floatify", "format_version": 1, "architecture": None,
    ...                  "preprocessing": {"normalized": False}, "conversion": {}, "frozen": None})["format"]
    'floatify'
    >>> try:
    ...     validate_config({"format": "floatify", "format_version": 1,
    ...                      "architecture": {"name": "resnet18", "num_classes": 0}})
    ... except ArtifactError as err:
    ...     print(err)  # doctest: +ELLIPSIS
    config.json: 'architecture.num_classes' must be an int in [1, 100000], got 0; the file was edited or damaged...
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from floatify.checkpoint import CheckpointError

__all__ = ["validate_config", "conversion_config", "ArtifactError", "FORMAT", "FORMAT_VERSION", "CONFIG_FILE",
           "MAX_CLASSES", "MAX_INPUT_SIZE", "REFUSED_KWARGS", "SOURCES"]

FORMAT = "floatify"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MAX_CLASSES = 100_000  # reason: a config is untrusted input; the largest classifier heads are ~22k classes
MAX_INPUT_SIZE = 4096
# reason: constructor arguments that fetch or read weights (a URL, a Hub repo, a file) or fight num_classes
REFUSED_KWARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "weights",
                            "checkpoint_path", "cache_dir", "num_classes", "features_only"})
SOURCES = ("timm", "torchvision")


class ArtifactError(CheckpointError):
    """A saved model folder that cannot be written or read: one line saying what is wrong and what to do."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (at most 300 characters), for one-line errors that quote it."""
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _want(ok: bool, where: str, key: str, need: str, value: Any) -> None:
    if not ok:
        raise ArtifactError(f"{where}: '{key}' must be {need}, got {value!r}; the file was edited or damaged — save "
                            f"the model again with floatify.save")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_config(config: Any, where: str = CONFIG_FILE) -> dict:
    """``config`` if it is a config :func:`load` can use (types and ranges checked as untrusted input), else an
    :class:`ArtifactError` naming the key."""
    _want(isinstance(config, dict), where, "config", "a JSON object", type(config).__name__)
    _want(config.get("format") == FORMAT, where, "format", f"'{FORMAT}'", config.get("format"))
    version = config.get("format_version")
    _want(isinstance(version, int) and not isinstance(version, bool) and version >= 0, where, "format_version",
          "an int", version)
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{where} is format {version}, newer than this floatify reads ({FORMAT_VERSION}; saved "
                            f"by floatify {config.get('floatify_version')}); upgrade floatify: pip install -U floatify")
    _validate_arch(config.get("architecture"), where)
    _validate_preprocessing(config.get("preprocessing"), where)
    conversion, frozen = config.get("conversion"), config.get("frozen")
    _want(conversion is None or isinstance(conversion, dict), where, "conversion", "an object or null", conversion)
    _want(frozen is None or (isinstance(frozen, dict) and _number(frozen.get("lam"))
                             and 0 <= frozen["lam"] <= 1), where, "frozen", "null or {\"lam\": 0..1}", frozen)
    _want((conversion is None) != (frozen is None), where, "conversion/frozen", "exactly one of them set",
          (conversion, frozen))
    if conversion is not None:
        conversion_config(conversion, where)
        excluded = conversion.get("excluded", [])
        _want(isinstance(excluded, list) and all(isinstance(s, str) for s in excluded), where,
              "conversion.excluded", "a list of module names", excluded)
    sparsity = config.get("sparsity")
    _want(sparsity is None or (isinstance(sparsity, dict) and _number(sparsity.get("density"))
                               and 0 < sparsity["density"] <= 1), where, "sparsity", "null or {\"density\": (0, 1]}",
          sparsity)
    _validate_training(config.get("training"), where)
    return config


def _validate_training(training: Any, where: str) -> None:
    """The training facts floatify eval and export act on: the data to evaluate on, its size, eps, seed."""
    _want(training is None or isinstance(training, dict), where, "training", "an object or null", training)
    if training is None:
        return
    checks = {"dataset": (lambda v: isinstance(v, str) and v != "", "a dataset name"),
              "image_size": (lambda v: _integer(v, 8, MAX_INPUT_SIZE), f"an int in [8, {MAX_INPUT_SIZE}]"),
              "eps": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
              "seed": (lambda v: _integer(v, 0, 2**63 - 1), "an int >= 0"),
              "val_split": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
              "data_config": (lambda v: isinstance(v, dict), "an object")}
    for key, (ok, need) in checks.items():
        value = training.get(key)
        _want(value is None or ok(value), where, f"training.{key}", f"null or {need}", value)


def _integer(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _plain_value(v: Any) -> bool:
    if isinstance(v, list):
        return all(_plain_value(x) for x in v)
    return v is None or isinstance(v, (bool, str)) or _number(v)


def _validate_arch(arch: Any, where: str) -> None:
    if arch is None:
        return
    _want(isinstance(arch, dict), where, "architecture", "an object or null", arch)
    _want(isinstance(arch.get("name"), str) and arch["name"] != "", where, "architecture.name", "a model name",
          arch.get("name"))
    n = arch.get("num_classes")
    _want(_integer(n, 1, MAX_CLASSES), where, "architecture.num_classes", f"an int in [1, {MAX_CLASSES}]", n)
    kwargs = arch.get("kwargs", {})
    _want(isinstance(kwargs, dict) and all(_plain_value(v) for v in kwargs.values()), where, "architecture.kwargs",
          "an object of numbers, strings, booleans and lists of them", kwargs)
    refused = sorted(set(kwargs) & REFUSED_KWARGS)
    _want(not refused, where, "architecture.kwargs", f"free of {', '.join(sorted(REFUSED_KWARGS))} (weights come from "
          f"model.safetensors only)", refused)
    _want(arch.get("source") in (None, *SOURCES), where, "architecture.source", f"one of {SOURCES}",
          arch.get("source"))


def _validate_preprocessing(pre: Any, where: str) -> None:
    _want(isinstance(pre, dict) and isinstance(pre.get("normalized"), bool), where, "preprocessing",
          "an object with 'normalized'", pre)
    for key in ("mean", "std"):
        value = pre.get(key)
        _want(value is None or (isinstance(value, list) and len(value) in (1, 3) and all(map(_number, value))),
              where, f"preprocessing.{key}", "null or 1 or 3 numbers", value)
    _want(pre.get("std") is None or all(v > 0 for v in pre["std"]), where, "preprocessing.std", "positive",
          pre.get("std"))
    size = pre.get("input_size")
    _want(size is None or (isinstance(size, list) and len(size) == 3 and all(
        _integer(v, 1, MAX_INPUT_SIZE) for v in size)), where,
        "preprocessing.input_size", "null or [channels, height, width]", size)


def conversion_config(conversion: dict, where: str = CONFIG_FILE):
    """The :class:`floatify.FloatConfig` of a config's ``conversion`` (unknown keys ignored), validated."""
    from floatify.convert import FloatConfig

    known = {f.name for f in fields(FloatConfig)}
    try:
        return FloatConfig(**{k: v for k, v in conversion.items() if k in known})
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{where}: 'conversion' is invalid ({first_line(err)}); the file was edited or damaged — "
                            f"save the model again with floatify.save") from None
