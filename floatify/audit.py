"""The evaluation audits itself: the sanity checks reviewers apply to a randomised defence, on a subset of points.

After Carlini et al. 2019 ("On Evaluating Adversarial Robustness"), Tramèr et al. 2020 ("On Adaptive Attacks to
Adversarial Example Defenses") and AutoAttack's warnings, ``floatify.evaluate(..., audit=True)`` (``floatify eval
--audit``, ``floatify train --audit``) runs six checks on the first :attr:`AuditConfig.subset` test points:

1. **budget sweep**: robust accuracy at eps × (0.5, 1, 2, 4, 8) must fall monotonically and reach chance (or < 10%)
   by the largest; else *gradient masking*;
2. **unbounded attack**: with eps = 1 the attack must fool ≥ 99% of the points; else *gradient masking*;
3. **black-box vs white-box**: Square (torchattacks, its queries averaged over noise draws, scored with EOT) and the
   transfer attack must not beat the white-box ensemble by more than the CI; else *obfuscated gradients*;
4. **convergence**: the evaluation's strongest iterative attack with twice its iterations and noise draws must not
   lower robust accuracy by more than 1 point (or the CI); else *not converged*;
5. **randomness**: the gap between the noisy model and the same λ with the noise off (stated);
6. **loss landscape**: the share of points whose cross-entropy the attack did not increase (a stalled attack):
   above :attr:`AuditConfig.max_stalled` (10%), *a saturated loss* — a masking symptom even where a scale-free attack
   (APGD-DLR) in the ensemble keeps the number right.

The white-box attacks are the evaluation's own gradient attacks (its APGD ensemble, or PGD/EOT-PGD/FGSM of the quick
preset): at eps × 1 the evaluation's very columns (their adversarial inputs, kept for the audited points, re-scored as
one worst case), at the sweep's other budgets the same attacks at the audit's cheaper settings. The audit re-attacks
nothing the evaluation did (its transfer and noise-off columns too), and attacks only what can still change, as
AutoAttack does: above eps × 1 the points the previous budget left unbroken, Square and the doubled attack the points
not broken already (:mod:`floatify.audit_checks` says why each is exact or errs towards flagging). Each check's
``cost`` says what it ran, what it skipped and its model passes.

Where Square (or a transfer attack the evaluation did not run) beats the white-box ensemble, the evaluation's headline
takes it into its per-point worst case on the audited points (never raising it), and a report note says so.

This module holds the audit's settings (:class:`AuditConfig`) and outcome (:class:`AuditCheck`, :func:`verdict`,
:func:`audit_markdown`); the checks and their running are :mod:`floatify.audit_checks` and
:mod:`floatify.audit_subject`, what the evaluation hands them :mod:`floatify.audit_tap`.

Example:
    >>> import torch, floatify
    >>> from torch.utils.data import TensorDataset
    >>> torch.manual_seed(0) and None
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> data = TensorDataset(torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,)))
    >>> report = floatify.evaluate(model, data, lams=[0], attacks="clean,apgd-ce", steps=2, progress=False,
    ...                            audit=floatify.AuditConfig(subset=8, steps=2, square_queries=5))
    >>> [check.name for check in report.audit]
    ['budget sweep', 'unbounded attack', 'black-box vs white-box', 'convergence', 'randomness', 'loss landscape']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from floatify.config import check_int, check_real
from floatify.context import validate_lam

__all__ = ["AuditConfig", "AuditCheck", "verdict", "audit_markdown", "audit_lams"]

CHECK_FLAGS = {"budget sweep": "gradient masking", "unbounded attack": "gradient masking",
               "black-box vs white-box": "obfuscated gradients", "convergence": "not converged",
               "loss landscape": "saturated loss"}
"""What a failed check means, by check name (check 5 states a number and never fails)."""


@dataclass(frozen=True)
class AuditConfig:
    """The audit's settings and their defaults (the library's and the CLI's ``--audit-*`` options).

    Attributes:
        subset: the first N test points audited.
        multipliers: the budget sweep's eps multipliers (eps × each must stay in [0, 1]).
        lams: the λ audited, each among the evaluated ones; None: the evaluated λ's ends and middle (the
            deterministic end, the most randomised end and the BatchNorm interpolation between: three λ bound
            the cost whatever the number evaluated).
        steps: iterations of the audit's white-box attacks at the budgets other than eps × 1 (the evaluation's,
            made cheaper: at most this many; eps × 1 is the evaluation's own attacks).
        eot_draws: noise draws per iteration of those attacks: at most this many, and at most half the
            evaluation's.
        unbounded_eps: the unbounded attack's budget (1: any image in [0, 1] is reachable).
        square_queries: queries of the Square attack.
        square_draws: noise draws averaged per Square query on a randomised model (EOT).
        min_success: the share of points the unbounded attack must fool.
        tolerance: the convergence check's allowance, a fraction (the CI when that is wider).
        max_stalled: the share of points whose loss the attack may fail to increase before the loss landscape is
            flagged (a saturated softmax gives no gradient: huge logit temperatures, confident masked models).

    Example:
        >>> from floatify.audit import AuditConfig
        >>> AuditConfig(multipliers=(1, 2)).multipliers
        (1.0, 2.0)
    """

    subset: int = 100
    multipliers: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    lams: tuple[float, ...] | None = None
    steps: int = 16  # reason: with half the evaluation's draws the audit stays within its model passes (test_audit_tap)
    eot_draws: int = 4
    unbounded_eps: float = 1.0
    square_queries: int = 300
    square_draws: int = 2
    min_success: float = 0.99
    tolerance: float = 0.01
    max_stalled: float = 0.10  # reason: PGD-AT models stall on 0-5% of points (tests/test_audit.py, audit.json)

    def __post_init__(self) -> None:
        check_int("subset", self.subset, meaning="audited test points")
        if isinstance(self.multipliers, (str, bytes)) or not isinstance(self.multipliers, Iterable):
            raise TypeError(f"multipliers must be a sequence of eps multipliers, got {self.multipliers!r}")
        for m in self.multipliers:
            check_real("multipliers", m, low=0.0, meaning="eps multipliers")
        multipliers = tuple(sorted(float(m) for m in self.multipliers))
        if len(multipliers) < 2 or multipliers[0] <= 0:
            raise ValueError(f"multipliers must be at least two numbers > 0 (the sweep's eps × each), got "
                             f"{self.multipliers!r}; e.g. 0.5,1,2,4,8")
        object.__setattr__(self, "multipliers", multipliers)
        if self.lams is not None:
            object.__setattr__(self, "lams", tuple(validate_lam(v, "audit lams value") for v in self.lams))
        for name in ("steps", "eot_draws", "square_queries", "square_draws"):
            check_int(name, getattr(self, name))
        check_real("unbounded_eps", self.unbounded_eps, low=0.0, high=1.0, meaning="pixel units")
        check_real("min_success", self.min_success, low=0.0, high=1.0, meaning="share of points")
        check_real("tolerance", self.tolerance, low=0.0, high=1.0, meaning="fraction of points")
        check_real("max_stalled", self.max_stalled, low=0.0, high=1.0, meaning="share of points")

    def check_sweep(self, eps: float) -> None:
        """A ValueError when eps × the largest multiplier leaves [0, 1] (the pixel range)."""
        top = eps * self.multipliers[-1]
        if top > 1:
            keep = ",".join(f"{m:g}" for m in self.multipliers if eps * m <= 1) or "none"
            raise ValueError(f"the audit's eps sweep reaches {top:.3g} (eps {eps:.4g} × {self.multipliers[-1]:g}), "
                             f"outside [0, 1] (pixel units); use multipliers within it ({keep})")

    def check_points(self, points: int) -> None:
        """A ValueError when the subset asks for more points than the test set has."""
        if self.subset > points:
            raise ValueError(f"the audit subset ({self.subset} points) is larger than the test set ({points} "
                             f"points evaluated); audit at most {points} (--audit-subset {points})")


@dataclass(frozen=True)
class AuditCheck:
    """One check's outcome: ``passed`` True/False (None: a number stated, not judged), its numbers, one note."""

    name: str
    passed: bool | None
    numbers: dict = field(default_factory=dict)
    note: str = ""


