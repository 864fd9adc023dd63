"""The trained dial as an artifact: :func:`save` and :func:`load` (one folder layout; :mod:`floatify.hub` shares it).

A saved model is a folder (the same layout the Hugging Face Hub holds, and what ``floatify train`` writes):

* ``model.safetensors``: the state_dict, tensors only;
* ``config.json``: the format version, the floatify version, the architecture (timm or torchvision name,
  number of classes, constructor arguments), the model's preprocessing (mean, std, input size), the
  conversion settings, the sparsity, whether it is frozen at one λ, and the training facts when known;
* ``report.json`` and ``tradeoff.png`` when a :class:`floatify.report.Report` is given;
* ``README.md``: a model card (what the model is, the dial table with its attack/eps/draws, the picture,
  how to load it, the citation).

Nothing loaded can run code: weights are read from safetensors only (a folder holding pickle weights,
``.bin``/``.pt``/``.pth``/``.ckpt``/``.pkl``, is refused), the config is JSON validated as untrusted input, and
the architecture is built from a timm/torchvision name, never from code in the folder.

Example:
    >>> import tempfile, torch, floatify
    >>> from floatify.models import create_model
    >>> model = floatify.convert(create_model("resnet10t", num_classes=10)).eval()
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = floatify.save(model, folder + "/dial")
    ...     again = floatify.load(folder + "/dial")
    >>> x = torch.rand(2, 3, 32, 32)
    >>> with floatify.lam(0):
    ...     torch.equal(model(x), again(x))
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from floatify.architecture import build, describe, unwrap, with_versions
from floatify.artifact_config import CONFIG_FILE, FORMAT, FORMAT_VERSION, ArtifactError, first_line, validate_config
from floatify.checkpoint import FORMAT as WEIGHTS_FORMAT
from floatify.checkpoint import CheckpointError, load_into
from floatify.freeze import FROZEN_ATTR
from floatify.io import atomic_write, read_safetensors, replace_folder
from floatify.models import ARCH_ATTR

__all__ = ["save", "load", "read_config", "load_report", "resolve_source", "ArtifactError", "FORMAT_VERSION",
           "WEIGHTS_FILE", "CONFIG_FILE", "REPORT_FILE", "PLOT_FILE", "CARD_FILE", "HUB_PREFIX", "describe",
           "validate_config", "write_artifact"]

WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "report.json"
LEGACY_REPORT_FILE = "metrics.json"  # reason: run folders written before the artifact layout named it so
PLOT_FILE = "tradeoff.png"
CARD_FILE = "README.md"
HUB_PREFIX = "hf-hub:"
ARTIFACT_FILES = (WEIGHTS_FILE, CONFIG_FILE, REPORT_FILE, PLOT_FILE, CARD_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")



# ----------------------------------------------------------------------------------------------------- saving
def write_artifact(folder: str | os.PathLike, model: nn.Module, report=None, *, arch: str | dict | None = None,
                   training: dict | None = None, config: dict | None = None) -> dict:
    """Write the artifact files into the existing ``folder``, each atomically (``floatify train`` writes its run
    folder with this); returns the config. :func:`save` is the all-or-nothing version."""
    from safetensors.torch import save as save_tensors

    folder = Path(folder)
    model = unwrap(model)
    config = config if config is not None else describe(model, arch=arch, training=training)
    # reason: safetensors refuses tensors sharing storage (tied weights, a shared α): store copies
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    text = json.dumps(config, indent=2)
    # reason: one header key only: safetensors writes several in no fixed order, and the same model must give the
    # same bytes (the Hub then sees an unchanged file)
    atomic_write(folder / WEIGHTS_FILE, save_tensors(state, metadata={"format": WEIGHTS_FORMAT}))
    atomic_write(folder / CONFIG_FILE, text + "\n")
    if report is not None:
        report.to_json(folder / REPORT_FILE)
        report.plot(folder / PLOT_FILE)
    from floatify.card import model_card

    atomic_write(folder / CARD_FILE, model_card(config, report))
    return config


def _is_floatify_config(path: Path) -> bool:
    try:
        return path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save(model: nn.Module, folder: str | os.PathLike, report=None, *, arch: str | dict | None = None,
         training: dict | None = None, overwrite: bool = False) -> Path:
    """Save a converted (or frozen) model as a folder that :func:`load` and the Hugging Face Hub read.

    Args:
        model: a model returned by :func:`floatify.convert` (pruned or not) or :func:`floatify.freeze`.
        folder: the folder to create. It is written completely beside its place and moved there in one step.
        report: a :class:`floatify.report.Report` of the model (adds ``report.json``, ``tradeoff.png`` and the dial
            table of the model card).
        arch: the architecture, for a model not built by name: a timm/torchvision name or
            ``{"name": ..., "num_classes": ..., "kwargs": {...}}``.
        training: facts about the training to record (e.g. ``{"dataset": "digits", "eps": 0.1, "image_size": 16}``).
        overwrite: replace an existing saved model in ``folder`` (it survives until the new one is complete).

    Returns:
        ``folder`` as a Path.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder} exists and is not a folder; choose another folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise ArtifactError(f"{folder} is not empty; pass overwrite=True to replace the model saved there, or "
                                f"choose another folder")
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in ARTIFACT_FILES)
        if foreign or not _is_floatify_config(folder / CONFIG_FILE):
            what = f"other files ({', '.join(foreign[:3])})" if foreign else "no floatify config.json"
            raise ArtifactError(f"{folder} holds {what}: it is not a model floatify saved, and overwrite replaces the "
                                f"folder as a whole; choose another folder")
    config = describe(model, arch=arch, training=training)  # reason: every check before the first byte is written
    with replace_folder(folder) as staging:
        write_artifact(staging, model, report, config=config)
    return folder


