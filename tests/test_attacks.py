"""Attack budgets, strongest-iterate bookkeeping and honest EOT scoring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.attacks import AttackSpec, attack_and_score, expected_correct


def small_model():
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(6, 3))).eval()


@pytest.mark.parametrize(
    "spec",
    [AttackSpec("fgsm", 8 / 255), AttackSpec("pgd", 8 / 255, 4), AttackSpec("eot-pgd", 4 / 255, 3, eot_draws=3),
     AttackSpec("pgd", 8 / 255, 3, noise=False)],
    ids=lambda s: s.label,
)
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_budget_range_and_strongest_iterate(spec, lam):
    model = small_model()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 3, (16,))
    x_adv, score = attack_and_score(model, spec, x, y, lam, score_draws=4)
    assert (x_adv - x).abs().max() <= spec.eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert score.shape == (16,) and ((score >= 0) & (score <= 1)).all()
    if lam == 0 or not spec.noise:  # deterministic: the kept point is never better than the clean one
        with floatify.lam(lam, noise=spec.noise):
            clean = expected_correct(model, x, y, 1)
        assert (score <= clean).all()
    assert all(p.grad is None for p in model.parameters()), "attacks must not leave parameter gradients"


class Coin(nn.Module):
    """x -> 2 logits whose margin for class 0 is m + noise, noise ~ N(0, 2 s^2): P(correct) = Φ(m / (s√2))."""

    def __init__(self, margin: float, a: float = 1.0):
        super().__init__()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[a], [-a]]))
            self.fc.bias.copy_(torch.tensor([margin - 2 * a, 0.0]))

    def forward(self, x):
        return self.fc(x.reshape(len(x), -1)[:, :1] * 0 + 1)  # input-independent: a coin with known bias


def test_eot_scoring_matches_known_accuracy():
    torch.manual_seed(0)
    margin, a = 0.5, 1.0
    model = floatify.convert(Coin(margin, a)).eval()
    with torch.no_grad():
        model.fc.weight_alpha.fill_(1.0)
    s = 1.0 * 1.0 * (a * math.sqrt(2))  # λ α std(W); std of [a, -a] is a√2
    expected = 0.5 * (1 + math.erf(margin / (s * math.sqrt(2)) / math.sqrt(2)))
    x, y = torch.rand(400, 1), torch.zeros(400, dtype=torch.long)
    report = floatify.evaluate(model, [(x, y)], lams=[0.0, 1.0], attacks=[AttackSpec("clean")], score_draws=300,
                               progress=False)
    at1 = report.score(1.0, "clean")
    # every point shares each draw, so the interval must come from the draw-to-draw spread (~ 1.96·0.028)
    assert 0.04 < at1.ci95 < 0.08
    assert abs(at1.mean - expected) < at1.ci95, (at1, expected)
    assert report.score(0.0, "clean").mean == 1.0  # deterministic at λ = 0: margin > 0
    # a single noisy forward per point would give a 0/1 verdict per point; expected accuracy is fractional
    _, per_point = attack_and_score(model, AttackSpec("clean"), x, y, 1.0, score_draws=20)
    assert ((per_point > 0) & (per_point < 1)).float().mean() > 0.5


def test_autoattack_refused_on_randomised_model():
    model = small_model()
    with pytest.raises(ValueError, match="deterministic"):
        attack_and_score(model, AttackSpec("autoattack"), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), 0.5)


@pytest.mark.parametrize("bad", [dict(kind="cw"), dict(kind="pgd", eps=2.0), dict(kind="pgd", steps=0),
                                 dict(kind="eot-pgd", eot_draws=1)])
def test_attack_spec_validation(bad):
    with pytest.raises(ValueError):
        AttackSpec(**bad)


def test_descriptions_name_attack_steps_and_draws():
    d = AttackSpec("eot-pgd", 8 / 255, 10, eot_draws=8).describe()
    assert "EOT-PGD" in d and "10 steps" in d and "8 noise draws" in d and "8.0/255" in d
    assert "OFF" in AttackSpec("pgd", noise=False).describe()
