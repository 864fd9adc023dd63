"""floatify.apgd: APGD reaches the exact worst case of models whose answer is known, and its scoring is honest."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.apgd import apgd, correct_predictions, dlr_loss
from floatify.attacks import AttackSpec, attack_and_score
from floatify.scoring import expected_correct

from attack_models import exact_robust_accuracy, linear_task

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("logits, y, expected", [
    ([[2.0, 1.0, 0.0]], [0], [1.0]),
    ([[2.0, 1.0, 0.0]], [1], [0.0]),
    ([[NAN, 0.0, 0.0]], [0], [0.0]),  # argmax of a NaN row is 0: still wrong
    ([[INF, 0.0, 0.0]], [0], [0.0]),  # a non-finite logit anywhere makes the row wrong
    ([[0.0, 5.0, -INF], [1.0, 0.0, 0.0]], [1, 0], [0.0, 1.0]),
])
def test_correct_predictions(logits, y, expected):
    assert correct_predictions(torch.tensor(logits), torch.tensor(y)).tolist() == expected


def test_dlr_loss_needs_three_classes():
    with pytest.raises(ValueError, match="the DLR loss needs at least 3 classes, the model has 2; use apgd-ce"):
        dlr_loss(torch.rand(4, 2), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("loss, eot_draws, restarts, lam, training", [
    ("ce", 1, 1, 0.0, False),
    ("dlr", 1, 2, 0.0, True),
    ("ce", 3, 1, 1.0, True),
    ("dlr", 2, 2, 0.5, False),
])
def test_apgd_stays_in_budget_and_leaves_the_model_as_it_was(loss, eot_draws, restarts, lam, training):
    torch.manual_seed(0)
    model = floatify.convert(nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)))
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(6, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    with floatify.lam(lam):
        x_adv, accuracy = apgd(model, x, y, eps=0.1, steps=4, loss=loss, eot_draws=eot_draws, restarts=restarts)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy.shape == (6,) and ((accuracy >= 0) & (accuracy <= 1)).all()
    assert model.training is training  # attacked in eval mode, then restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # no BatchNorm statistics moved
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind,slack", [("apgd-dlr", 0.02), ("apgd-ce", 0.06)])
def test_apgd_reaches_the_exact_worst_case_of_a_linear_model(kind, slack):
    eps = 0.05
    model, x, y = linear_task()
    exact = exact_robust_accuracy(model.fc, x, y, eps)
    assert 0.5 < exact < 0.95  # the task is neither trivial nor hopeless
    x_adv, score = attack_and_score(model, AttackSpec(kind, eps, 50), x, y, 0.0)
    assert exact - 1e-6 <= score.mean().item() <= exact + slack, (score.mean().item(), exact)
    assert torch.equal(expected_correct(model, x_adv, y, 1), score)  # the kept points earn the score
    assert (x_adv - x).abs().max() <= eps + 1e-6


def test_dlr_breaks_a_saturated_model_where_cross_entropy_stalls():
    eps = 0.05
    model, x, y = linear_task(scale=1e4)
    exact = exact_robust_accuracy(model.fc, x, y, eps)
    _, ce = attack_and_score(model, AttackSpec("apgd-ce", eps, 50), x, y, 0.0)
    _, dlr = attack_and_score(model, AttackSpec("apgd-dlr", eps, 50), x, y, 0.0)
    assert ce.mean().item() > exact + 0.08  # vanishing cross-entropy gradients: the attack stalls
    assert dlr.mean().item() <= exact + 0.02  # DLR is scale-invariant
