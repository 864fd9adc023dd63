"""floatify.models: Normalized puts the normalisation inside the model; create_model by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from floatify.models import IMAGENET_MEAN, IMAGENET_STD, Normalized, create_model


def test_normalized_feeds_the_inner_model_normalised_inputs():
    inner = nn.Identity()
    model = Normalized(inner)
    x = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(model(x), (x - mean) / std)
    assert torch.allclose(Normalized(inner, mean=(0.5,), std=(0.25,))(x), (x - 0.5) / 0.25)
    assert sorted(model.state_dict()) == ["mean", "std"]  # buffers travel with the checkpoint
    assert model(x.double()).dtype == torch.float64


def test_create_model_by_name_and_unknown_names():
    model = create_model("resnet10t", 7)
    assert isinstance(model, Normalized) and model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 7)
    assert not isinstance(create_model("resnet10t", 7, normalize=False), Normalized)
    with pytest.raises(ValueError, match="resnet10t"):  # a close name is suggested
        create_model("resnet10", 7)
