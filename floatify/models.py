"""Models by name (timm or torchvision) and the input normalisation wrapper.

floatify feeds models images in [0, 1], so attack budgets (eps) are in pixel units and attacks see
exactly what users feed. Normalisation therefore lives *inside* the model: :class:`Normalized`.

Example:
    >>> from floatify.models import create_model
    >>> model = create_model("resnet18", num_classes=10)
    >>> type(model).__name__, type(model.model).__name__
    ('Normalized', 'ResNet')
"""

from __future__ import annotations

import difflib

import torch
import torch.nn as nn

__all__ = ["Normalized", "create_model", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalized(nn.Module):
    """``model((x - mean) / std)`` for inputs ``x`` in [0, 1]."""

    def __init__(self, model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def create_model(name: str, num_classes: int, *, normalize: bool = True, pretrained: bool = False,
                 **kwargs) -> nn.Module:
    """A timm (first) or torchvision classifier by name, wrapped in :class:`Normalized`.

    Randomly initialised, or with ``pretrained=True`` (timm models only) timm's pretrained weights, adapted by
    timm to ``num_classes``; ``kwargs`` go to timm's/torchvision's constructor (e.g. timm's
    ``pretrained_cfg_overlay=dict(file=path)`` to read them from a local file).
    """
    import timm
    import torchvision

    if timm.is_model(name):
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    elif name in torchvision.models.list_models(module=torchvision.models):
        if pretrained:
            raise ValueError(f"pretrained weights are loaded for timm models only; '{name}' is a torchvision model: "
                             f"load its weights file with floatify.checkpoint.load_initial_checkpoint instead")
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    else:
        known = timm.list_models() + torchvision.models.list_models(module=torchvision.models)
        close = difflib.get_close_matches(name, list(dict.fromkeys(known)), n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model '{name}': not a timm or torchvision classification model.{hint}")
    return Normalized(model) if normalize else model
