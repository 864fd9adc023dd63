"""floatify: one model, a dial between clean accuracy and adversarial robustness (FLOAT, WACV 2023).

Example:
    >>> import torch, timm, floatify
    >>> model = floatify.convert(timm.create_model("resnet18", num_classes=10))
    >>> with floatify.lam(0.3):
    ...     logits = model(torch.rand(2, 3, 32, 32))
    >>> plain = floatify.freeze(model, lam=0.3, seed=0)
"""

from floatify.context import get_lam, hold_noise, lam
from floatify.convert import (
    FloatConfig,
    FloatifyWarning,
    convert,
    convert_sync_batchnorm,
    load_original_state_dict,
)
from floatify.evaluate import evaluate
from floatify.freeze import freeze
from floatify.layers import is_conditioned, register_conditioned_weights
from floatify.models import Normalized, create_model
from floatify.report import Report
from floatify.sparsity import load_sparse, save_sparse, sparsify, sparsity_report
from floatify.summary import ConversionSummary, param_groups, summary
from floatify.train import LamSampler, TrainConfig, fit, float_loss, float_step_loss

__version__ = "0.1.0"

__all__ = [
    "ConversionSummary",
    "LamSampler",
    "Normalized",
    "Report",
    "TrainConfig",
    "create_model",
    "evaluate",
    "fit",
    "float_loss",
    "float_step_loss",
    "FloatConfig",
    "FloatifyWarning",
    "convert",
    "convert_sync_batchnorm",
    "freeze",
    "get_lam",
    "hold_noise",
    "is_conditioned",
    "lam",
    "load_original_state_dict",
    "param_groups",
    "register_conditioned_weights",
    "summary",
    "sparsify",
    "sparsity_report",
    "save_sparse",
    "load_sparse",
]
