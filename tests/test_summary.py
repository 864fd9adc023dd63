import pytest
import torch.nn as nn

import floatify
from floatify.summary import param_groups

from cases import CASES


def test_summary_lists_sites_reasons_and_overhead():
    model = floatify.convert(CASES["cnn"][0](), filter_fn=lambda m, fqn: fqn != "7")
    s = floatify.summary(model)
    assert [r.fqn for r in s.conditioned] == ["0.weight", "3.weight"]
    assert [r.kind for r in s.conditioned] == ["Conv2d", "Conv2d"]
    assert s.conditioned[0].shape == (8, 3, 3, 3) and s.conditioned[0].alpha == 0.25
    assert [r.fqn for r in s.dual_bn] == ["1"]
    assert s.added_params == 2 + 16
    assert s.original_params == sum(p.numel() for p in CASES["cnn"][0]().parameters())
    text = str(s)
    assert "7: excluded by filter_fn" in text and "overhead" in text and "0.weight" in text


def test_param_groups_exclude_alpha_norms_and_biases():
    model = floatify.convert(CASES["cnn"][0]())
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model[0].weight_alpha) not in decay_ids
    assert id(model[1].weight_adv) not in decay_ids and id(model[1]._parameters["weight"]) not in decay_ids
    assert id(model[0]._parameters["weight"]) in decay_ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, -1)


def test_resnet18_overhead_is_small():
    import timm

    s = floatify.summary(floatify.convert(timm.create_model("resnet18", num_classes=10)))
    assert s.overhead_percent < 0.5
    assert len(s.conditioned) == 21


def test_summary_after_second_convert_updates_skips():
    model = floatify.convert(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), filter_fn=lambda m, f: f == "0")
    assert floatify.summary(model).skipped == [("1", "excluded by filter_fn")]
    model = floatify.convert(model)
    assert floatify.summary(model).skipped == []
    assert len(floatify.summary(model).conditioned) == 2
