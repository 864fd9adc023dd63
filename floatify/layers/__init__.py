"""Conditioned layers: λ-dependent weights (FLOAT noise) and dual BatchNorm."""

from floatify.layers.conditioned import conditioned_class, is_conditioned, original_class
from floatify.layers.registry import conditioned_weight_names, register_conditioned_weights

__all__ = [
    "conditioned_class",
    "conditioned_weight_names",
    "is_conditioned",
    "original_class",
    "register_conditioned_weights",
]