# ---------------------------------------------------------------------------------------------------- loading
def resolve_source(source: str | os.PathLike) -> Path:
    """The local folder of ``source``: a folder, a ``model.safetensors`` inside one, or ``hf-hub:owner/name``
    (downloaded, or from the cache offline)."""
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        from floatify.hub import download

        return download(text[len(HUB_PREFIX):])
    path = Path(text)
    if path.is_file() and path.name.endswith(".safetensors"):
        path = path.parent
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; pass a folder written by floatify.save or 'floatify train', or "
                            f"a Hub id as hf-hub:owner/name")
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a folder; pass the folder written by floatify.save or 'floatify train'")
    return path


def _check_files(folder: Path) -> None:
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    weights = [n for n in names if n.endswith(".safetensors") and n.startswith("model")]
    if pickles and WEIGHTS_FILE not in names:
        raise ArtifactError(f"{folder} holds pickle weights ({', '.join(pickles)}), which can run code and are never "
                            f"loaded; save the model with floatify.save (safetensors) instead")
    if len(weights) > 1:
        raise ArtifactError(f"{folder} holds {len(weights)} weight files ({', '.join(weights)}); keep only "
                            f"{WEIGHTS_FILE}")
    if WEIGHTS_FILE not in names:
        raise ArtifactError(f"{folder} has no {WEIGHTS_FILE}; it is not a folder written by floatify.save or "
                            f"'floatify train'")


def read_config(source: str | os.PathLike) -> dict:
    """The validated ``config.json`` of a saved model (a run folder of an earlier floatify: read from its weights)."""
    folder = resolve_source(source)
    _check_files(folder)
    return _read_config(folder)


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.exists():
        return _legacy_config(folder)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({first_line(err)}); save the model again with "
                            f"floatify.save") from None
    return validate_config(config, str(path))


