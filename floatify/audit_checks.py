"""The audit's six checks and how an evaluation runs them (:mod:`floatify.audit` has the settings and the outcome).

:class:`SubsetTap` keeps the first :attr:`~floatify.audit.AuditConfig.subset` points of an evaluation as they pass;
:func:`audit` then runs the budget sweep (the evaluation's own white-box attacks at the audit's cheaper settings, per
λ and eps multiplier), and from it and a few more attacks the six checks of :data:`CHECKS`: budget sweep, unbounded
attack, black-box vs white-box (Square, transfer), convergence, randomness and loss landscape, each an
:class:`~floatify.audit.AuditCheck`.

Example:
    >>> import torch, floatify
    >>> from floatify.attacks import AttackSpec
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))
    >>> checks = audit(model, x, y, [AttackSpec("apgd-ce", steps=2)], {0.0: {}},
    ...                AuditConfig(subset=8, steps=2, square_queries=5))
    >>> [check.name for check in checks]
    ['budget sweep', 'unbounded attack', 'black-box vs white-box', 'convergence', 'randomness', 'loss landscape']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from floatify.attacks import AttackSpec, attack_and_score
from floatify.audit import AuditCheck, AuditConfig, audit_lams
from floatify.context import lam as at_lam
from floatify.headline import worst_case
from floatify.scoring import expected_correct

if TYPE_CHECKING:
    from floatify.evaluate import EvalConfig

__all__ = ["SubsetTap", "audit", "CHECKS", "check_budget_sweep", "check_unbounded", "check_black_box",
           "check_convergence", "check_randomness", "check_loss_landscape"]


class SubsetTap:
    """Passes batches through and keeps the first ``subset`` points (the audited ones); checks the class count.

    :func:`floatify.evaluate` with ``audit=`` makes one (:meth:`of`) and runs the audit with :meth:`audit`.
    """

    def __init__(self, model: nn.Module, config: AuditConfig) -> None:
        self.model, self.config, self.subset = model, config, config.subset
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self.kept = 0

    def wrap(self, batches: Iterable) -> Iterator:
        for x, y in batches:
            if self.kept < self.subset and len(y):
                if not self.xs:
                    self._check_classes(x[:1])
                take = min(self.subset - self.kept, len(y))
                self.xs.append(x[:take].detach())
                self.ys.append(y[:take].detach())
                self.kept += take
            yield x, y

    def _check_classes(self, x: torch.Tensor) -> None:
        device = next((p.device for p in self.model.parameters()), x.device)
        with torch.no_grad(), at_lam(0.0):
            classes = self.model(x.to(device)).shape[-1]
        if classes < 2:
            raise ValueError(f"the audit needs a classifier with at least 2 classes, this model has {classes}: "
                             f"chance level and an attack's success are undefined; audit a multi-class model")

    @classmethod
    def of(cls, audit_arg: object, model: nn.Module, eval_config: EvalConfig, loader: object,
           num_classes: int | None) -> SubsetTap | None:
        """The tap for ``evaluate(..., audit=audit_arg)`` (None when it is False), every setting checked first."""
        if audit_arg is False or audit_arg is None:
            return None
        if audit_arg is True:
            audit_arg = AuditConfig()
        if not isinstance(audit_arg, AuditConfig):
            raise TypeError(f"audit must be True, False or a floatify.AuditConfig, got {type(audit_arg).__name__}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"the audit needs a classifier with at least 2 classes, got num_classes={num_classes}")
        specs = eval_config.attack_specs()[1]
        audit_arg.check_sweep(specs[0].eps)
        audit_lams(eval_config.lams, audit_arg)
        dataset = loader if hasattr(loader, "__getitem__") else getattr(loader, "dataset", None)
        try:
            known = len(dataset) if dataset is not None else None  # type: ignore[arg-type]
        except TypeError:  # reason: an IterableDataset has no length; checked after the evaluation instead
            known = None
        if known is not None:
            audit_arg.check_points(min(known, eval_config.limit or known))
        return cls(model, audit_arg)

    def audit(self, run: Any, eval_config: EvalConfig) -> list[AuditCheck]:
        """The checks on the kept points, with the evaluation ``run``'s per-point scores of them."""
        self.config.check_points(self.kept)
        x, y = torch.cat(self.xs), torch.cat(self.ys)
        lams = audit_lams(eval_config.lams, self.config)
        evaluated = {lam: {label: torch.cat(cell.correct)[:self.subset] for label, cell in run.cells[lam].items()
                           if cell.applicable and cell.correct} for lam in lams}
        preset, specs = eval_config.attack_specs()
        device = next((p.device for p in self.model.parameters()), x.device)
        evaluated = {lam: {k: v.to(device) for k, v in row.items()} for lam, row in evaluated.items()}
        return audit(self.model, x.to(device), y.to(device), specs, evaluated, self.config, preset=preset,
                     score_draws=eval_config.score_draws, num_classes=run.num_classes)


