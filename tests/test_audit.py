"""floatify.audit: the audit's settings refuse bad input, its outcome travels with the report; the checks themselves
are tested in tests/test_audit_checks.py."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from audit_models import EVAL, FAST, InputQuantisation

import floatify
from floatify.audit import AuditCheck, AuditConfig, audit_lams, verdict
from floatify.card import model_card
from floatify.report import Report


def test_the_audit_travels_with_the_report(pgd_at, digits, tmp_path):
    report = floatify.evaluate(InputQuantisation(pgd_at), digits.test, lams=[0], audit=FAST, **EVAL)
    again = Report.from_json(report.to_json(tmp_path / "report.json"))
    assert again.audit == report.audit and all(isinstance(c, AuditCheck) for c in again.audit)
    assert verdict(report.audit) in report.to_markdown() and "| budget sweep | **FLAG" in report.to_markdown()
    card = model_card({"preprocessing": {"input_size": [3, 8, 8]}}, again)
    assert "## Evaluation audit" in card and card.count(verdict(report.audit)) == 1
    old = json.loads(report.to_json())
    del old["audit"]  # a report.json written before audits existed still loads
    assert Report.from_json(json.dumps(old)).audit is None


class OneClass(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :1]


# (model factory, evaluate options, audit config) -> error type, message fragment; refused before any attack runs
BAD = [
    ("subset larger than the test set", None, {"limit": 20}, AuditConfig(subset=50), ValueError,
     "larger than the test set (20 points"),
    ("eps sweep leaves [0, 1]", None, {"eps": 0.2}, AuditConfig(multipliers=(1, 8)), ValueError,
     "reaches 1.6 (eps 0.2 × 8), outside [0, 1]"),
    ("a model with one class", OneClass, {}, AuditConfig(subset=8), ValueError, "at least 2 classes, this model has 1"),
    ("audit λ not evaluated", None, {"lams": [0]}, AuditConfig(lams=(1,)), ValueError,
     "audit λ 1 is not among the evaluated λ"),
    ("one multiplier", None, {}, {"multipliers": (2,)}, ValueError, "at least two numbers > 0"),
    ("not a config", None, {}, "yes", TypeError, "audit must be True, False or a floatify.AuditConfig"),
]


@pytest.mark.parametrize("name, make, options, config, error, message", BAD, ids=[r[0] for r in BAD])
def test_bad_audit_input_is_one_clear_line(pgd_at, digits, name, make, options, config, error, message):
    model = make() if make is not None else pgd_at
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(error) as caught:
            audit = AuditConfig(**config) if isinstance(config, dict) else config
            floatify.evaluate(model, digits.test, **{**EVAL, "lams": [0], "attacks": "clean,apgd-ce", **options},
                              audit=audit)
    finally:
        hook.remove()
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert len(calls) <= 1  # at most the forward that counts the classes: nothing was attacked


@pytest.mark.parametrize("evaluated, asked, audited", [
    ([0, 0.25, 0.5, 0.75, 1], None, (0.0, 0.5, 1.0)),
    ([1, 0.3], None, (0.3, 1.0)),
    ([0.2], None, (0.2,)),
    ([0, 0.5, 1], (1, 0), (0.0, 1.0)),
])
def test_the_audited_lams(evaluated, asked, audited):
    assert audit_lams(evaluated, AuditConfig(lams=asked)) == audited
