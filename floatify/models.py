"""Models by name (timm or torchvision), their own preprocessing, and the input normalisation wrapper.

floatify feeds models images in [0, 1], so attack budgets (eps) are in pixel units and attacks see
exactly what users feed. Normalisation therefore lives *inside* the model: :class:`Normalized`, with
the mean/std the model was made for (timm's data config of the model; ImageNet's for torchvision).

Example:
    >>> from floatify.models import create_model
    >>> model = create_model("resnet18", num_classes=10)
    >>> type(model).__name__, type(model.model).__name__
    ('Normalized', 'ResNet')
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["Normalized", "create_model", "model_data_config", "set_normalization", "check_mean_std",
           "IMAGENET_MEAN", "IMAGENET_STD"]

ARCH_ATTR = "_floatify_arch"  # reason: floatify.save records how the model was built (name, constructor arguments)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# reason: torchvision's classifiers are trained and evaluated on ImageNet at 224 px, resized to 256 and
# centre-cropped (crop_pct 224/256 = 0.875), bilinear; they carry no data config of their own
_TORCHVISION_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875}
_EXAMPLE = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def _numbers(values, name: str, channels: int | None) -> tuple[float, ...]:
    """``values`` as a tuple of finite floats (``channels`` of them, when given); one clear line otherwise."""
    want = f"{channels} numbers, one per RGB channel" if channels else "numbers"
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {want}, got {values!r}") from None
    if (channels and len(numbers) != channels) or not numbers or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{name} must be {want} (e.g. {','.join(f'{v:g}' for v in _EXAMPLE[name])}), got "
                         f"{len(numbers)}: {','.join(f'{v:g}' for v in numbers)}")
    return numbers


def check_mean_std(mean: Sequence[float], std: Sequence[float],
                   channels: int | None = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` as tuples of floats: ``channels`` finite numbers each (any equal count with None), std > 0.

    >>> check_mean_std([0.5, 0.5, 0.5], (0.25, 0.25, 0.25))
    ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    >>> check_mean_std((0.5, 0.5, 0.5), (0.5, 0, 0.5))
    Traceback (most recent call last):
    ValueError: std must be numbers > 0 (a zero or negative std divides by zero or flips the image), got 0.5,0,0.5
    """
    mean_t, std_t = _numbers(mean, "mean", channels), _numbers(std, "std", channels)
    if any(v <= 0 for v in std_t):
        raise ValueError(f"std must be numbers > 0 (a zero or negative std divides by zero or flips the image), "
                         f"got {','.join(f'{v:g}' for v in std_t)}")
    if len(mean_t) != len(std_t):
        raise ValueError(f"mean and std must have one value per channel each, got {len(mean_t)} and {len(std_t)}")
    return mean_t, std_t


