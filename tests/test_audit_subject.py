"""floatify.audit_subject: the budget sweep attacks only what can still change (survivors above eps × 1, exact on a
deterministic model), reuses the evaluation's own attacks at eps × 1, and counts what it runs and skips."""

from __future__ import annotations

import pytest
import torch
from audit_models import EPS

import floatify
import floatify.audit_subject as subject_module
from floatify.attacks import AttackSpec, attack_and_score
from floatify.audit import AuditConfig
from floatify.audit_checks import check_unbounded
from floatify.audit_subject import PassCounter, Subject, sweep

APGD = AttackSpec("apgd-ce", EPS, 5)


@pytest.fixture
def calls(monkeypatch):
    """Every attack the sweep runs, as (eps, points attacked)."""
    seen: list[tuple[float, int]] = []

    def spy(model, spec, x, y, *args):
        seen.append((round(spec.eps, 6), len(y)))
        return attack_and_score(model, spec, x, y, *args)

    monkeypatch.setattr(subject_module, "attack_and_score", spy)
    return seen


def _subject(pgd_at, digits, config: AuditConfig, evaluated=None, adversarial=None) -> Subject:
    x = torch.stack([digits.test[i][0] for i in range(40)])
    y = torch.tensor([int(digits.test[i][1]) for i in range(40)])
    return Subject(pgd_at, x, y, EPS, (0.0,), [APGD], [APGD], evaluated or {}, adversarial or {}, "custom", 1, 10,
                   config)


# multipliers, unbounded_eps -> whether the unbounded attack may skip the largest multiplier's broken points
SWEEPS = [
    ("default sweep", (0.5, 1, 2, 4, 8), 1.0, True),
    ("without x1 (chained through it)", (0.25, 0.5, 3), 1.0, True),
    ("unbounded below the largest budget: every point", (0.5, 1, 2, 4, 8), 0.5, False),
]


@pytest.mark.parametrize("name, multipliers, unbounded, skips", SWEEPS, ids=[r[0] for r in SWEEPS])
def test_above_x1_only_the_survivors_are_attacked(pgd_at, digits, calls, name, multipliers, unbounded, skips):
    s = _subject(pgd_at, digits, AuditConfig(steps=5, multipliers=multipliers, unbounded_eps=unbounded))
    sweep(s)
    row = s.sweep[0.0]
    attacked = dict(calls)
    assert len(attacked) == len(calls)  # at most one attack per budget
    for m in (m for m in row if m <= 1):
        assert attacked[round(EPS * m, 6)] == 40  # at and below eps × 1 (chained through it): every point
    above = sorted(m for m in row if m >= 1)
    for before, m in zip(above, above[1:]):
        alive = row[before] > 0
        assert attacked.get(round(EPS * m, 6), 0) == int(alive.sum())  # a point broken at a smaller eps is not
        assert (row[m][~alive] == 0).all()  # and stays broken
    calls.clear()
    check_unbounded(s)
    assert sum(n for _, n in calls) == (int((row[above[-1]] > 0).sum()) if skips else 40)


def test_x1_is_the_evaluations_own_attack_not_rerun(pgd_at, digits, calls):
    s = _subject(pgd_at, digits, AuditConfig(steps=5))
    x_adv, score = attack_and_score(pgd_at, APGD, s.x, s.y, 0.0, 1)
    reused = _subject(pgd_at, digits, AuditConfig(steps=5), {0.0: {APGD.label: score}}, {0.0: {APGD.label: x_adv}})
    sweep(reused)
    assert round(EPS, 6) not in dict(calls) and reused.reused == {0.0}
    assert torch.equal(reused.sweep[0.0][1.0], score)  # exact at λ = 0: the column's own score
    assert reused.skipped >= 40  # the 40 points at eps × 1
    calls.clear()
    sweep(s)  # without the evaluation's inputs: eps × 1 is attacked here
    assert dict(calls)[round(EPS, 6)] == 40 and s.reused == set()


def test_an_audited_evaluation_reruns_no_attack_at_its_own_eps(pgd_at, digits, calls):
    report = floatify.evaluate(pgd_at, digits.test, lams=[0], attacks="clean,apgd-ce,apgd-dlr", eps=EPS, steps=5,
                               limit=40, progress=False, audit=AuditConfig(subset=40, steps=5, square_queries=20))
    assert round(EPS, 6) not in dict(calls)  # the sweep's ×1, the randomness and the loss landscape: reused
    checks = {c.name: c for c in report.audit}
    white = checks["black-box vs white-box"].numbers["lam=0"]["white_box_pct"]
    # Square runs on the points the white-box worst case left unbroken only
    assert checks["black-box vs white-box"].numbers["cost"]["point_attacks"] == round(white * 40 / 100)


def test_the_pass_counter_counts_forwards_and_backwards():
    net = torch.nn.Linear(3, 2)
    with PassCounter(net) as counter:
        net(torch.rand(5, 3))
        with torch.no_grad():
            net(torch.rand(2, 3, requires_grad=True))  # no graph: no backward can follow
        net(torch.rand(4, 3, requires_grad=True)).sum().backward()
    net(torch.rand(7, 3))  # outside: not counted
    assert (counter.forwards, counter.backwards, counter.passes(11)) == (11, 4, 19 / 11)
