"""What a saved model is built from: :func:`describe` a model as its ``config.json``, and :func:`build` it back.

:func:`describe` records the architecture (a timm or torchvision name, the number of classes, the constructor
arguments: from ``arch=``, from :func:`floatify.models.create_model`, from timm's ``pretrained_cfg``, or guessed
among torchvision's builders on the meta device), the preprocessing, the conversion settings (and the sites
``filter_fn`` excluded), the sparsity and the frozen λ. A guessed architecture is kept only when it rebuilds the
same keys and shapes and computes the model's λ = 0 logits. :func:`build` makes the converted (or frozen) model a
validated config describes, with random weights, ready for the saved state (:mod:`floatify.artifact`).

Example:
    >>> import floatify
    >>> from floatify.architecture import build, describe
    >>> from floatify.models import create_model
    >>> config = describe(floatify.convert(create_model("resnet10t", num_classes=10)))
    >>> config["architecture"]["name"], config["architecture"]["num_classes"]
    ('resnet10t', 10)
    >>> type(build(config)).__name__
    'Normalized'
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn

from floatify.artifact_config import CONFIG_FILE, FORMAT, FORMAT_VERSION, ArtifactError, conversion_config, first_line
from floatify.freeze import FROZEN_ATTR
from floatify.models import ARCH_ATTR

__all__ = ["describe", "build", "unwrap", "with_versions", "warnings_as_one_line"]


def unwrap(model: nn.Module) -> nn.Module:
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

    model = unwrap(model)
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
        rebuilt = build(config, None)
        rebuilt.load_state_dict(with_versions(model.state_dict(), rebuilt), strict=False)
        original = copy.deepcopy(model).cpu().eval()  # reason: a forward in train mode would move its BN statistics
        with torch.no_grad(), lam(0.0):
            return bool(torch.equal(original(x), rebuilt.cpu().eval()(x)))
    except Exception:  # reason: a guess that cannot even run the model's input is not the model
        return False


def _check_architecture(model: nn.Module, config: dict) -> None:
    """reason: a wrong name or constructor argument must fail at save time, not when someone loads the model."""
    with torch.device("meta"):
        try:
            skeleton = build(config, None)
        except (ValueError, TypeError, RuntimeError) as err:
            raise ArtifactError(f"the architecture {config['architecture']} cannot be built ({first_line(err)}); "
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


def build(config: dict, model: nn.Module | None = None) -> nn.Module:
    """The converted (or plain, for a frozen model) model a validated ``config`` describes, with random weights;
    from a copy of ``model`` (the unconverted model) when given, for a config without architecture."""
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
        return convert(net, conversion_config(conversion, CONFIG_FILE),
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


def with_versions(state: dict, net: nn.Module) -> dict:
    """reason: safetensors keeps tensors only, not the module versions torch records beside a state_dict (some
    layers, e.g. torchvision's MNASNet, refuse a state without them); the skeleton is the same architecture, so its
    versions are the saved model's."""
    from collections import OrderedDict

    ordered: Any = OrderedDict(state)
    ordered._metadata = getattr(net.state_dict(), "_metadata", None)
    return ordered
