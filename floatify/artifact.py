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

import contextlib
import copy
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from floatify.checkpoint import FORMAT as WEIGHTS_FORMAT
from floatify.checkpoint import CheckpointError, load_into
from floatify.freeze import FROZEN_ATTR
from floatify.io import atomic_write, read_safetensors, replace_folder
from floatify.models import ARCH_ATTR

__all__ = ["save", "load", "read_config", "load_report", "resolve_source", "ArtifactError", "FORMAT_VERSION",
           "WEIGHTS_FILE", "CONFIG_FILE", "REPORT_FILE", "PLOT_FILE", "CARD_FILE", "HUB_PREFIX", "describe",
           "validate_config", "write_artifact"]

FORMAT = "floatify"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"
LEGACY_REPORT_FILE = "metrics.json"  # reason: run folders written before the artifact layout named it so
PLOT_FILE = "tradeoff.png"
CARD_FILE = "README.md"
HUB_PREFIX = "hf-hub:"
MAX_CLASSES = 100_000  # reason: a config is untrusted input; the largest classifier heads are ~22k classes
MAX_INPUT_SIZE = 4096
# reason: constructor arguments that fetch or read weights (a URL, a Hub repo, a file) or fight num_classes
REFUSED_KWARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "weights",
                            "checkpoint_path", "cache_dir", "num_classes", "features_only"})