@dataclass
class _Subject:
    """What the checks share: the model, the audited points, the evaluation's attacks and per-point scores."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    lams: tuple[float, ...]
    white_box: list[AttackSpec]  # the evaluation's gradient attacks on the noisy model
    evaluated: dict[float, dict[str, torch.Tensor]]  # λ -> column label -> per-point score on the subset
    preset: str
    score_draws: int
    classes: int
    config: AuditConfig
    sweep: dict[float, dict[float, tuple[torch.Tensor, list]]] = field(default_factory=dict)

    def cheap(self, spec: AttackSpec, eps: float, noise: bool = True) -> AttackSpec:
        """``spec`` at ``eps`` with the audit's (at most) steps and draws."""
        draws = max(min(spec.eot_draws, self.config.eot_draws), spec.handler.min_eot_draws)
        step = None if spec.step_size is None else spec.step_size * eps / spec.eps
        return dataclasses.replace(spec, eps=eps, steps=min(spec.steps, self.config.steps), eot_draws=draws,
                                   step_size=step, noise=noise, label="")

    def ensemble(self, lam: float, eps: float, noise: bool = True) -> tuple[torch.Tensor, list]:
        """Per point, the worst case over the cheap white-box attacks at ``eps`` (re-scored), and their points."""
        # reason: the candidates' scores only pick the worst per point (a few draws do); worst_case re-scores the
        # picked points with score_draws fresh draws, so the reported number stays unbiased
        select = min(self.score_draws, 2)
        found = [attack_and_score(self.model, self.cheap(s, eps, noise), self.x, self.y, lam, select, self.classes)
                 for s in self.white_box]
        if not noise:  # reason: a deterministic model: the minimum of exact scores is exact
            return torch.stack([c for _, c in found]).amin(0), found
        return worst_case(self.model, found, self.x, self.y, lam, self.score_draws)[1], found

    def at_eps(self, lam: float, multiplier: float) -> torch.Tensor:
        return self.sweep[lam][multiplier][0]


def _mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% CI half-width of per-point values (a paired difference, or scores)."""
    n = values.numel()
    sd = values.float().std(unbiased=True).item() if n > 1 else 0.0
    return values.float().mean().item(), 1.96 * sd / math.sqrt(n)


def _pct(value: float) -> float:
    return round(100 * value, 2)


def check_budget_sweep(s: _Subject) -> AuditCheck:
    """Robust accuracy must fall monotonically with eps and reach chance (or < 10%) at the largest budget."""
    chance = max(1 / s.classes, 0.10)
    numbers: dict[str, Any] = {}
    problems: list[str] = []
    for lam in s.lams:
        accs = [s.at_eps(lam, m) for m in s.config.multipliers]
        means = [a.mean().item() for a in accs]
        numbers[f"lam={lam:g}"] = {f"x{m:g}": _pct(v) for m, v in zip(s.config.multipliers, means)}
        for m, lo, hi in zip(s.config.multipliers[1:], accs, accs[1:]):
            rise, ci = _mean_ci(hi - lo)
            if rise > ci and rise > 0:
                problems.append(f"λ={lam:g}: rises {_pct(rise):g} points at eps×{m:g}")
        if means[-1] > chance:
            problems.append(f"λ={lam:g}: {_pct(means[-1]):g}% at eps×{s.config.multipliers[-1]:g}, above chance "
                            f"({_pct(chance):g}%)")
    numbers["chance_pct"] = _pct(chance)
    numbers["points"] = len(s.y)
    numbers["attacks"] = [s.cheap(a, s.eps).label for a in s.white_box]
    note = "; ".join(problems) or "falls monotonically and reaches chance at every audited λ"
    return AuditCheck("budget sweep", not problems, numbers, note)


def check_unbounded(s: _Subject) -> AuditCheck:
    """With a budget of ``unbounded_eps`` the attack must fool at least ``min_success`` of the points."""
    numbers: dict[str, Any] = {}
    problems: list[str] = []
    for lam in s.lams:
        score, _ = s.ensemble(lam, s.config.unbounded_eps)
        success = 1 - score.mean().item()
        numbers[f"lam={lam:g}"] = {"success_pct": _pct(success)}
        if success < s.config.min_success:
            problems.append(f"λ={lam:g}: fools {_pct(success):g}% at eps={s.config.unbounded_eps:g}")
    numbers["required_pct"] = _pct(s.config.min_success)
    note = "; ".join(problems) or f"fools ≥ {_pct(s.config.min_success):g}% at every audited λ"
    return AuditCheck("unbounded attack", not problems, numbers, note)


class _EOTLogits(nn.Module):
    """The model's logits averaged over ``draws`` forwards (fresh noise each): what Square queries."""

    def __init__(self, model: nn.Module, draws: int) -> None:
        super().__init__()
        self.model, self.draws = model, draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.draws)]).mean(0)


