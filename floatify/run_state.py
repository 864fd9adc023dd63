"""The run state of :func:`floatify.fit`: everything a resumed run needs to continue exactly, and the checks that
it is the same run.

``fit(checkpoint_dir=...)`` writes, after every epoch and on rank 0 only, each file atomically:

* ``train_state.safetensors`` (:data:`STATE_FILE`): the model, optimizer, schedule, gradient scaler, the model EMA
  (``model_ema``), the RNG states (torch, Python, CUDA, the DataLoader's generators), the epoch history, and
  what the checks below compare. Tensors in safetensors, everything else JSON: reading it runs no code.
* ``history.json``: one record per epoch (:func:`floatify.fit`'s return value).
* ``summary.csv``: the same records as a table, one row per epoch, as timm writes it: ``epoch, loss, lr,
  seconds``, the quick-look columns where ``eval_every`` ran (``eval_clean_lam0, eval_clean_lam1,
  eval_robust_lam1``, empty in other epochs), then one column per λ the sampler drew, ``lam_<λ to 2 decimals>``
  (``lam_0.00``, ``lam_1.00``, ...), holding how many batch chunks of the epoch trained at that λ. Rewritten whole
  from the history each epoch, so a resumed run's table is the uninterrupted run's.

Resuming compares the stored run with the one asked for and refuses, with one line naming what differs: every
training setting (the :class:`floatify.TrainConfig` fields, less those marked as not changing the weights), the
model's conversion settings that its weights do not show (:func:`conversion_settings`), the data (batch size,
dataset size, batches per epoch), the caller's ``tag``, and the model's parameter names and shapes.

Example:
    >>> import torch, floatify
    >>> from floatify.run_state import conversion_settings
    >>> conversion_settings(floatify.convert(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))))
    {'alpha_init': 0.25, 'bn_mix': 'interpolate', 'bn_curve': 0.7}
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from floatify.checkpoint import CheckpointError, load_state, save_state
from floatify.convert import ALPHA_INIT_ATTR
from floatify.io import atomic_write
from floatify.layers.conditioned import is_conditioned
from floatify.layers.dual_bn import get_bn_curve, get_bn_mix
from floatify.layers.registry import is_batchnorm
from floatify.walk import iter_modules

__all__ = ["STATE_FILE", "HISTORY_FILE", "SUMMARY_FILE", "STATE_KEYS", "conversion_settings", "data_signature",
           "rng_state", "set_rng_state", "preserved_rng", "save_run_state", "read_run_state", "read_state_tag",
           "check_same_run", "check_model_fits", "load_model_state", "ema_state", "load_ema_state", "write_history",
           "summary_csv"]

STATE_FILE = "train_state.safetensors"
OLD_STATE_FILE = "train_state.pt"  # reason: the pickle state of older floatify versions: recognised, never read
HISTORY_FILE = "history.json"
SUMMARY_FILE = "summary.csv"
STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "epoch", "history", "rng", "config", "data",
              "conversion", "tag")
"""What a run state holds (``ema`` and ``tag`` may be None)."""
_LEADING_COLUMNS = ("epoch", "loss", "lr", "seconds")  # summary.csv's first columns, as timm's
_START_AFRESH = "start afresh: delete it, or use another checkpoint_dir (floatify train: --overwrite, not --resume)"


# ------------------------------------------------------------------------------------------------- RNG states
def _loader_generators(loader) -> list[torch.Generator]:
    """The generators that decide a DataLoader's order (its own and its sampler's), each once."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and gen.device.type == "cpu" and all(gen is not g for g in found):
            found.append(gen)
    return found


