"""floatify.audit_checks: the audit flags masked models by the right checks, passes a plain PGD-AT model, states the
black-box number and audits a randomised model at the dial's ends and middle."""

from __future__ import annotations

import copy

import pytest
import torch
from audit_models import EVAL, FAST, InputQuantisation, Temperature

import floatify
from floatify.audit import AuditConfig, verdict
from floatify.report import Report

MASKING = {"budget sweep", "unbounded attack", "black-box vs white-box", "loss landscape"}


def _flagged(report: Report) -> set[str]:
    assert report.audit is not None
    return {c.name for c in report.audit if c.passed is False}


# wrapper, evaluated attacks -> the checks that must flag it (empty: it passes every judged check)
MODELS = [
    ("plain PGD-AT passes", lambda m: m, "strong", set()),
    ("input quantisation: gradients zero", InputQuantisation, "strong", MASKING),
    ("temperature x1e4, quick preset (cross-entropy attacks)", Temperature, "quick", MASKING),
    ("temperature x1e4, APGD-CE alone", Temperature, "clean,apgd-ce", MASKING),
    # reason: the DLR loss is invariant to the logits' scale, so the strong preset's APGD-DLR keeps the number
    # right; the saturated cross-entropy is still flagged
    ("temperature x1e4, strong preset (APGD-DLR sees through it)", Temperature, "strong", {"loss landscape"}),
]


@pytest.mark.parametrize("name, wrap, attacks, flags", MODELS, ids=[r[0] for r in MODELS])
def test_the_audit_flags_masked_models_by_the_right_checks(pgd_at, digits, name, wrap, attacks, flags):
    report = floatify.evaluate(wrap(pgd_at), digits.test, lams=[0], attacks=attacks, audit=FAST, **EVAL)
    assert _flagged(report) == flags
    line = verdict(report.audit)
    assert line == "audit: 6 checks, all passed" if not flags else line.startswith("audit: FLAGGED ")
    assert all(name in line for name in flags)


def test_a_masked_model_stalls_the_attack_and_the_black_box_number_is_given(pgd_at, digits):
    report = floatify.evaluate(InputQuantisation(pgd_at), digits.test, lams=[0], audit=FAST, **EVAL)
    checks = {c.name: c for c in report.audit}
    black_box = checks["black-box vs white-box"].numbers["lam=0"]
    assert black_box["with_black_box_pct"] < black_box["white_box_pct"]  # the stronger attack's headline
    assert checks["loss landscape"].passed is False and checks["loss landscape"].numbers["lam=0"]["stalled_pct"] > 20
    plain = floatify.evaluate(pgd_at, digits.test, lams=[0], audit=FAST, **EVAL)
    assert {c.name: c for c in plain.audit}["loss landscape"].numbers["lam=0"]["stalled_pct"] < 5


def test_a_randomised_model_is_audited_at_the_dials_ends_and_middle(pgd_at, digits):
    model = floatify.convert(copy.deepcopy(pgd_at)).eval()
    report = floatify.evaluate(model, digits.test, lams=[0, 0.25, 0.5, 1], audit=AuditConfig(
        subset=24, steps=3, eot_draws=4, square_queries=20), **{**EVAL, "steps": 3, "eot_draws": 4, "limit": 24})
    checks = {c.name: c for c in report.audit}
    sweep = checks["budget sweep"].numbers
    assert {k for k in sweep if k.startswith("lam=")} == {"lam=0", "lam=0.5", "lam=1"}
    # what the audit ran: at most half the evaluation's draws (eps × 1 is the evaluation's own attacks)
    assert sweep["points"] == 24 and sweep["attacks"] == ["apgd-ce-3x2", "apgd-dlr-3x2"]
    assert sweep["x1_attacks"] == ["apgd-ce-3x4", "apgd-dlr-3x4"]
    assert set(checks["randomness"].numbers) - {"cost"} == {"lam=0.5", "lam=1"}  # λ = 0 has no noise to switch off
    gap = checks["randomness"].numbers["lam=1"]
    assert gap["gap_points"] == pytest.approx(gap["noisy_pct"] - gap["noise_off_pct"], abs=0.02)
    convergence = checks["convergence"].numbers
    assert convergence["lam"] == 1.0 and convergence["attack"] in sweep["x1_attacks"]
    assert convergence["doubled"] == convergence["attack"].replace("-3x4", "-6x8")
    assert "transfer_pct" in checks["black-box vs white-box"].numbers["lam=1"]
    for lam in ("lam=0", "lam=0.5", "lam=1"):  # the worst case with the black-box attacks is above none of them
        row = checks["black-box vs white-box"].numbers[lam]
        assert row["with_black_box_pct"] <= min(v for k, v in row.items() if k != "with_black_box_pct")


def test_the_black_box_worst_case_is_never_above_an_attack_it_is_the_worst_of(pgd_at, digits, monkeypatch):
    import floatify.audit_checks as checks_module

    def rescored_high(model, candidates, x, y, lam, draws):  # reason: fresh draws landing high, as noise can
        return candidates[0][0], torch.ones(len(y))

    monkeypatch.setattr(checks_module, "worst_case", rescored_high)
    report = floatify.evaluate(pgd_at, digits.test, lams=[0], audit=FAST, **EVAL)
    row = {c.name: c for c in report.audit}["black-box vs white-box"].numbers["lam=0"]
    assert row["with_black_box_pct"] == min(row["white_box_pct"], row["square_pct"])