def audit_lams(evaluated: Sequence[float], config: AuditConfig) -> tuple[float, ...]:
    """The λ the audit runs at: ``config.lams`` (checked against the evaluated ones) or the ends and middle.

    Example:
        >>> from floatify.audit import AuditConfig, audit_lams
        >>> audit_lams([0, 0.25, 0.5, 0.75, 1], AuditConfig())
        (0.0, 0.5, 1.0)
    """
    if config.lams is not None:
        missing = [v for v in config.lams if v not in evaluated]
        if missing:
            raise ValueError(f"the audit λ {missing[0]:g} is not among the evaluated λ "
                             f"({', '.join(f'{v:g}' for v in evaluated)}); audit evaluated λ only")
        return tuple(sorted(set(config.lams)))
    ordered = sorted({float(v) for v in evaluated})
    middle = min(ordered, key=lambda v: (abs(v - 0.5), v))
    return tuple(sorted({ordered[0], middle, ordered[-1]}))


def verdict(checks: Sequence[AuditCheck]) -> str:
    """The audit in one line.

    Example:
        >>> from floatify.audit import AuditCheck, verdict
        >>> verdict([AuditCheck("budget sweep", True), AuditCheck("randomness", None)])
        'audit: 2 checks, all passed'
        >>> verdict([AuditCheck("unbounded attack", False, note="λ=1: fools 40% at eps=1")])
        'audit: FLAGGED gradient masking (unbounded attack: λ=1: fools 40% at eps=1)'
    """
    failed = [c for c in checks if c.passed is False]
    if not failed:
        return f"audit: {len(checks)} checks, all passed"
    return "audit: FLAGGED " + ", ".join(f"{CHECK_FLAGS.get(c.name, 'failed')} ({c.name}: {c.note})" for c in failed)


def audit_markdown(checks: Sequence[AuditCheck]) -> str:
    """The audit as a markdown table: check, outcome, numbers, note (report.md and the model card)."""
    points = next((c.numbers["points"] for c in checks if "points" in c.numbers), None)
    lines = [verdict(checks), "", f"On the first {points} test points; robust accuracy in %; each check's white-box "
             "attacks are the evaluation's own at the audit's cheaper settings (numbers name them)." if points else
             "Robust accuracy in %.", "", "| check | outcome | numbers | note |", "|---|---|---|---|"]
    for c in checks:
        outcome = {True: "pass", False: f"**FLAG: {CHECK_FLAGS.get(c.name, 'failed')}**", None: "stated"}[c.passed]
        lines.append(f"| {c.name} | {outcome} | {_flat(c.numbers)} | {c.note} |")
    return "\n".join(lines) + "\n"


def _flat(numbers: dict, prefix: str = "") -> str:
    parts = []
    for k, v in numbers.items():
        if isinstance(v, dict):
            parts.append(f"{prefix}{k}: " + _flat(v).replace("; ", ", "))
        else:
            parts.append(f"{prefix}{k}={v}")
    return "; ".join(parts)


def from_dicts(items: Sequence[dict]) -> list[AuditCheck]:
    """Checks read back from report.json."""
    return [AuditCheck(d["name"], d["passed"], dict(d.get("numbers", {})), d.get("note", "")) for d in items]