def rng_state(loader) -> dict:
    """The global RNG states (torch, Python, CUDA where initialised) and those of ``loader``'s generators.

    Example:
        >>> import torch
        >>> from floatify.run_state import rng_state, set_rng_state
        >>> state = rng_state(None)
        >>> a = torch.rand(1); set_rng_state(state, None)
        >>> torch.equal(a, torch.rand(1))
        True
    """
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "loader": [g.get_state() for g in _loader_generators(loader)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, loader) -> None:
    """Restore what :func:`rng_state` returned (the loader's generators where ``loader`` has as many)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    gens = _loader_generators(loader)
    saved = state.get("loader", [])
    if len(saved) == len(gens):
        for g, s in zip(gens, saved):
            g.set_state(s)
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Inside the block the global RNGs (torch, Python, CUDA) may be used; on leaving they are where they were.

    Example:
        >>> import torch
        >>> from floatify.run_state import preserved_rng
        >>> _ = torch.manual_seed(0)
        >>> with preserved_rng():
        ...     _ = torch.rand(3)
        >>> torch.equal(torch.rand(1), torch.manual_seed(0) and torch.rand(1))
        True
    """
    state = rng_state(None)
    try:
        yield
    finally:
        set_rng_state(state, None)


# ------------------------------------------------------------------------------------- what identifies a run
def data_signature(loader, steps_per_epoch: int) -> dict:
    """What a resumed run's data must match: batches per epoch, dataset size, batch size."""
    dataset = getattr(loader, "dataset", None)
    try:
        size = len(dataset) if dataset is not None else None
    except TypeError:  # reason: an IterableDataset has no length
        size = None
    return {"steps_per_epoch": steps_per_epoch, "dataset_size": size,
            "batch_size": getattr(loader, "batch_size", None)}


def _one_or_per_layer(values: Mapping[str, Any]) -> Any:
    """The shared value where every layer has the same one, else ``{layer: value}`` (None without layers)."""
    distinct = set(values.values())
    if len(distinct) > 1:
        return dict(values)
    return next(iter(distinct), None)


def conversion_settings(model: nn.Module) -> dict:
    """The :class:`floatify.FloatConfig` settings read off a converted model that its state_dict does not show.

    ``alpha_init`` (each conditioned layer's), ``bn_mix`` and ``bn_curve`` (each dual BatchNorm's): one value
    where every layer shares it, else ``{layer: value}``; None where the model has no such layer. ``dual_bn``
    needs no entry: the adversarial BatchNorm copies are parameters, so the state_dict shows it.
    """
    alpha: dict[str, float] = {}
    mix: dict[str, str] = {}
    curve: dict[str, float] = {}
    for fqn, module in iter_modules(model):
        if not is_conditioned(module):
            continue
        if is_batchnorm(module):
            mix[fqn], curve[fqn] = get_bn_mix(module), get_bn_curve(module)
        elif ALPHA_INIT_ATTR in module.__dict__:
            alpha[fqn] = module.__dict__[ALPHA_INIT_ATTR]
    return {"alpha_init": _one_or_per_layer(alpha), "bn_mix": _one_or_per_layer(mix),
            "bn_curve": _one_or_per_layer(curve)}


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_same_run(state: dict, path: Path, model: nn.Module, *, settings: dict, signature: dict, tag: dict | None
                   ) -> None:
    """Refuse to resume ``state`` (read from ``path``) into ``model`` as a run with other settings, data, tag,
    model or conversion, in that order (the caller's tag names a changed model or option best).

    ``settings``: the training settings to compare (the TrainConfig fields that change the weights); a stored
    config lacking one of them was written by an older floatify.
    """
    stored = state["config"]
    missing = sorted(k for k in settings if k not in stored)
    if missing:
        raise CheckpointError(f"training state {path} was written by an older floatify (no setting "
                              f"{', '.join(missing)}); {_START_AFRESH}")
    changed = sorted(k for k in settings if stored[k] != settings[k])
    if changed:
        raise ValueError(f"cannot resume: training settings changed since the checkpoint ({changed}); use the "
                         f"original settings or start a fresh run")
    data = _differences(state["data"], signature)
    if data:
        raise ValueError("cannot resume: the training data changed since the checkpoint ("
                         + ", ".join(f"{k} {state['data'].get(k)} -> {signature.get(k)}" for k in data)
                         + "); use the original batch size and data (e.g. --train-limit)")
    absent = sorted(k for k, v in (tag or {}).items() if v is not None and state["tag"] is not None
                    and k not in state["tag"])
    if absent:  # reason: a setting the stored run does not record is not a change the user made
        raise CheckpointError(f"training state {path} records no {', '.join(absent)} (written by an older floatify, "
                              f"or with another tag); {_START_AFRESH}")
    run = _differences(state["tag"] or {}, tag or {})
    if run:
        raise ValueError(f"cannot resume: the run's settings changed since the checkpoint ({', '.join(run)}); "
                         f"use the original settings or start a fresh run")
    check_model_fits(model, state["model"], path)
    converted = _differences(state["conversion"], conversion_settings(model))
    if converted:
        raise ValueError(f"cannot resume: the model's conversion settings changed since the checkpoint "
                         f"({', '.join(converted)}); convert it with the original floatify.FloatConfig or start a "
                         f"fresh run")