def _legacy_config(folder: Path) -> dict:
    """reason: run folders written before config.json kept the recipe in the weights' header: map it over."""
    _, header = read_safetensors(folder / WEIGHTS_FILE, "weights", ArtifactError)
    if header.get("format") != WEIGHTS_FORMAT:
        raise ArtifactError(f"{folder} has no {CONFIG_FILE} and its {WEIGHTS_FILE} is not a floatify checkpoint; "
                            f"save the model with floatify.save")
    try:
        meta = json.loads(header.get("meta", "{}"))
    except ValueError:
        meta = None
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        return validate_config(meta, f"{folder / WEIGHTS_FILE} (header)")
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise ArtifactError(f"{folder / WEIGHTS_FILE} has no readable recipe in its header; load it with "
                            f"floatify.load(folder, model=<the unconverted model>) after adding a config.json")
    size = meta.get("image_size")
    train: dict = meta["train"] if isinstance(meta.get("train"), dict) else {}
    config = {"format": FORMAT, "format_version": 0, "floatify_version": "0.1.0",
              "architecture": {"source": None, "name": meta["model"], "num_classes": meta.get("num_classes"),
                               "kwargs": {}},
              "preprocessing": {"normalized": True, "mean": None, "std": None,
                                "input_size": [3, size, size] if isinstance(size, int) else None},
              "conversion": {"bn_mix": "switch", "bn_curve": 1.0, **(meta.get("convert") or {}), "excluded": []},
              "frozen": None, "sparsity": {"density": meta["density"]} if "density" in meta else None,
              "training": {"dataset": meta.get("dataset"), "eps": train.get("eps"), "image_size": size,
                           "seed": train.get("seed", 0)}}
    # reason: the earlier runs used the switch / a linear mix before bn_mix and bn_curve existed
    return validate_config(config, f"{folder / WEIGHTS_FILE} (header of an earlier floatify)")


def load(source: str | os.PathLike, device: str | torch.device | None = None,
         model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save` (or a ``floatify train`` run folder), ready to dial, in eval mode.

    Args:
        source: a folder, its ``model.safetensors``, or ``"hf-hub:owner/name[@revision]"`` (read through
            ``huggingface_hub``; from the local cache when offline).
        device: where to put the model (default: CPU).
        model: the unconverted model (random weights are fine), for a model saved without its architecture;
            a converted copy of it is filled and returned (``model`` itself is left as it is).

    A pruned model loads pruned (its masks are in the state), a frozen model loads frozen (a plain model). λ = 0
    logits are bit-identical to the saved model's; λ > 0 identical under the same seed and noise source.
    """
    folder = resolve_source(source)
    _check_files(folder)
    config = _read_config(folder)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be the unconverted torch.nn.Module, got {type(model).__name__}")
    try:
        net = build(config, model)
    except ArtifactError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as err:  # reason: timm/torchvision
        raise ArtifactError(f"the architecture {config['architecture']} in {folder / CONFIG_FILE} cannot be built "
                            f"({type(err).__name__}: {first_line(err)}); was config.json edited? Save the model "
                            f"again, or pass model=<the unconverted model>") from None
    state, _ = read_safetensors(folder / WEIGHTS_FILE, "weights", ArtifactError,
                                "; save the model again with floatify.save")
    state = with_versions(state, net)
    try:
        load_into(net, state, str(folder / WEIGHTS_FILE))
    except CheckpointError as err:
        raise ArtifactError(f"{err}; was config.json edited, or model= another architecture?") from None
    if config["frozen"] is not None:
        net.__dict__[FROZEN_ATTR] = dict(config["frozen"])
    if config["architecture"] is not None:
        net.__dict__[ARCH_ATTR] = dict(config["architecture"])
    return net.to(device if device is not None else "cpu").eval()


def load_report(source: str | os.PathLike):
    """The :class:`floatify.report.Report` saved with a model, or None when it has none."""
    from floatify.report import Report

    folder = resolve_source(source)
    for name in (REPORT_FILE, LEGACY_REPORT_FILE):
        if (folder / name).is_file():
            try:
                return Report.from_json(folder / name)
            except (ValueError, KeyError, TypeError) as err:
                raise ArtifactError(f"{folder / name} is not a floatify report ({first_line(err)}); run "
                                    f"'floatify eval {folder}' to write it again") from None
    return None
