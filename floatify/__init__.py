"""floatify: one model, a dial between clean accuracy and adversarial robustness (FLOAT, WACV 2023).

The top level holds the verbs and their configs; helpers live in the submodules (``floatify.context``,
``floatify.layers``, ``floatify.models``, ``floatify.summary``, ``floatify.sparsity``, ``floatify.train``,
``floatify.losses``, ``floatify.run_state``, ``floatify.attacks``, ``floatify.report``, ``floatify.checkpoint``,
``floatify.data``, ``floatify.heap``).

Example:
    >>> import torch, floatify
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
    ...                           torch.nn.Linear(8 * 30 * 30, 10))
    >>> model = floatify.convert(net)  # any timm/torchvision classifier works the same way
    >>> with floatify.lam(0.3):
    ...     logits = model(torch.rand(2, 3, 32, 32))
    >>> plain = floatify.freeze(model, lam=0.3, seed=0)
"""

from importlib.metadata import version as _installed_version

from floatify.artifact import load, save
from floatify.attacks import AttackSpec
from floatify.audit import AuditConfig
from floatify.context import lam
from floatify.convert import FloatConfig, convert
from floatify.evaluate import EvalConfig, evaluate
from floatify.export import export, export_onnx
from floatify.freeze import freeze
from floatify.hub import push_to_hub
from floatify.losses import float_loss
from floatify.sparsity import sparsify
from floatify.summary import summary
from floatify.train import TrainConfig, fit

__version__ = _installed_version("floatify")  # reason: one source, pyproject.toml

__all__ = [
    "AttackSpec",
    "AuditConfig",
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
    "load",
    "push_to_hub",
    "save",
    "sparsify",
    "summary",
]