# ------------------------------------------------------------------------------------------- reading, writing
def save_run_state(checkpoint_dir: Path, state: dict) -> Path:
    """Write ``state`` (every key of :data:`STATE_KEYS`) to ``checkpoint_dir/train_state.safetensors``."""
    absent = [k for k in STATE_KEYS if k not in state]
    if absent:
        raise ValueError(f"a run state needs {', '.join(absent)}")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return save_state(checkpoint_dir / STATE_FILE, state)


def read_run_state(checkpoint_dir: Path) -> tuple[dict, Path]:
    """The run state in ``checkpoint_dir`` and its path; one clear line where it is missing, old or damaged."""
    path = checkpoint_dir / STATE_FILE
    if not (path.exists() or path.is_symlink()):
        old = checkpoint_dir / OLD_STATE_FILE
        if old.exists():
            raise CheckpointError(f"training state {old} was written by an older floatify (a pickle file, which "
                                  f"floatify no longer reads); {_START_AFRESH}")
        raise FileNotFoundError(f"resume=True but there is no {path}")
    if path.is_dir():  # reason: checkpoint's own message would suggest a file inside it
        raise CheckpointError(f"training state {path} is a directory, not the file floatify writes; move it away "
                              f"to start afresh")
    state = load_state(path, "training state")
    if not isinstance(state, dict):
        raise CheckpointError(f"training state {path} is incomplete (not a run state); {_START_AFRESH}")
    absent = [k for k in STATE_KEYS if k not in state]
    if absent:
        raise CheckpointError(f"training state {path} is incomplete or was written by an older floatify (no "
                              f"{', '.join(absent)}); {_START_AFRESH}")
    malformed = [k for k in ("config", "data", "conversion") if not isinstance(state[k], dict)]
    if malformed or not isinstance(state["tag"], (dict, type(None))):
        raise CheckpointError(f"training state {path} is corrupted ({', '.join(malformed) or 'tag'} is not an "
                              f"object); {_START_AFRESH}")
    _check_progress(state, path)
    return state, path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any, low: float = 0.0) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low


def _record_problem(record: Any, number: int) -> str | None:
    """What is wrong with history record ``number`` (from 1), None if nothing: the shape :func:`floatify.fit`
    writes."""
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not an object"
    if record.get("epoch") != number or not _is_int(record.get("epoch")):
        return f"has epoch {record.get('epoch')!r}, expected {number}"
    for key in ("loss", "lr", "seconds"):
        if not _is_number(record.get(key)):
            return f"has {key} {record.get(key)!r}, expected a finite number >= 0"
    counts = record.get("lam_counts")
    if not isinstance(counts, dict) or not all(isinstance(k, str) and _is_int(v) and v >= 0
                                               for k, v in counts.items()):
        return "has no lam_counts object of counts"
    odd = [k for k, v in record.items() if k not in ("epoch", "lam_counts") and not _is_number(v, -math.inf)]
    return f"has a non-number {odd[0]}" if odd else None