ARTIFACT_FILES = (WEIGHTS_FILE, CONFIG_FILE, REPORT_FILE, PLOT_FILE, CARD_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SOURCES = ("timm", "torchvision")
class ArtifactError(CheckpointError):
    """A saved model folder that cannot be written or read: one line saying what is wrong and what to do."""


# ------------------------------------------------------------------------------------------ describing a model
def _unwrap(model: nn.Module) -> nn.Module:
    """The model itself, without a DDP/DataParallel wrapper or torch.compile's (whose keys carry a prefix)."""
    model = model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
    original = getattr(model, "_orig_mod", None)
    return original if isinstance(original, nn.Module) else model


def _inner(model: nn.Module) -> nn.Module:
    from floatify.models import Normalized

    return model.model if isinstance(model, Normalized) else model


def _arch_from_argument(arch: str | dict, model: nn.Module) -> dict:
    if isinstance(arch, str):
        arch = {"name": arch}
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise TypeError(f"arch must be a model name or a dict with 'name' (and 'num_classes', 'kwargs'), "
                        f"got {arch!r}")
    num_classes = arch.get("num_classes", _num_classes(_inner(model)))
    return {"source": arch.get("source") or _source_of(arch["name"]), "name": arch["name"],
            "num_classes": num_classes, "kwargs": dict(arch.get("kwargs", {}))}


def _source_of(name: str) -> str:
    import timm
    import torchvision

    if timm.is_model(name):
        return "timm"
    if name in torchvision.models.list_models(module=torchvision.models):
        return "torchvision"
    raise ArtifactError(f"'{name}' is not a timm or torchvision model name; pass the architecture's name as arch=, "
                        f"or save without it and load with floatify.load(folder, model=<the unconverted model>)")


def _num_classes(inner: nn.Module) -> int | None:
    value = getattr(inner, "num_classes", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    get_classifier = getattr(inner, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    for module in ([head] if isinstance(head, nn.Module) else []) + list(inner.modules())[::-1]:
        if isinstance(module, nn.Linear):
            return module.out_features  # reason: torchvision classifiers end in a Linear head
    return None


def _guess_arch(inner: nn.Module) -> dict | None:
    """The architecture of a timm (``pretrained_cfg['architecture']``) or torchvision model, else None."""
    cfg = getattr(inner, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str):
        return {"source": "timm", "name": cfg["architecture"], "num_classes": _num_classes(inner), "kwargs": {}}
    if type(inner).__module__.startswith("torchvision.models"):
        return _guess_torchvision(inner)
    return None


def _guess_torchvision(inner: nn.Module) -> dict | None:
    """reason: torchvision models do not record their builder: try the builders of the same class, built on the
    meta device (no memory, no weights), and take the first whose state_dict has the same keys and shapes."""
    import warnings

    import torchvision

    shapes = _original_shapes(inner)
    num_classes = _num_classes(inner)
    cls = type(inner).__name__.lower().replace("_", "")
    names = sorted(torchvision.models.list_models(module=torchvision.models),
                   key=lambda n: (not n.replace("_", "").startswith(cls[:3]), n))
    for name in names:
        arch = {"source": "torchvision", "name": name, "num_classes": num_classes, "kwargs": {}}
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # reason: builders warn about their default initialisation
                candidate = _create(arch)
        except Exception:  # reason: a builder that cannot take these arguments is simply not this model
            continue
        if type(candidate) is type(inner) and _shapes(candidate.state_dict()) == shapes:
            return arch
    return None


def _original_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes of ``model`` before floatify added α, the adversarial BatchNorm and masks."""
    from floatify.layers.conditioned import ALPHA_SUFFIX
    from floatify.layers.dual_bn import ADV_SUFFIX
    from floatify.layers.masks import MASK_SUFFIX

    added = (ALPHA_SUFFIX, ADV_SUFFIX, MASK_SUFFIX)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(added)}


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _create(arch: dict) -> nn.Module:
    """The unconverted, randomly initialised model ``arch`` describes (no normalisation wrapper)."""
    from floatify.models import create_model

    if arch.get("source") == "torchvision":  # reason: a name both libraries know (resnet18) means timm's by default
        import torchvision

        return torchvision.models.get_model(arch["name"], weights=None, num_classes=arch["num_classes"],
                                            **arch.get("kwargs", {}))
    return create_model(arch["name"], arch["num_classes"], normalize=False, **arch.get("kwargs", {}))


def _conversion(model: nn.Module) -> dict | None:
    """The :class:`floatify.FloatConfig` a converted model was made with, and the sites ``filter_fn`` excluded."""
    from floatify.convert import ALPHA_INIT_ATTR, SKIPPED_ATTR, FloatConfig
    from floatify.layers.conditioned import is_conditioned
    from floatify.layers.dual_bn import get_bn_curve, get_bn_mix
    from floatify.layers.registry import is_batchnorm

    modules = [m for m in model.modules() if is_conditioned(m)]
    if not modules:
        return None
    bns = [m for m in modules if is_batchnorm(m)]
    alphas = [m.__dict__[ALPHA_INIT_ATTR] for m in modules if ALPHA_INIT_ATTR in m.__dict__]
    config = FloatConfig(alpha_init=alphas[0] if alphas else FloatConfig.alpha_init, dual_bn=bool(bns),
                         bn_mix=get_bn_mix(bns[0]) if bns else FloatConfig.bn_mix,
                         bn_curve=get_bn_curve(bns[0]) if bns else FloatConfig.bn_curve)
    excluded = [site for site, why in model.__dict__.get(SKIPPED_ATTR, []) if why == "excluded by filter_fn"]
    return {**asdict(config), "excluded": excluded}


def _preprocessing(model: nn.Module, training: dict) -> dict:
    from floatify.models import Normalized

    inner = _inner(model)
    size = training.get("image_size")
    cfg = getattr(inner, "pretrained_cfg", None)
    if isinstance(size, int):
        input_size = [3, size, size]
    elif isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)):
        input_size = [int(v) for v in cfg["input_size"]]
    else:
        input_size = None
    if not isinstance(model, Normalized):
        return {"normalized": False, "mean": None, "std": None, "input_size": input_size}
    return {"normalized": True, "mean": [float(v) for v in model.mean.flatten()],
            "std": [float(v) for v in model.std.flatten()], "input_size": input_size}


def describe(model: nn.Module, *, arch: str | dict | None = None, training: dict | None = None) -> dict:
    """The ``config.json`` of ``model``: everything :func:`load` needs to rebuild it, as JSON values.

    The architecture comes from ``arch`` (a timm/torchvision name or ``{"name", "num_classes", "kwargs"}``), else
    from how the model was built (:func:`floatify.models.create_model`, ``timm.create_model``, torchvision's
    ``get_model``); it is checked by building it on the meta device. A model of unknown origin gets
    ``"architecture": null`` and loads with ``floatify.load(folder, model=<the unconverted model>)``.
    """
    from floatify import __version__
    from floatify.sparsity import sparsity_report

    model = _unwrap(model)
    inner = _inner(model)
    training = dict(training or {})
    found = _arch_from_argument(arch, model) if arch is not None else (
        getattr(model, ARCH_ATTR, None) or getattr(inner, ARCH_ATTR, None))
    guessed = found is None and arch is None
    frozen = getattr(model, FROZEN_ATTR, None)
    conversion = _conversion(model)
    if conversion is None and frozen is None:
        raise ArtifactError(f"{type(model).__name__} is neither converted (floatify.convert) nor frozen "
                            f"(floatify.freeze): convert it before saving it with floatify.save")
    sparsity = None
    if conversion is not None and any(k.endswith("_mask") for k in model.state_dict()):
        sparsity = {"density": round(sparsity_report(model).density, 6)}
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "floatify_version": __version__,
              "architecture": dict(found) if found else None, "preprocessing": _preprocessing(model, training),
              "conversion": conversion, "frozen": dict(frozen) if frozen else None, "sparsity": sparsity,
              "training": training or None}
    if guessed:
        config["architecture"] = _fitting_guess(model, config)
    elif found is not None:
        try:
            json.dumps(found)
        except (TypeError, ValueError):
            raise ArtifactError(f"the constructor arguments {found.get('kwargs')} are not JSON values; "
                                f"save with arch=dict(name=..., num_classes=..., kwargs=<JSON values>) or load later "
                                f"with floatify.load(folder, model=<the unconverted model>)") from None
        _check_architecture(model, config)
    return config


def _fitting_guess(model: nn.Module, config: dict) -> dict | None:
    """reason: a guessed architecture that does not fit (e.g. timm's vit built with depth=2) is no architecture:
    the model then saves without one and loads with ``model=``."""
    guess = _guess_arch(_inner(model))
    if guess is None:
        return None
    try:
        _check_architecture(model, {**config, "architecture": guess})
    except ArtifactError:
        return None
    return guess if _same_function(model, {**config, "architecture": guess}) else None


def _same_function(model: nn.Module, config: dict) -> bool:
    """reason: shapes do not pin a guess down (timm's global_pool="max", torchvision's dilation have the same
    weights): the guessed architecture, given the model's weights, must compute the model's λ = 0 logits."""
    from floatify.context import lam

    size = (config["preprocessing"].get("input_size") or [3, 224, 224])[-1]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        rebuilt = _skeleton(config, None)
        rebuilt.load_state_dict(_with_versions(model.state_dict(), rebuilt), strict=False)
        original = copy.deepcopy(model).cpu().eval()  # reason: a forward in train mode would move its BN statistics
        with torch.no_grad(), lam(0.0):
            return bool(torch.equal(original(x), rebuilt.cpu().eval()(x)))
    except Exception:  # reason: a guess that cannot even run the model's input is not the model
        return False


def _check_architecture(model: nn.Module, config: dict) -> None:
    """reason: a wrong name or constructor argument must fail at save time, not when someone loads the model."""
    with torch.device("meta"):
        try:
            skeleton = _skeleton(config, None)
        except (ValueError, TypeError, RuntimeError) as err:
            raise ArtifactError(f"the architecture {config['architecture']} cannot be built ({_first_line(err)}); "
                                f"pass arch= with the model's name, num_classes and kwargs") from None
    from floatify.layers.masks import MASK_SUFFIX

    # reason: masks are created when a pruned state is loaded into the dense skeleton
    want = {k: v for k, v in _shapes(skeleton.state_dict()).items() if not k.endswith(MASK_SUFFIX)}
    have = {k: v for k, v in _shapes(model.state_dict()).items() if not k.endswith(MASK_SUFFIX)}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise ArtifactError(f"the model does not match its recorded architecture {config['architecture']['name']} "
                            f"(first difference: {diff[:2]}); pass arch= with the right name, num_classes and kwargs, "
                            f"or load it later with floatify.load(folder, model=<the unconverted model>)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


# ----------------------------------------------------------------------------------------------------- saving
def write_artifact(folder: str | os.PathLike, model: nn.Module, report=None, *, arch: str | dict | None = None,
                   training: dict | None = None, config: dict | None = None) -> dict:
    """Write the artifact files into the existing ``folder``, each atomically (``floatify train`` writes its run
    folder with this); returns the config. :func:`save` is the all-or-nothing version."""
    from safetensors.torch import save as save_tensors

    folder = Path(folder)
    model = _unwrap(model)
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
        raise ArtifactError(f"{path} is not valid JSON ({_first_line(err)}); save the model again with "
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
        _conversion_config(conversion, where)
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


def _conversion_config(conversion: dict, where: str):
    from floatify.convert import FloatConfig

    known = {f.name for f in fields(FloatConfig)}
    try:
        return FloatConfig(**{k: v for k, v in conversion.items() if k in known})
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{where}: 'conversion' is invalid ({_first_line(err)}); the file was edited or damaged — "
                            f"save the model again with floatify.save") from None


def _skeleton(config: dict, model: nn.Module | None) -> nn.Module:
    """The converted (or plain, for a frozen model) model ``config`` describes, with random weights."""
    from floatify.convert import convert
    from floatify.models import Normalized

    arch, pre = config["architecture"], config["preprocessing"]
    if model is None:
        if arch is None:
            raise ArtifactError("the model was saved without its architecture (not built by name); pass the "
                                "unconverted model: floatify.load(source, model=<the unconverted model>)")
        found = _source_of(arch["name"])  # reason: an unknown name is refused before anything is built
        net = _create({**arch, "source": arch.get("source") or found})
    else:
        net = copy.deepcopy(model)  # reason: the caller's model stays as it was
    if pre["normalized"] and not isinstance(net, Normalized):
        net = Normalized(net, **{k: tuple(pre[k]) for k in ("mean", "std") if pre.get(k) is not None})
    if config["frozen"] is not None:
        return net
    conversion = config["conversion"]
    excluded = set(conversion.get("excluded", []))
    with warnings_as_one_line():
        return convert(net, _conversion_config(conversion, CONFIG_FILE),
                       filter_fn=(lambda module, fqn: fqn not in excluded) if excluded else None,
                       inplace=True)


@contextlib.contextmanager
def warnings_as_one_line() -> Iterator[None]:
    """reason: the layers convert() leaves alone were reported when the model was first converted"""
    import warnings

    from floatify.convert import FloatifyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatifyWarning)
        yield


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
        net = _skeleton(config, model)
    except ArtifactError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as err:  # reason: timm/torchvision
        raise ArtifactError(f"the architecture {config['architecture']} in {folder / CONFIG_FILE} cannot be built "
                            f"({type(err).__name__}: {_first_line(err)}); was config.json edited? Save the model "
                            f"again, or pass model=<the unconverted model>") from None
    state, _ = read_safetensors(folder / WEIGHTS_FILE, "weights", ArtifactError,
                                "; save the model again with floatify.save")
    state = _with_versions(state, net)
    try:
        load_into(net, state, str(folder / WEIGHTS_FILE))
    except CheckpointError as err:
        raise ArtifactError(f"{err}; was config.json edited, or model= another architecture?") from None
    if config["frozen"] is not None:
        net.__dict__[FROZEN_ATTR] = dict(config["frozen"])
    if config["architecture"] is not None:
        net.__dict__[ARCH_ATTR] = dict(config["architecture"])
    return net.to(device if device is not None else "cpu").eval()


def _with_versions(state: dict, net: nn.Module) -> dict:
    """reason: safetensors keeps tensors only, not the module versions torch records beside a state_dict (some
    layers, e.g. torchvision's MNASNet, refuse a state without them); the skeleton is the same architecture, so its
    versions are the saved model's."""
    from collections import OrderedDict

    ordered: Any = OrderedDict(state)
    ordered._metadata = getattr(net.state_dict(), "_metadata", None)
    return ordered


def load_report(source: str | os.PathLike):
    """The :class:`floatify.report.Report` saved with a model, or None when it has none."""
    from floatify.report import Report

    folder = resolve_source(source)
    for name in (REPORT_FILE, LEGACY_REPORT_FILE):
        if (folder / name).is_file():
            try:
                return Report.from_json(folder / name)
            except (ValueError, KeyError, TypeError) as err:
                raise ArtifactError(f"{folder / name} is not a floatify report ({_first_line(err)}); run "
                                    f"'floatify eval {folder}' to write it again") from None
    return None
