"""floatify.architecture: what config.json records of a model, and the model built back from it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.architecture import build, describe
from floatify.layers.conditioned import is_conditioned
from floatify.models import create_model


def _vit(**kwargs) -> nn.Module:
    import timm

    return timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, depth=1, **kwargs)


class _Custom(nn.Module):  # reason: a model no library can build by name
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


# name, the model, the architecture config.json must record
RECORDED = [
    ("floatify.create_model keeps kwargs", lambda: create_model("vit_tiny_patch16_224", 5, img_size=32, depth=1),
     {"source": "timm", "name": "vit_tiny_patch16_224", "num_classes": 5, "kwargs": {"img_size": 32, "depth": 1}}),
    ("a guess that does not fit records none", _vit, None),
    ("a guess with the same shapes but another function records none",
     lambda: __import__("timm").create_model("resnet10t", num_classes=4, global_pool="max"), None),
    ("torchvision found by its builder", lambda: __import__("torchvision").models.get_model("resnet18", num_classes=3),
     {"source": "torchvision", "name": "resnet18", "num_classes": 3, "kwargs": {}}),
    ("a custom model records none", _Custom, None),
]


@pytest.mark.parametrize("name,make,want", RECORDED, ids=[r[0] for r in RECORDED])
def test_recorded_architecture(name, make, want):
    assert describe(floatify.convert(make()))["architecture"] == want


def test_build_makes_the_described_model():
    model = floatify.convert(create_model("resnet10t", 10), filter_fn=lambda module, fqn: fqn != "model.fc")
    config = describe(model)
    assert config["conversion"]["excluded"] == ["model.fc"]
    rebuilt = build(config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert not is_conditioned(rebuilt.get_submodule("model.fc")), "the site filter_fn excluded stays plain"


def test_build_of_a_frozen_config_is_a_plain_model():
    frozen = floatify.freeze(floatify.convert(create_model("resnet10t", 10)).eval(), 0.5)
    rebuilt = build(describe(frozen))
    assert not any(is_conditioned(m) for m in rebuilt.modules())


def test_build_from_model_leaves_it_unconverted():
    skeleton = _Custom()
    rebuilt = build(describe(floatify.convert(_Custom())), skeleton)
    assert any(is_conditioned(m) for m in rebuilt.modules())
    assert not any(is_conditioned(m) for m in skeleton.modules())


def test_describe_refuses_a_plain_model():
    with pytest.raises(floatify.artifact.ArtifactError, match="neither converted"):
        describe(create_model("resnet10t", 10))