class Normalized(nn.Module):
    """``model((x - mean) / std)`` for inputs ``x`` in [0, 1]; ``mean``/``std`` are buffers saved with the model."""

    def __init__(self, model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        mean, std = check_mean_std(mean, std, channels=None)
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def _unknown_model(name: str) -> ValueError:
    import timm
    import torchvision

    known = timm.list_models() + torchvision.models.list_models(module=torchvision.models)
    close = difflib.get_close_matches(name, list(dict.fromkeys(known)), n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(f"unknown model '{name}': not a timm or torchvision classification model.{hint}")


def _is_torchvision(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def _config_of_name(name: str) -> dict:
    """timm's data config of model ``name`` from its pretrained config (no model is built); torchvision's defaults."""
    import timm
    import timm.data
    from timm.models import get_pretrained_cfg

    if timm.is_model(name):
        cfg = get_pretrained_cfg(name)
        return timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    if _is_torchvision(name):
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **_TORCHVISION_CONFIG}
    raise _unknown_model(name)


def _config_of_module(model: nn.Module) -> dict:
    """The data config of a built model: timm's for a timm model, ImageNet's otherwise; mean/std of its Normalized."""
    import timm.data

    norm = next((m for m in model.modules() if isinstance(m, Normalized)), None)
    inner = norm.model if norm is not None else model
    if getattr(inner, "pretrained_cfg", None) is not None:  # reason: every timm model carries one
        config = dict(timm.data.resolve_model_data_config(inner))
    else:
        config = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **_TORCHVISION_CONFIG}
    if norm is not None:
        config["mean"], config["std"] = norm.mean.flatten().tolist(), norm.std.flatten().tolist()
    return config


def model_data_config(model: nn.Module | str) -> dict:
    """The preprocessing a model expects: ``mean``, ``std``, ``input_size``, ``interpolation``, ``crop_pct``.

    ``model``: a model (its :class:`Normalized` buffers give mean/std, e.g. after ``--mean/--std``) or a timm /
    torchvision model name (its defaults, nothing is built). timm models: ``timm.data.resolve_model_data_config``;
    torchvision classifiers: ImageNet's. JSON-ready (lists, rounded to 6 decimals), so a run can record it.

    >>> cfg = model_data_config("vit_tiny_patch16_224")
    >>> cfg["mean"], cfg["input_size"], cfg["interpolation"], cfg["crop_pct"]
    ([0.5, 0.5, 0.5], [3, 224, 224], 'bicubic', 0.9)
    >>> model_data_config(create_model("resnet18", 10, std=(0.5, 0.5, 0.5)))["std"]
    [0.5, 0.5, 0.5]
    """
    config = _config_of_name(model) if isinstance(model, str) else _config_of_module(model)
    crop_pct = config.get("crop_pct")
    return {"mean": [round(float(v), 6) for v in config["mean"]], "std": [round(float(v), 6) for v in config["std"]],
            "input_size": [int(v) for v in config["input_size"]], "interpolation": str(config["interpolation"]),
            "crop_pct": round(float(crop_pct), 6) if crop_pct is not None else _TORCHVISION_CONFIG["crop_pct"]}


def set_normalization(model: nn.Module, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> nn.Module:
    """Overwrite the mean and/or std of ``model``'s :class:`Normalized` (None: keep it); returns ``model``.

    >>> model = set_normalization(create_model("resnet10t", 3), std=(0.5, 0.5, 0.5))
    >>> model.std.flatten().tolist(), model_data_config(model)["mean"]
    ([0.5, 0.5, 0.5], [0.485, 0.456, 0.406])
    """
    if mean is None and std is None:
        return model
    norm = next((m for m in model.modules() if isinstance(m, Normalized)), None)
    if norm is None:
        raise ValueError(f"{type(model).__name__} has no floatify.models.Normalized to set mean/std on; build it with "
                         f"floatify.models.create_model (normalize=True)")
    channels = norm.mean.numel()
    new_mean, new_std = check_mean_std(norm.mean.flatten().tolist() if mean is None else mean,
                                       norm.std.flatten().tolist() if std is None else std, channels=channels)
    with torch.no_grad():
        norm.mean.copy_(torch.tensor(new_mean).view_as(norm.mean))
        norm.std.copy_(torch.tensor(new_std).view_as(norm.std))
    return model


def _build(name: str, num_classes: int, pretrained: bool, kwargs: dict) -> nn.Module:
    import timm
    import torchvision

    if timm.is_model(name):
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if _is_torchvision(name):
        if pretrained:
            raise ValueError(f"pretrained weights are loaded for timm models only; '{name}' is a torchvision model: "
                             f"load its weights file with floatify.checkpoint.load_initial_checkpoint instead")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    raise _unknown_model(name)


def create_model(name: str, num_classes: int, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, normalize: bool = True, pretrained: bool = False,
                 **kwargs) -> nn.Module:
    """A timm (first) or torchvision classifier by name, wrapped in :class:`Normalized` with the model's own mean/std.

    mean/std default to the model's data config (:func:`model_data_config`: timm's per model, ImageNet's for
    torchvision); pass ``mean``/``std`` (3 numbers each, std > 0) to override. Randomly initialised, or with
    ``pretrained=True`` (timm models only) timm's pretrained weights, adapted by timm to ``num_classes``;
    ``kwargs`` go to timm's/torchvision's constructor (e.g. timm's ``pretrained_cfg_overlay=dict(file=path)``
    to read them from a local file).

    >>> create_model("vit_tiny_patch16_224", 10, img_size=32, depth=1).mean.flatten().tolist()
    [0.5, 0.5, 0.5]
    >>> create_model("resnet10t", 10, mean=(1, 2)).mean
    Traceback (most recent call last):
    ValueError: mean must be 3 numbers, one per RGB channel (e.g. 0.485,0.456,0.406), got 2: 1,2
    """
    if mean is not None or std is not None:  # reason: a bad override is refused before a model is built
        check_mean_std(IMAGENET_MEAN if mean is None else mean, IMAGENET_STD if std is None else std)
    model = _build(name, num_classes, pretrained, kwargs)
    structure = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}  # reason: where weights come from
    source = "timm" if getattr(model, "pretrained_cfg", None) is not None else "torchvision"
    model.__dict__[ARCH_ATTR] = {"source": source, "name": name, "num_classes": num_classes, "kwargs": structure}
    if not normalize:
        return model
    config = _config_of_module(model)
    return Normalized(model, mean=config["mean"] if mean is None else mean, std=config["std"] if std is None else std)
