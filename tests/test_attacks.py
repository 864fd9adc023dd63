"""Attack budgets, strongest-iterate bookkeeping and honest EOT scoring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.attacks import AttackSpec, attack_and_score, expected_correct, parse_attacks, quick, strong


def small_model():
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(6, 3))).eval()


@pytest.mark.parametrize(
    "spec",
    [AttackSpec("fgsm", 8 / 255), AttackSpec("pgd", 8 / 255, 4), AttackSpec("eot-pgd", 4 / 255, 3, eot_draws=3),
     AttackSpec("pgd", 8 / 255, 3, noise=False), AttackSpec("apgd-ce", 8 / 255, 4, eot_draws=2),
     AttackSpec("apgd-dlr", 8 / 255, 4, eot_draws=2, restarts=2), AttackSpec("transfer", 8 / 255, 3),
     AttackSpec("apgd-ce", 8 / 255, 3, noise=False)],
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
            again = expected_correct(model, x_adv, y, 1)
        assert (score <= clean).all()
        assert torch.equal(score, again), "the score must be the returned points' own accuracy"
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
                                 dict(kind="eot-pgd", eot_draws=1), dict(kind="apgd-ce", restarts=0),
                                 dict(kind="transfer", noise=False), dict(kind="apgd-dlr", eot_draws=True)])
def test_attack_spec_validation(bad):
    with pytest.raises(ValueError):
        AttackSpec(**bad)


def test_descriptions_name_attack_steps_and_draws():
    d = AttackSpec("eot-pgd", 8 / 255, 10, eot_draws=8).describe()
    assert "EOT-PGD" in d and "10 steps" in d and "8 noise draws" in d and "8.0/255" in d
    assert "OFF" in AttackSpec("pgd", noise=False).describe()


def test_pgd_step_and_deprecated_alpha():
    spec = AttackSpec("pgd", 0.1, 10)
    assert spec.pgd_step == pytest.approx(2.5 * 0.1 / 10)
    assert AttackSpec("pgd", 0.1, 10, step_size=0.02).pgd_step == 0.02
    with pytest.warns(DeprecationWarning, match="pgd_step"):
        assert spec.alpha == spec.pgd_step


# ------------------------------------------------------------------------------ strength on known answers
D, K = 20, 3


class Linear3(nn.Module):
    """A 3-class linear model; ``scale`` saturates the softmax (cross-entropy gradients vanish) without
    changing any decision."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.scale = nn.Linear(D, K), scale

    def forward(self, x):
        return self.scale * self.fc(x.flatten(1))


def exact_robust_accuracy(fc: nn.Linear, x, y, eps) -> float:
    """A point of a linear model is robust iff every margin survives eps·‖w_y − w_j‖₁ (box never binds here)."""
    w, b = fc.weight.detach(), fc.bias.detach()
    z = x @ w.T + b
    robust = torch.ones(len(y), dtype=torch.bool)
    for j in range(K):
        margin = z.gather(1, y[:, None]).squeeze(1) - z[:, j] - eps * (w[y] - w[j]).abs().sum(1)
        robust &= (margin > 0) | (y == j)
    return robust.float().mean().item()


def linear_task(scale: float = 1.0, n: int = 300):
    model = floatify.convert(Linear3(scale)).eval()
    x = 0.3 + 0.4 * torch.rand(n, D, generator=torch.Generator().manual_seed(1))  # interior: [0, 1] never binds
    with torch.no_grad():
        y = model(x).argmax(1)  # every point clean-correct
    return model, x, y


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


def test_strong_headline_reaches_the_exact_worst_case():
    eps = 0.05
    model, x, y = linear_task()
    exact = exact_robust_accuracy(model.fc, x, y, eps)
    report = floatify.evaluate(model, [(x, y)], lams=[0.0], attacks=strong(eps, steps=50), progress=False)
    assert abs(report.score(0.0, report.headline).mean - exact) <= 0.02


def test_dlr_breaks_a_saturated_model_where_cross_entropy_stalls():
    eps = 0.05
    model, x, y = linear_task(scale=1e4)
    exact = exact_robust_accuracy(model.fc, x, y, eps)
    _, ce = attack_and_score(model, AttackSpec("apgd-ce", eps, 50), x, y, 0.0)
    _, dlr = attack_and_score(model, AttackSpec("apgd-dlr", eps, 50), x, y, 0.0)
    assert ce.mean().item() > exact + 0.08  # vanishing cross-entropy gradients: the attack stalls
    assert dlr.mean().item() <= exact + 0.02  # DLR is scale-invariant


def test_headline_is_the_per_point_worst_case_and_never_above_any_attack():
    model = small_model()
    x, y = torch.rand(24, 3, 8, 8), torch.randint(0, 3, (24,))
    attacks = [AttackSpec("clean"), AttackSpec("fgsm"), AttackSpec("apgd-ce", steps=3),
               AttackSpec("apgd-dlr", steps=3), AttackSpec("pgd", steps=3, noise=False)]
    report = floatify.evaluate(model, [(x, y)], lams=[0.0, 1.0], attacks=attacks, score_draws=6, progress=False)
    assert report.headline == "worst case (3 attacks)"
    at0 = {label: report.score(0.0, label).mean for label in report.attacks}
    # deterministic at λ = 0: the headline is at most every attack on the noisy model (and the clean accuracy)
    assert at0[report.headline] <= min(at0[a.label] for a in attacks if a.noise) + 1e-9
    assert "pgd-3 (noise off)" not in report.attacks[report.headline]
    assert report.columns()[:2] == ["clean", report.headline]


def test_nan_outputs_count_as_wrong():
    class Broken(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 3), float("nan"))

    y = torch.zeros(5, dtype=torch.long)  # argmax of a NaN row is 0: a naive scorer says 100%
    assert expected_correct(Broken(), torch.rand(5, 3), y, 2).sum() == 0


@pytest.mark.parametrize("text,labels", [
    ("quick", [s.label for s in quick(0.1)]),
    ("strong", ["clean", "apgd-ce-50x10", "apgd-dlr-50x10", "transfer-50", "apgd-ce-50 (noise off)"]),
    ("clean,apgd-dlr:nonoise", ["clean", "apgd-dlr-50 (noise off)"]),
])
def test_presets_and_lists_parse(text, labels):
    assert [s.label for s in parse_attacks(text, 0.1)] == labels


def test_strong_descriptions_name_loss_iterations_draws_restarts_and_eps():
    d = {s.label: s.describe() for s in strong(0.1, steps=100, eot_draws=20)}
    assert all(w in d["apgd-dlr-100x20"] for w in ("DLR", "100 iterations", "20 noise draws", "1 restart", "25.5/255"))
    assert "noise-off model" in d["transfer-100"]
