"""Which module types carry a weight FLOAT conditions, and under which attribute names.

Conv and Linear layers (and every subclass, e.g. timm ``Conv2dSame``/``StdConv2d``/``Linear`` or
torch's ``NonDynamicallyQuantizableLinear``) condition ``weight``; ``nn.MultiheadAttention``
conditions its packed/separate input projections (its ``out_proj`` is a Linear and converts on its
own). Register your own layer type with :func:`register_conditioned_weights`.

The generated conditioned classes are registered in turn with timm's FX leaf registry
(:func:`register_fx_leaf`), and :func:`is_fx_tracing` tells their attributes when a symbolic trace is running.

Example:
    >>> import torch.nn as nn
    >>> from floatify.layers.registry import conditioned_weight_names
    >>> conditioned_weight_names(nn.Conv2d(3, 8, 3))
    ('weight',)
"""

from __future__ import annotations

import torch.nn as nn

try:  # reason: plain is_fx_tracing() also answers True under torch.export and warns about it
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
except ImportError:  # pragma: no cover - older torch
    from torch.fx._symbolic_trace import is_fx_tracing

__all__ = ["register_conditioned_weights", "conditioned_weight_names", "is_batchnorm", "is_fx_tracing",
           "register_fx_leaf"]

_BY_CLASS: dict[type, tuple[str, ...]] = {
    nn.modules.conv._ConvNd: ("weight",),
    nn.Linear: ("weight",),
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
}
# reason: registered by qualified name so importing floatify does not import timm.
_BY_NAME: dict[str, tuple[str, ...]] = {
    "timm.layers.cond_conv2d.CondConv2d": ("weight",),  # experts' weights in one (E, C_out*C_in*k*k) tensor
}


def register_conditioned_weights(cls: type[nn.Module], *names: str) -> type[nn.Module]:
    """Declare that instances of ``cls`` (and subclasses) have Conv/Linear-like weights ``names``."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"expected an nn.Module subclass, got {cls!r}")
    if not names or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise ValueError(f"give one or more attribute names, got {names!r}")
    _BY_CLASS[cls] = tuple(names)
    return cls


def conditioned_weight_names(module: nn.Module) -> tuple[str, ...]:
    """Names of the attributes of ``module`` FLOAT would condition (empty if none)."""
    for klass in type(module).__mro__:
        base = getattr(klass, "_floatify_base", None)
        if base is not None:  # an already converted layer: answer for its original class
            return conditioned_weight_names_for_class(base)
        names = conditioned_weight_names_for_class(klass, mro=False)
        if names:
            return names
    return ()


def conditioned_weight_names_for_class(cls: type, mro: bool = True) -> tuple[str, ...]:
    for klass in cls.__mro__ if mro else (cls,):
        if klass in _BY_CLASS:
            return _BY_CLASS[klass]
        qualified = f"{klass.__module__}.{klass.__qualname__}"
        if qualified in _BY_NAME:
            return _BY_NAME[qualified]
    return ()


def is_batchnorm(module: nn.Module) -> bool:
    """BatchNorm1d/2d/3d, SyncBatchNorm and subclasses such as timm's ``BatchNormAct2d``."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def register_fx_leaf(cls: type) -> None:
    """Make timm's FX feature extraction call the generated class ``cls`` as a leaf module.

    reason: otherwise the traced graph reads the raw Parameter and the noise is lost. Reuses timm's own
    registry (``timm.layers.register_notrace_module``); :mod:`floatify.fx` handles the other tracers.
    """
    try:
        from timm.layers import register_notrace_module
    except ImportError:  # pragma: no cover - timm is a dependency
        return
    register_notrace_module(cls)
