"""Attack budgets, strongest-iterate bookkeeping, honest EOT scoring and the registry of attack kinds
(APGD's own strength is tests/test_apgd.py's; the presets' tests/test_attack_presets.py's; the scores'
tests/test_scoring.py's)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.attack_presets import parse_attacks
from floatify.attacks import HANDLERS, AttackHandler, AttackSpec, attack_and_score, make_attack, register_attack
from floatify.scoring import expected_correct

from attack_models import small_model


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


@pytest.mark.parametrize("spec", [AttackSpec("pgd", 8 / 255, 3), AttackSpec("apgd-ce", 8 / 255, 3, eot_draws=2),
                                  AttackSpec("transfer", 8 / 255, 3)], ids=lambda s: s.label)
def test_attacks_read_constant_weights_and_leave_requires_grad_as_it_was(spec, monkeypatch):
    import floatify.layers.conditioned as conditioned

    model = small_model()
    head = model[4].weight
    head.requires_grad_(False)  # a frozen layer stays frozen, the others thaw after the attack
    per_forward = []
    monkeypatch.setattr(conditioned, "weight_std", lambda *a: per_forward.append(1) or torch.tensor(1.0))
    attack_and_score(model, spec, torch.rand(8, 3, 8, 8), torch.randint(0, 3, (8,)), 1.0, score_draws=2)
    assert not per_forward, "an attack's forward recomputed std(W) (the weights were not constant)"
    assert [p.requires_grad for p in model.parameters()] == [p is not head for p in model.parameters()]


def test_autoattack_refused_on_randomised_model():
    model = small_model()
    with pytest.raises(ValueError, match="deterministic"):
        attack_and_score(model, AttackSpec("autoattack"), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), 0.5)


@pytest.mark.parametrize("bad, error, message", [
    (dict(kind="cw"), ValueError, "unknown attack 'cw'; choose one of clean, fgsm"),
    (dict(kind="pgd", eps=2.0), ValueError, "eps .* must be a number in \\[0, 1\\]"),
    (dict(kind="pgd", eps="8/255"), TypeError, "eps .* must be a number"),
    (dict(kind="pgd", steps=0), ValueError, "steps must be an int >= 1"),
    (dict(kind="eot-pgd", eot_draws=1), ValueError, "eot-pgd needs eot_draws >= 2"),
    (dict(kind="apgd-ce", restarts=0), ValueError, "restarts must be an int >= 1"),
    (dict(kind="transfer", noise=False), ValueError, "it needs noise=True"),
    (dict(kind="apgd-dlr", eot_draws=True), TypeError, "eot_draws must be an int"),
])
def test_attack_spec_validation(bad, error, message):
    with pytest.raises(error, match=message):
        AttackSpec(**bad)


def test_descriptions_name_attack_steps_and_draws():
    d = AttackSpec("eot-pgd", 8 / 255, 10, eot_draws=8).describe()
    assert "EOT-PGD" in d and "10 steps" in d and "8 noise draws" in d and "8.0/255" in d
    assert "OFF" in AttackSpec("pgd", noise=False).describe()


def test_pgd_step():
    assert AttackSpec("pgd", 0.1, 10).pgd_step == pytest.approx(2.5 * 0.1 / 10)
    assert AttackSpec("pgd", 0.1, 10, step_size=0.02).pgd_step == 0.02


# ------------------------------------------------------------------------------ the registry of attack kinds
@pytest.mark.parametrize("kind, noise, lam, applies, in_headline, is_attack", [
    ("clean", True, 1.0, True, True, False),
    ("pgd", True, 0.5, True, True, True),
    ("pgd", False, 0.5, True, False, True),
    ("autoattack", True, 0.0, True, True, True),
    ("autoattack", True, 0.5, False, True, True),  # AutoAttack needs a deterministic model
    ("autoattack", False, 0.5, True, False, True),
    ("transfer", True, 0.0, False, True, True),  # a transfer from the noise-off model needs a randomised one
    ("transfer", True, 1.0, True, True, True),
])
def test_handlers_say_where_an_attack_applies_and_what_its_column_means(kind, noise, lam, applies, in_headline,
                                                                       is_attack):
    spec = AttackSpec(kind, noise=noise)
    assert spec.handler is HANDLERS[kind]
    assert spec.handler.applies(spec, lam) is applies
    assert spec.handler.in_headline(spec) is in_headline
    assert spec.handler.is_attack is is_attack


class Shift(AttackHandler):
    """A toy attack kind: every pixel moved by eps towards the far end of [0, 1]."""

    kind = "shift"

    def describe(self, spec):
        return f"shift every pixel by {spec.eps:.3f}"

    def attack(self, run):
        x_adv = (run.x + run.spec.eps * (1 - 2 * (run.x > 0.5).float())).clamp(0, 1)
        return x_adv, run.score(x_adv)


@pytest.fixture
def shift_registered():
    register_attack(Shift())
    yield
    del HANDLERS["shift"]


def test_a_new_attack_is_one_class_and_one_registration(shift_registered):
    spec = AttackSpec("shift", eps=0.2, steps=1)
    assert spec.label == "shift-1" and spec.describe() == "shift every pixel by 0.200"
    assert [s.label for s in parse_attacks("clean, shift", 0.2, steps=1)] == ["clean", "shift-1"]
    model = small_model()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 3, (8,))
    x_adv, score = attack_and_score(model, spec, x, y, 0.0)
    assert torch.allclose((x_adv - x).abs().max(), torch.tensor(0.2))
    assert torch.equal(score, expected_correct(model, x_adv, y, 1))
    report = floatify.evaluate(model, [(x, y)], lams=[0.0], attacks=[AttackSpec("clean"), spec], progress=False)
    assert report.headline == "worst case (1 attacks)" and "shift-1" in report.attacks[report.headline]
    assert report.score(0.0, "shift-1").mean == score.mean().item()


@pytest.mark.parametrize("handler, error, message", [
    (Shift, TypeError, "an AttackHandler instance"),  # the class, not an instance
    (HANDLERS["pgd"], ValueError, "attack kind 'pgd' is registered already"),
    (AttackHandler(), TypeError, "with a kind"),
])
def test_register_attack_refuses_what_it_cannot_serve(handler, error, message):
    before = dict(HANDLERS)
    with pytest.raises(error, match=message):
        register_attack(handler)
    assert HANDLERS == before


@pytest.mark.parametrize("kind, cls", [("fgsm", "FGSM"), ("pgd", "PGD"), ("eot-pgd", "EOTPGD")])
def test_training_attacks_come_from_the_handlers(kind, cls):
    attack = make_attack(nn.Linear(4, 2), kind, eps=0.1, steps=3, eot_draws=2)
    assert type(attack).__name__ == cls


@pytest.mark.parametrize("kind", ["apgd-ce", "clean", "cw"])
def test_training_attack_names_its_choices(kind):
    with pytest.raises(ValueError, match=f"unknown training attack '{kind}'; choose fgsm, pgd or eot-pgd"):
        make_attack(nn.Linear(4, 2), kind, eps=0.1)
