"""The quick look between epochs: what it measures, and that it leaves the global RNGs alone."""

from __future__ import annotations

import random

import pytest
import torch

from floatify.evaluate import evaluate
from floatify.quick_look import QUICK_LOOK_KEYS, describe_epoch, quick_look

from tiny_training import loader, tiny_model


def test_quick_look_scores_clean_and_pgd_and_leaves_the_rngs_where_they_were():
    model = tiny_model()
    torch.manual_seed(7)
    random.seed(7)
    expected = (torch.rand(2), random.random())
    torch.manual_seed(7)
    random.seed(7)
    look = quick_look(model, loader(shuffle=False), eps=8 / 255)
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]
    assert tuple(look) == QUICK_LOOK_KEYS and all(0.0 <= v <= 1.0 for v in look.values())
    report = evaluate(model, loader(shuffle=False), lams=(0.0,), attacks="clean", progress=False, max_batches=4)
    assert look["eval_clean_lam0"] == report.score(0.0, "clean").mean  # λ = 0 is deterministic
    assert model.training, "the model is left in train mode"


@pytest.mark.parametrize("record, line", [
    ({"loss": 0.5, "seconds": 61.4}, "loss 0.500 (61s)"),
    ({"loss": 0.5, "seconds": 1, "eval_clean_lam0": 1.0, "eval_clean_lam1": 0.5, "eval_robust_lam1": 0.125},
     "loss 0.500 (1s); quick look: clean 100.0% (λ=0), 50.0% (λ=1), robust 12.5% (λ=1)"),
    ({"loss": 0.5, "seconds": 1, "eval_clean_lam0": 1.0}, "loss 0.500 (1s)"),  # a partial record: no quick look
])
def test_describe_epoch(record, line):
    assert describe_epoch(record) == line