def _check_progress(state: dict, path: Path) -> None:
    """Refuse (one line naming the field) a state whose epoch or history is not what fit writes: read as untrusted
    input, since a resume trains from ``epoch`` on and returns ``history``."""
    epochs = state["config"].get("epochs")
    if not _is_int(epochs) or epochs < 1:
        raise CheckpointError(f"training state {path} is corrupted (config 'epochs' is {epochs!r}, not an int >= 1); "
                              f"{_START_AFRESH}")
    epoch = state["epoch"]
    if not _is_int(epoch) or not 0 <= epoch < epochs:
        raise CheckpointError(f"training state {path} is corrupted ('epoch' is {epoch!r}, not an int in [0, "
                              f"{epochs - 1}]: the last epoch trained, from 0); {_START_AFRESH}")
    history = state["history"]
    if not isinstance(history, list) or len(history) != epoch + 1:
        size = len(history) if isinstance(history, list) else type(history).__name__
        raise CheckpointError(f"training state {path} is corrupted ('history' holds {size} records, not one per "
                              f"epoch trained ({epoch + 1})); {_START_AFRESH}")
    for number, record in enumerate(history, start=1):
        problem = _record_problem(record, number)
        if problem:
            raise CheckpointError(f"training state {path} is corrupted ('history' record {number} {problem}); "
                                  f"{_START_AFRESH}")


def read_state_tag(checkpoint_dir: str | Path) -> dict | None:
    """The ``tag`` stored by :func:`floatify.fit` in ``checkpoint_dir``'s training state (None if none was given)."""
    return read_run_state(Path(checkpoint_dir))[0]["tag"]


def load_model_state(model: nn.Module, stored: Any, path: Path) -> None:
    """Load the stored weights into ``model``, refusing (one line) weights of another model."""
    check_model_fits(model, stored, path)
    model.load_state_dict(stored)


def check_model_fits(model: nn.Module, stored: Any, path: Path) -> None:
    """Refuse (one line) stored weights with other names or shapes than ``model``'s."""
    own = model.state_dict()
    if not isinstance(stored, dict) or set(stored) != set(own) or any(
            not isinstance(stored[k], torch.Tensor) or stored[k].shape != own[k].shape for k in own):
        extra = sorted(set(stored) - set(own))[:3] if isinstance(stored, dict) else []
        missing = sorted(set(own) - set(stored))[:3] if isinstance(stored, dict) else []
        raise CheckpointError(f"training state {path} does not fit this model (another model, dual BatchNorm or "
                              f"density setting?): missing {missing}, unexpected {extra}; resume with the model it was "
                              f"written for, or {_START_AFRESH}")


def ema_state(ema: Any) -> dict | None:
    """What resumes a timm ``ModelEmaV3`` bit for bit: its weights and its stochastic-rounding generator (None: no
    EMA)."""
    if ema is None:
        return None
    rounding = getattr(ema, "_sr_generator", None)  # reason: timm's generator for bf16 stochastic rounding
    return {"model": ema.module.state_dict(), "rounding": rounding.get_state() if rounding is not None else None}


def load_ema_state(ema: Any, state: dict, path: Path) -> None:
    """Restore what :func:`ema_state` saved into ``ema``."""
    load_model_state(ema.module, state["model"], path)
    rounding = getattr(ema, "_sr_generator", None)
    if rounding is not None and state["rounding"] is not None:
        rounding.set_state(state["rounding"])


def summary_csv(history: list[dict]) -> str:
    """``history`` as CSV text, one row per epoch (the columns are described in the module docstring).

    Example:
        >>> from floatify.run_state import summary_csv
        >>> print(summary_csv([{"epoch": 1, "loss": 0.5, "lr": 0.1, "seconds": 2.0,
        ...                     "lam_counts": {"1.00": 3, "0.00": 3}}]).strip())
        epoch,loss,lr,seconds,lam_0.00,lam_1.00
        1,0.5,0.1,2.0,3,3
    """
    scalars = list(_LEADING_COLUMNS)
    for record in history:
        scalars += [k for k in record if k != "lam_counts" and k not in scalars]
    lams = sorted({lam for record in history for lam in record.get("lam_counts", {})}, key=float)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(scalars + [f"lam_{lam}" for lam in lams])
    for record in history:
        counts = record.get("lam_counts", {})
        writer.writerow([record.get(k, "") for k in scalars] + [counts.get(lam, 0) for lam in lams])
    return out.getvalue()


def write_history(checkpoint_dir: Path, history: list[dict]) -> None:
    """``history.json`` and ``summary.csv`` in ``checkpoint_dir``, each written atomically."""
    atomic_write(checkpoint_dir / HISTORY_FILE, json.dumps(history, indent=2))
    atomic_write(checkpoint_dir / SUMMARY_FILE, summary_csv(history))
