"""Checkpoints: the model's state_dict in safetensors, with the recipe to rebuild it in the metadata.

Example:
    >>> import torch, floatify
    >>> from floatify.checkpoint import save_checkpoint, load_checkpoint
    >>> model = floatify.convert(torch.nn.Linear(4, 2))
    >>> save_checkpoint("/tmp/m.safetensors", model, {"model": "custom"})
    >>> state, meta = load_checkpoint("/tmp/m.safetensors")
    >>> meta["model"]
    'custom'
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_into"]

FORMAT = "floatify-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, or for a different model."""


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write ``model.state_dict()`` and ``meta`` (JSON-serialisable) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    # reason: safetensors refuses tensors sharing storage (tied weights, a shared α): store copies
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(meta)})
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a floatify checkpoint: (state_dict, meta). Clear errors for missing or corrupted files."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for damaged files
        raise CheckpointError(f"checkpoint {path} is corrupted or not a safetensors file ({err})") from err
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a floatify checkpoint (no '{FORMAT}' header)")
    return state, json.loads(header.get("meta", "{}"))


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state)`` with an error that says which architecture mismatch it is."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source} does not fit this model (different architecture or settings?): "
            f"{len(result.missing_keys)} missing keys e.g. {result.missing_keys[:3]}, "
            f"{len(result.unexpected_keys)} unexpected e.g. {result.unexpected_keys[:3]}"
        )
