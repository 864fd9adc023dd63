"""floatify.audit_tap: the audit costs at most the evaluation it audits, and a stronger black-box attack it finds
goes into the evaluation's headline (lowering it, never raising it)."""

from __future__ import annotations

import copy

import pytest
import torch
from audit_models import EPS, EVAL, FAST, InputQuantisation

import floatify
import floatify.audit_tap as tap_module
from floatify.audit import AuditConfig
from floatify.audit_subject import PassCounter


def _headline(model, digits, audit, **options) -> tuple[floatify.Report, float]:
    torch.manual_seed(0)  # reason: the same evaluation with and without the audit (it runs after the attacks)
    report = floatify.evaluate(model, digits.test, lams=[0], audit=audit, **{**EVAL, **options})
    label = report.robust_label()
    assert label is not None
    return report, report.score(0, label).mean


@pytest.mark.parametrize("points, subset", [(100, 100), (200, 100)], ids=["every point audited", "half audited"])
def test_square_beating_white_box_goes_into_the_headline(pgd_at, digits, tmp_path, points, subset):
    model = InputQuantisation(pgd_at)
    _, before = _headline(model, digits, False, limit=points)
    saved = tmp_path / "adversarial.safetensors"
    report, after = _headline(model, digits, FAST, limit=points, save_adversarial=saved)
    row = {c.name: c for c in report.audit}["black-box vs white-box"].numbers["lam=0"]
    assert row["with_black_box_pct"] < row["white_box_pct"]
    # at λ = 0 the headline's members are the white-box ensemble: its worst case on the subset is white_box_pct,
    # and the fold makes it the worst case with Square there (with_black_box_pct); the other points are unchanged
    drop = (row["white_box_pct"] - row["with_black_box_pct"]) / 100 * subset / points
    assert after < before and after == pytest.approx(before - drop, abs=1e-6)
    assert any(f"includes the audit's square on the first {subset} points" in note for note in report.notes)
    assert f"first {subset} points" in report.to_markdown()
    from safetensors.torch import load_file

    worst = load_file(saved)["lam=0/worst-case"]  # the saved worst case is the folded one
    y = torch.tensor([int(digits.test[i][1]) for i in range(len(worst))])
    with torch.no_grad():
        assert (model(worst).argmax(1) == y).float().mean().item() == pytest.approx(after, abs=1e-6)


def test_a_model_square_does_not_beat_keeps_its_headline(pgd_at, digits):
    plain, before = _headline(pgd_at, digits, False)
    report, after = _headline(pgd_at, digits, FAST)
    assert after == before and report.notes == plain.notes


def test_the_fold_never_raises_the_headline(pgd_at, digits, monkeypatch):
    def rescored_high(model, candidates, x, y, lam, draws):  # reason: fresh draws landing high, as noise can
        return candidates[0][0], torch.ones(len(y)), []

    monkeypatch.setattr(tap_module, "worst_case", rescored_high)
    model = InputQuantisation(pgd_at)
    plain, before = _headline(model, digits, False)
    report, after = _headline(model, digits, FAST)
    assert {c.name: c for c in report.audit}["black-box vs white-box"].passed is False  # Square was stronger
    assert after == before and report.notes == plain.notes


def test_the_audit_costs_at_most_the_evaluation(pgd_at, digits):
    model = floatify.convert(copy.deepcopy(pgd_at)).eval()
    passes = {}
    for audit in (False, AuditConfig(subset=30)):  # the default audit of the evaluation below
        torch.manual_seed(0)
        with PassCounter(model) as counter:
            floatify.evaluate(model, digits.test, eps=EPS, steps=30, eot_draws=6, limit=30, progress=False,
                              audit=audit)
        passes[bool(audit)] = counter.passes(30)
    assert passes[True] - passes[False] <= passes[False]
