"""What a conversion did: :func:`summary` and optimizer groups via :func:`param_groups`.

Example:
    >>> import torch, floatify
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)))
    >>> s = floatify.summary(model)
    >>> len(s.conditioned), s.added_params
    (1, 17)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from floatify.convert import SKIPPED_ATTR
from floatify.layers.conditioned import ALPHA_SUFFIX, is_conditioned, original_class
from floatify.layers.dual_bn import ADV_SUFFIX
from floatify.layers.masks import get_mask
from floatify.layers.registry import is_batchnorm
from floatify.walk import iter_modules

__all__ = ["ConversionSummary", "SiteRow", "summary", "param_groups", "floatify_parameters"]


@dataclass(frozen=True)
class SiteRow:
    fqn: str  # e.g. "layer1.0.conv1.weight" or "bn1" for a dual BatchNorm
    kind: str  # original layer class
    shape: tuple[int, ...]
    alpha: float | None  # None for dual BatchNorm
    density: float | None = None  # kept fraction when sparse


@dataclass
class ConversionSummary:
    conditioned: list[SiteRow] = field(default_factory=list)
    dual_bn: list[SiteRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    original_params: int = 0
    added_params: int = 0

    @property
    def overhead_percent(self) -> float:
        return 100.0 * self.added_params / max(self.original_params, 1)

    def __str__(self) -> str:
        lines = [f"floatify: {len(self.conditioned)} conditioned weights, {len(self.dual_bn)} dual BatchNorms"]
        lines.append(f"{'weight':48s} {'kind':22s} {'shape':22s} {'alpha':>8s}")
        for row in self.conditioned:
            extra = f"  density {row.density:.3f}" if row.density is not None else ""
            lines.append(f"{row.fqn:48s} {row.kind:22s} {str(row.shape):22s} {row.alpha:8.4f}{extra}")
        if self.dual_bn:
            lines.append(f"dual BatchNorm: {', '.join(r.fqn for r in self.dual_bn)}")
        if self.skipped:
            lines.append("left alone:")
            lines.extend(f"  {site}: {reason}" for site, reason in self.skipped)
        else:
            lines.append("left alone: nothing")
        lines.append(
            f"parameters: {self.original_params:,} original + {self.added_params:,} added "
            f"({self.overhead_percent:.3f}% overhead: one alpha per weight, adversarial BatchNorm affine)"
        )
        return "\n".join(lines)


def summary(model: nn.Module) -> ConversionSummary:
    """List every conditioned weight, every dual BatchNorm, every site left alone and the overhead."""
    out = ConversionSummary(skipped=list(model.__dict__.get(SKIPPED_ATTR, [])))
    extra_ids = {id(p) for p in floatify_parameters(model)}
    for p in model.parameters():  # reason: parameters() yields a shared parameter once
        if id(p) in extra_ids:
            out.added_params += p.numel()
        else:
            out.original_params += p.numel()
    for fqn, module in iter_modules(model):
        if not is_conditioned(module):
            continue
        kind = original_class(module).__name__
        if is_batchnorm(module):
            features = int(module.num_features)  # type: ignore[arg-type]
            out.dual_bn.append(SiteRow(fqn, kind, (features,), None))
            continue
        for name in getattr(type(module), "_floatify_weights", ()):
            alpha, weight = module._parameters.get(name + ALPHA_SUFFIX), module._parameters.get(name)
            if alpha is None or weight is None:
                continue
            mask = get_mask(module, name)
            density = None if mask is None else mask.float().mean().item()
            site = f"{fqn}.{name}" if fqn else name
            out.conditioned.append(
                SiteRow(site, kind, tuple(weight.shape), float(alpha.detach()), density)
            )
    return out


def floatify_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters floatify added: every α and the adversarial BatchNorm affine parameters."""
    found: dict[int, nn.Parameter] = {}
    for _, module in iter_modules(model):
        if is_conditioned(module):
            for name, p in module._parameters.items():
                if p is not None and (name.endswith(ALPHA_SUFFIX) or name.endswith(ADV_SUFFIX)):
                    found[id(p)] = p
    return list(found.values())


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups: weight decay on Conv/Linear weights, none on α, norm parameters and biases.

    α gets no decay because decay drives the noise scales to zero (PNI).

    Example:
        >>> import torch, floatify
        >>> model = floatify.convert(torch.nn.Linear(4, 2))
        >>> from floatify.summary import param_groups
        >>> opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.1)
        >>> [len(g["params"]) for g in opt.param_groups]
        [1, 2]
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    no_decay_ids = {id(p) for p in floatify_parameters(model)}
    for _, module in iter_modules(model):
        if isinstance(module, _NORMS) or "norm" in type(module).__name__.lower():
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():  # reason: parameters() yields a shared parameter once
        if not p.requires_grad:
            continue
        (no_decay if id(p) in no_decay_ids or p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]

