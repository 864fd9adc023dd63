"""floatify.layers.registry: which module types carry a conditioned weight, and which are BatchNorms."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, CondConv2d, Conv2dSame, StdConv2d

import floatify
from floatify.layers import register_conditioned_weights
from floatify.layers.registry import conditioned_weight_names, is_batchnorm

MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")

# name, build, conditioned weight names, is a BatchNorm
MODULES = [
    ("linear", lambda: nn.Linear(4, 2), ("weight",), False),
    ("conv1d", lambda: nn.Conv1d(3, 4, 3), ("weight",), False),
    ("conv-transpose", lambda: nn.ConvTranspose2d(3, 4, 3), ("weight",), False),  # a _ConvNd subclass
    ("torch-quantizable-linear", lambda: nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4), ("weight",), False),
    ("timm-conv2d-same", lambda: Conv2dSame(3, 4, 3), ("weight",), False),
    ("timm-std-conv", lambda: StdConv2d(3, 4, 3), ("weight",), False),
    ("timm-cond-conv", lambda: CondConv2d(3, 4, 3), ("weight",), False),  # registered by qualified name
    ("multihead-attention", lambda: nn.MultiheadAttention(8, 2), MHA_WEIGHTS, False),
    ("converted-linear", lambda: floatify.convert(nn.Linear(4, 2)), ("weight",), False),  # the original's answer
    ("batchnorm2d", lambda: nn.BatchNorm2d(4), (), True),
    ("sync-batchnorm", lambda: nn.SyncBatchNorm(4), (), True),
    ("timm-batchnorm-act", lambda: BatchNormAct2d(4), (), True),
    ("layernorm", lambda: nn.LayerNorm(4), (), False),
    ("groupnorm", lambda: nn.GroupNorm(2, 4), (), False),
    ("relu", lambda: nn.ReLU(), (), False),
    ("embedding", lambda: nn.Embedding(10, 4), (), False),
]


@pytest.mark.parametrize("name, build, names, batchnorm", MODULES, ids=[m[0] for m in MODULES])
def test_conditioned_weight_names_and_is_batchnorm(name, build, names, batchnorm):
    module = build()
    assert conditioned_weight_names(module) == names
    assert is_batchnorm(module) is batchnorm


@pytest.mark.parametrize("cls, names, error, message", [
    (int, ("weight",), TypeError, "expected an nn.Module subclass, got <class 'int'>"),
    (nn.Linear(2, 2), ("weight",), TypeError, "expected an nn.Module subclass"),  # an instance, not the class
    (nn.Embedding, (), ValueError, "give one or more attribute names, got \\(\\)"),
    (nn.Embedding, ("not an identifier",), ValueError, "give one or more attribute names"),
    (nn.Embedding, (3,), ValueError, "give one or more attribute names"),
])
def test_register_conditioned_weights_refuses_what_it_cannot_register(cls, names, error, message):
    with pytest.raises(error, match=message):
        register_conditioned_weights(cls, *names)
    assert conditioned_weight_names(nn.Embedding(10, 4)) == ()  # nothing was registered


def test_register_conditioned_weights_conditions_a_custom_layer():
    class Scale(nn.Module):  # a custom layer with its own weight, read functionally
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.rand(4, 4))  # reason: std(W) > 0, so λ > 0 adds noise

        def forward(self, x):
            return x @ self.gain

    with pytest.raises(ValueError, match="no Conv/Linear layer"):
        floatify.convert(Scale())
    assert register_conditioned_weights(Scale, "gain") is Scale
    model = floatify.convert(Scale())
    assert conditioned_weight_names(model) == ("gain",) and "gain_alpha" in dict(model.named_parameters())
    x, w = torch.rand(2, 4), model._parameters["gain"]
    assert torch.equal(model(x), x @ w)  # λ = 0: the original
    with floatify.lam(1.0):
        assert not torch.equal(model(x), x @ w)  # λ > 0: the noisy weight
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_conditioned_weights(int, "weight")
    with pytest.raises(ValueError, match="attribute names"):
        register_conditioned_weights(Scale)
