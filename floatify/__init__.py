"""floatify: one model, a dial between clean accuracy and adversarial robustness (FLOAT, WACV 2023).

The top level holds the verbs and their configs; helpers live in the submodules (``floatify.context``,
``floatify.layers``, ``floatify.models``, ``floatify.summary``, ``floatify.sparsity``, ``floatify.train``,
``floatify.attacks``, ``floatify.report``, ``floatify.checkpoint``, ``floatify.data``, ``floatify.heap``).

Example:
    >>> import torch, floatify
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
    ...                           torch.nn.Linear(8 * 30 * 30, 10))
    >>> model = floatify.convert(net)  # any timm/torchvision classifier works the same way
    >>> with floatify.lam(0.3):
    ...     logits = model(torch.rand(2, 3, 32, 32))
    >>> plain = floatify.freeze(model, lam=0.3, seed=0)
"""

import importlib
import warnings

from floatify.attacks import AttackSpec
from floatify.context import lam
from floatify.convert import FloatConfig, convert
from floatify.evaluate import EvalConfig, evaluate
from floatify.export import export, export_onnx
from floatify.freeze import freeze
from floatify.sparsity import sparsify
from floatify.summary import summary
from floatify.train import TrainConfig, fit, float_loss

__version__ = "0.1.0"

__all__ = [
    "AttackSpec",
    "EvalConfig",
    "FloatConfig",
    "TrainConfig",
    "convert",
    "evaluate",
    "export",
    "export_onnx",
    "fit",
    "float_loss",
    "freeze",
    "lam",
    "sparsify",
    "summary",
]

# Names that were top-level before the API was trimmed to the verbs: still importable from here (with a
# DeprecationWarning) so existing code keeps running; their home is the submodule named.
_MOVED = {
    "ConversionSummary": "floatify.summary",
    "FloatifyWarning": "floatify.convert",
    "LamSampler": "floatify.train",
    "Normalized": "floatify.models",
    "Report": "floatify.report",
    "convert_sync_batchnorm": "floatify.convert",
    "create_model": "floatify.models",
    "float_step_loss": "floatify.train",
    "get_lam": "floatify.context",
    "hold_noise": "floatify.context",
    "is_conditioned": "floatify.layers",
    "load_original_state_dict": "floatify.convert",
    "load_sparse": "floatify.sparsity",
    "param_groups": "floatify.summary",
    "register_conditioned_weights": "floatify.layers",
    "save_sparse": "floatify.sparsity",
    "sparsity_report": "floatify.sparsity",
}


def __getattr__(name: str) -> object:
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'floatify' has no attribute {name!r}")
    warnings.warn(f"floatify.{name} moved to {home}.{name}; import it from there", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(home), name)
