"""Checkpoints: the model's state_dict in safetensors, with the recipe to rebuild it in the metadata.

Example:
    >>> import os, tempfile, torch, floatify
    >>> from floatify.checkpoint import save_checkpoint, load_checkpoint
    >>> model = floatify.convert(torch.nn.Linear(4, 2))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_checkpoint(os.path.join(folder, "m.safetensors"), model, {"model": "custom"})
    ...     state, meta = load_checkpoint(path)
    >>> meta["model"], sorted(state)
    ('custom', ['bias', 'weight', 'weight_alpha'])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from floatify.io import atomic_write, first_non_finite, read_safetensors

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_into", "save_state", "load_state",
           "load_initial_checkpoint"]

FORMAT = "floatify-checkpoint-v1"
STATE_FORMAT = "floatify-state-v1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, or for a different model."""


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write ``model.state_dict()`` and ``meta`` (JSON-serialisable) to a safetensors file, atomically."""
    from safetensors.torch import save

    path = Path(path)
    # reason: safetensors refuses tensors sharing storage (tied weights, a shared α): store copies
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write(path, save(state, metadata={"format": FORMAT, "meta": json.dumps(meta)}))


def _check_readable(path: Path, what: str) -> None:
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory, not a file (pass the file inside it, e.g. "
                              f"{path / 'model.safetensors'})")
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise CheckpointError(f"cannot read {what} {path}: {err.strerror or err}; check its permissions") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a floatify checkpoint: (state_dict, meta). Clear errors for missing or corrupted files."""

    path = Path(path)
    _check_readable(path, "checkpoint")
    state, header = read_safetensors(path, "checkpoint", CheckpointError)
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a floatify checkpoint (no '{FORMAT}' header)")
    try:
        meta = json.loads(header.get("meta", "{}"))
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path} has corrupted metadata ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has corrupted metadata (not a JSON object)")
    return state, meta


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state)`` with an error that says which architecture mismatch it is."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source} does not fit this model (different architecture or settings?): '{key}' has shape "
                f"{tuple(value.shape)} in the checkpoint but {tuple(own[key].shape)} in the model"
            )
        if key in own and own[key].is_floating_point() != value.is_floating_point():  # reason: else cast silently
            raise CheckpointError(f"{source} does not fit this model: '{key}' is {value.dtype} in the checkpoint but "
                                  f"{own[key].dtype} in the model; save the model's own weights again")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source} does not fit this model (different architecture or settings?): "
            f"{len(result.missing_keys)} missing keys e.g. {result.missing_keys[:3]}, "
            f"{len(result.unexpected_keys)} unexpected e.g. {result.unexpected_keys[:3]}"
        )


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")  # timm/Lightning, torchvision references, common scripts