def _square(s: _Subject, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Square (torchattacks) at ``lam``: its points and their per-point score over fresh draws."""
    import torchattacks

    randomised = lam > 0
    target = _EOTLogits(s.model, s.config.square_draws if randomised else 1).eval()
    with torch.random.fork_rng(devices=[s.x.device] if s.x.is_cuda else []), at_lam(lam):
        # reason: torchattacks' Square reseeds the global RNG; the fork restores it
        x_adv = torchattacks.Square(target, eps=s.eps, n_queries=s.config.square_queries, seed=0)(s.x, s.y)
    with at_lam(lam):
        return x_adv, expected_correct(s.model, x_adv, s.y, s.score_draws if randomised else 1)


def check_black_box(s: _Subject) -> AuditCheck:
    """Square and the transfer attack must not beat the white-box ensemble by more than the CI (flagged: obfuscated
    gradients); the note says whether the evaluation's headline already holds the stronger attack."""
    numbers: dict[str, Any] = {}
    problems: list[str] = []
    missing: set[str] = set()  # stronger black-box attacks the evaluation's headline does not hold
    for lam in s.lams:
        white = s.at_eps(lam, 1.0)
        found = {"square": _square(s, lam)}
        if lam > 0:
            found["transfer"] = attack_and_score(s.model, AttackSpec("transfer", s.eps, s.config.steps), s.x, s.y,
                                                 lam, s.score_draws, s.classes)
        row = {"white_box_pct": _pct(white.mean().item())}
        for name, (_, score) in found.items():
            gap, ci = _mean_ci(white - score)
            row[f"{name}_pct"] = _pct(score.mean().item())
            if gap > ci and gap > 0:
                problems.append(f"λ={lam:g}: {name} {_pct(score.mean().item()):g}% beats white-box "
                                f"{_pct(white.mean().item()):g}% (CI ±{_pct(ci):g})")
                # reason: a transfer attack the evaluation ran is already one of the headline's worst-case members
                if not any(label.startswith(name) for label in s.evaluated.get(lam, {})):
                    missing.add(name)
        candidates = [*found.values(), *s.sweep[lam][1.0][1]]
        rescored = worst_case(s.model, candidates, s.x, s.y, lam, s.score_draws)[1].mean().item()
        # reason: as the headline (floatify.headline): a re-scored worst case is never above an attack it is the
        # worst of
        row["with_black_box_pct"] = _pct(min([rescored, white.mean().item(),
                                              *(score.mean().item() for _, score in found.values())]))
        numbers[f"lam={lam:g}"] = row
    numbers["square"] = f"{s.config.square_queries} queries × {s.config.square_draws} draws (λ > 0)"
    if not problems:
        note = "no black-box attack beats the white-box ensemble"
    elif missing:
        note = ("; ".join(problems) + f": the headline, which lacks {' and '.join(sorted(missing))}, overstates "
                f"robustness; quote with_black_box_pct, the worst case with it")
    else:
        note = ("; ".join(problems) + ": the white-box gradients alone understate the attack; the headline already "
                "takes the stronger attack's worst case, so it stands")
    return AuditCheck("black-box vs white-box", not problems, numbers, note)


def _doubled(spec: AttackSpec) -> AttackSpec:
    return dataclasses.replace(spec, steps=2 * spec.steps, eot_draws=2 * spec.eot_draws, label="")


def check_convergence(s: _Subject) -> AuditCheck:
    """The evaluation's strongest iterative attack, with twice its iterations and draws, at the most randomised λ."""
    lam = s.lams[-1]  # reason: where EOT matters most; at λ = 0 doubling draws changes nothing
    columns = s.evaluated.get(lam, {})
    iterative = [a for a in s.white_box if a.label in columns and _doubled(a).label != a.label]
    if not iterative:
        return AuditCheck("convergence", None, {}, "the evaluation ran no iterative attack on the noisy model")
    spec = min(iterative, key=lambda a: columns[a.label].mean().item())
    twice = _doubled(spec)
    _, score = attack_and_score(s.model, twice, s.x, s.y, lam, s.score_draws, s.classes)
    drop, ci = _mean_ci(columns[spec.label] - score)
    numbers = {"lam": lam, "attack": spec.label, "evaluated_pct": _pct(columns[spec.label].mean().item()),
               "doubled": twice.label, "doubled_pct": _pct(score.mean().item()), "drop_points": _pct(drop),
               "ci_points": _pct(ci)}
    if drop <= max(s.config.tolerance, ci):
        return AuditCheck("convergence", True, numbers, f"{twice.label} lowers {spec.label} by {_pct(drop):g} points "
                                                        f"at λ={lam:g} (allowed {_pct(max(s.config.tolerance, ci)):g})")
    fix = ("use the strong preset (--eval-attacks strong)" if s.preset != "strong" else
           f"evaluate with --eval-steps {twice.steps} --eot-draws {twice.eot_draws}")
    return AuditCheck("convergence", False, numbers, f"{twice.label} lowers {spec.label} by {_pct(drop):g} points at "
                                                     f"λ={lam:g}: not converged; {fix}")


def check_randomness(s: _Subject) -> AuditCheck:
    """The robust accuracy the weight noise adds: the noisy model against the same λ with the noise off (stated)."""
    numbers: dict[str, Any] = {}
    parts: list[str] = []
    for lam in (v for v in s.lams if v > 0):
        off, _ = s.ensemble(lam, s.eps, noise=False)
        noisy = s.at_eps(lam, 1.0).mean().item()
        numbers[f"lam={lam:g}"] = {"noisy_pct": _pct(noisy), "noise_off_pct": _pct(off.mean().item()),
                                   "gap_points": _pct(noisy - off.mean().item())}
        parts.append(f"λ={lam:g}: {_pct(noisy - off.mean().item()):+g} points from the noise")
    return AuditCheck("randomness", None, numbers, "; ".join(parts) or "no randomised λ audited")


def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    """Per point, the cross-entropy averaged over ``draws`` noise draws, the same draws for every call (seeded)."""
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.no_grad():
        torch.manual_seed(seed)  # reason: common random numbers: a loss change is the input's, not the noise's
        return torch.stack([F.cross_entropy(model(x), y, reduction="none") for _ in range(draws)]).mean(0)


def check_loss_landscape(s: _Subject) -> AuditCheck:
    """The share of points whose loss no white-box attack at eps increased: a stalled attack, flagged above
    ``max_stalled`` (the cross-entropy gives no gradient there, whatever the ensemble's other losses do)."""
    numbers: dict[str, Any] = {}
    parts: list[str] = []
    worst = 0.0
    for lam in s.lams:
        draws = s.score_draws if lam > 0 else 1
        with at_lam(lam):
            start = _mean_loss(s.model, s.x, s.y, draws, seed=0)
            gain = torch.stack([_mean_loss(s.model, p, s.y, draws, seed=0) - start
                                for p, _ in s.sweep[lam][1.0][1]]).amax(0)
        stalled = (torch.nan_to_num(gain, nan=0.0) <= 1e-6 * (1 + start.abs())).float().mean().item()
        numbers[f"lam={lam:g}"] = {"stalled_pct": _pct(stalled)}
        parts.append(f"λ={lam:g}: {_pct(stalled):g}% stalled")
        worst = max(worst, stalled)
    passed = worst <= s.config.max_stalled
    if not passed:
        parts.append(f"above {_pct(s.config.max_stalled):g}%: the cross-entropy gives these points no gradient; "
                     f"trust the number only if a scale-free attack (apgd-dlr, the strong preset) is in the ensemble")
    return AuditCheck("loss landscape", passed, numbers, "; ".join(parts))


CHECKS = (check_budget_sweep, check_unbounded, check_black_box, check_convergence, check_randomness,
          check_loss_landscape)


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[AttackSpec],
          evaluated: dict[float, dict[str, torch.Tensor]], config: AuditConfig, *, preset: str = "custom",
          score_draws: int = 8, num_classes: int | None = None) -> list[AuditCheck]:
    """The six checks on the points ``x, y`` at the λ of ``evaluated`` (per-point scores of the evaluation there).

    :func:`floatify.evaluate` calls this with ``audit=``; ``attacks`` are the evaluation's.
    """
    eps = attacks[0].eps
    config.check_sweep(eps)
    white_box = [a for a in attacks if a.noise and (a.handler.eot or a.handler.trains)]
    with torch.no_grad(), at_lam(0.0):
        classes = num_classes or model(x[:1]).shape[-1]
    if not white_box:  # reason: an evaluation without a gradient attack is audited with the strong preset's
        white_box = [AttackSpec("apgd-ce", eps, config.steps, eot_draws=config.eot_draws)]
        if classes >= 3:
            white_box.append(AttackSpec("apgd-dlr", eps, config.steps, eot_draws=config.eot_draws))
    was_training = model.training
    model.eval()
    subject = _Subject(model, x, y, eps, tuple(sorted(evaluated)), white_box, evaluated, preset, score_draws, classes,
                       config)
    try:
        subject.sweep = {lam: {m: subject.ensemble(lam, eps * m) for m in config.multipliers} for lam in subject.lams}
        if 1.0 not in config.multipliers:
            for lam in subject.lams:
                subject.sweep[lam][1.0] = subject.ensemble(lam, eps)
        return [check(subject) for check in CHECKS]
    finally:
        model.train(was_training)