def _read_weights(path: Path) -> dict:
    """A safetensors file or a torch checkpoint (``weights_only=True``), as a mapping."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") == FORMAT:
                raise CheckpointError(
                    f"{path} is a floatify checkpoint of an already converted model, not the weights of the plain "
                    f"model; continue from it with --resume/floatify eval, or load it with floatify.checkpoint."
                    f"load_into after floatify.convert"
                )
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        safetensors_error = err
    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"initial checkpoint {path} is neither a safetensors file ({safetensors_error}) nor a torch checkpoint "
            f"readable with weights_only=True ({reason[:200]})"
        ) from None


def load_initial_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the weights of the *unconverted* model from ``path`` (fine-tuning an existing model), in place.

    ``path`` is a safetensors file or a torch checkpoint (read with ``torch.load(weights_only=True)``, so it
    cannot run code): a bare state_dict or one wrapped as ``{"state_dict": ...}``, ``{"model": ...}`` or
    ``{"model_state_dict": ...}`` (timm, torchvision and Lightning-style files); a leading ``module.`` (DDP) is
    stripped from the keys. For a :class:`floatify.models.Normalized` model the file may hold the inner classifier's
    weights (the usual case) or the wrapper's. Every key and shape must match; otherwise nothing is loaded.
    Load, then convert: ``floatify.convert(load_initial_checkpoint(model, path))``.

    Returns:
        ``model`` itself.

    Raises:
        CheckpointError (a ``ValueError``): missing/unreadable/damaged file, a floatify checkpoint of a converted
            model, an already converted ``model``, or keys/shapes that do not fit (the message names the first
            offending keys and shapes).
        TypeError: ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> import os, tempfile, torch, floatify
        >>> from floatify.checkpoint import load_initial_checkpoint
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "pretrained.pth")
        ...     torch.save({"state_dict": torch.nn.Linear(4, 2).state_dict()}, path)  # e.g. a timm checkpoint
        ...     model = floatify.convert(load_initial_checkpoint(torch.nn.Linear(4, 2), path))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_initial_checkpoint expects a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    _check_readable(path, "initial checkpoint")
    _refuse_converted(model, path)
    state = _unwrap_state_dict(_read_weights(path), path)
    bad = first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"initial checkpoint {path} holds non-finite values (NaN or inf) in tensor '{bad}'; "
                              f"training cannot start from it: pass the weights of a model that did not diverge")
    target = _initial_target(model, state)
    _check_initial_fit(target, state, path)
    target.load_state_dict(state, strict=True)
    return model


def _refuse_converted(model: nn.Module, path: Path) -> None:
    """A :class:`CheckpointError` when ``model`` is already converted (the initial weights are a plain model's)."""
    from floatify.layers.conditioned import is_conditioned

    if any(is_conditioned(m) for m in model.modules()):
        raise CheckpointError(
            f"the model is already converted: load the initial checkpoint {path} into the plain model first, then "
            f"floatify.convert it (or use load_original_state_dict from floatify.convert on the converted model)"
        )


def _unwrap_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """The bare state_dict in what ``path`` held: out of its wrapper (:data:`_WRAPPER_KEYS`), ``module.`` stripped."""
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"initial checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"initial checkpoint {path} is not a state_dict: {len(not_tensors)} entries are not tensors, e.g. "
            f"{not_tensors[:3]} (expected a bare state_dict or one under {', '.join(map(repr, _WRAPPER_KEYS))})"
        )
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _initial_target(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """The module ``state`` is for: ``model``, or the classifier inside a :class:`floatify.models.Normalized`."""
    from floatify.models import Normalized

    if isinstance(model, Normalized):
        inner = model.model.state_dict()
        if len(state.keys() & inner.keys()) > len(state.keys() & model.state_dict().keys()):
            return model.model  # reason: the file holds the classifier's own weights (timm/torchvision files)
    return model


def _check_initial_fit(target: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """A :class:`CheckpointError` naming the first mismatched shapes, missing and unexpected keys, if any."""
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"'{k}' {tuple(v.shape)} in the file vs {tuple(own[k].shape)} in the model"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    # reason: load_state_dict would cast integer values into float weights (or floats into integer buffers) silently
    kinds = [f"'{k}' {v.dtype} in the file vs {own[k].dtype} in the model" for k, v in state.items()
             if k in own and v.is_floating_point() != own[k].is_floating_point()]
    if kinds:
        raise CheckpointError(f"initial checkpoint {path} holds {len(kinds)} tensor(s) of another kind than the "
                              f"model's, e.g. {'; '.join(kinds[:3])}; pass the model's floating-point weights (a "
                              f"quantized or integer export cannot be trained from); nothing was loaded")
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es), e.g. {'; '.join(shapes[:3])}")
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    raise CheckpointError(
        f"initial checkpoint {path} does not fit this {type(target).__name__} (another architecture, "
        f"num_classes or variant?): {', '.join(parts)}; nothing was loaded"
    )


# ------------------------------------------------------------------------ general state (no pickle)
# Nested containers of tensors and JSON values, stored as safetensors (the tensors) + JSON in its header
# (everything else). Loading can only ever produce tensors, dicts, lists, tuples, str, numbers, bools, None.
_TENSOR, _TUPLE, _ITEMS = "__ft_tensor", "__ft_tuple", "__ft_items"


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__ft_") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {_ITEMS: [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a floatify state file (tensors and JSON values only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR in value:
        return tensors[value[_TENSOR]]
    if _TUPLE in value:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if _ITEMS in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value[_ITEMS]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_state(path: str | Path, obj: Any) -> Path:
    """Write a nest of dicts/lists/tuples of tensors and JSON values to ``path`` (safetensors), atomically."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(obj, tensors))
    return atomic_write(path, save(tensors, metadata={"format": STATE_FORMAT, "state": tree}))


def load_state(path: str | Path, what: str = "state file") -> Any:
    """Read a :func:`save_state` file. Nothing in it can run code; damage gives a :class:`CheckpointError`."""

    path = Path(path)
    _check_readable(path, what)
    tensors, header = read_safetensors(path, what, CheckpointError, "; delete it to start afresh", finite=False)
    if header.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{what} {path} is not a floatify state file (no '{STATE_FORMAT}' header); delete it "
                              f"to start afresh")
    try:
        state = _decode(json.loads(header["state"]), tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{what} {path} is corrupted ({type(err).__name__}: {err}); delete it to start "
                              f"afresh") from None
    bad = first_non_finite(state)  # reason: checked on the decoded nest, so the message names 'model.fc.weight'
    if bad is not None:
        raise CheckpointError(f"{what} {path} holds non-finite values (NaN or inf) in '{bad}'; delete it to start "
                              f"afresh")
    return state
