"""The audit's six checks and how they run (:mod:`floatify.audit` has the settings and the outcome,
:mod:`floatify.audit_tap` what an evaluation hands them).

:func:`audit` runs the budget sweep (the evaluation's own white-box attacks at the audit's cheaper settings, per
λ and eps multiplier), and from it and a few more attacks the six checks of :data:`CHECKS`: budget sweep, unbounded
attack, black-box vs white-box (Square, transfer), convergence, randomness and loss landscape, each an
:class:`~floatify.audit.AuditCheck`.

What the evaluation measured is reused, and an attack runs only where its outcome can still change (AutoAttack's
rule); each is exact or errs towards flagging:

* eps × 1 is the evaluation's own white-box columns: their adversarial inputs, re-scored as one worst case per
  point (the sweep's ×1, the loss landscape's attacks, the black-box check's white-box side);
* above × 1 the sweep attacks only the points the previous multiplier left unbroken (score > 0): a broken point's
  adversarial input lies inside the larger ball, so it keeps score 0; the unbounded attack likewise, when its budget
  holds the largest multiplier's (× < 1 attacks every point);
* Square, and a transfer attack the evaluation did not run, attack only the points the white-box worst case left
  unbroken: on a broken point they cannot be stronger (their gap is 0 there);
* the transfer and noise-off attacks are the evaluation's columns where it ran them;
* the convergence check's doubled attack attacks only the points its column left unbroken: on a broken point it
  cannot go lower, so skipping it can only raise the drop measured.

Each check's numbers end with its ``cost``: the point-attacks it ran and skipped (reused or already broken) and its
model passes, in forwards of the audited points (a forward with its backward counts 3,
:class:`~floatify.audit_subject.PassCounter`).

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
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from floatify.attacks import AttackSpec, attack_and_score
from floatify.audit import AuditCheck, AuditConfig
from floatify.audit_subject import PassCounter, Subject, sweep
from floatify.context import lam as at_lam
from floatify.headline import worst_case
from floatify.scoring import expected_correct

__all__ = ["audit", "CHECKS", "check_budget_sweep", "check_unbounded", "check_black_box",
           "check_convergence", "check_randomness", "check_loss_landscape"]


def _mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% CI half-width of per-point values (a paired difference, or scores)."""
    n = values.numel()
    sd = values.float().std(unbiased=True).item() if n > 1 else 0.0
    return values.float().mean().item(), 1.96 * sd / math.sqrt(n)


def _pct(value: float) -> float:
    return round(100 * value, 2)


def check_budget_sweep(s: Subject) -> AuditCheck:
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
    if s.reused:
        numbers["x1_attacks"] = [a.label for a in s.white_box]  # reason: ×1 is the evaluation's own columns
    note = "; ".join(problems) or "falls monotonically and reaches chance at every audited λ"
    return AuditCheck("budget sweep", not problems, numbers, note)


def check_unbounded(s: Subject) -> AuditCheck:
    """With a budget of ``unbounded_eps`` the attack must fool at least ``min_success`` of the points."""
    numbers: dict[str, Any] = {}
    problems: list[str] = []
    top = s.config.multipliers[-1]
    for lam in s.lams:
        # reason: a point broken at eps × the largest multiplier stays broken with a budget holding that ball
        alive = s.at_eps(lam, top) > 0 if s.config.unbounded_eps >= s.eps * top else None
        score = s.ensemble(lam, s.config.unbounded_eps, alive=alive)[1]
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


def _square(s: Subject, lam: float) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Square (torchattacks) at ``lam``: ``attack(x, y)`` giving its points and their score over fresh draws."""
    import torchattacks

    randomised = lam > 0
    target = _EOTLogits(s.model, s.config.square_draws if randomised else 1).eval()

    def attack(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), at_lam(lam):
            # reason: torchattacks' Square reseeds the global RNG; the fork restores it
            x_adv = torchattacks.Square(target, eps=s.eps, n_queries=s.config.square_queries, seed=0)(x, y)
        with at_lam(lam):
            return x_adv, expected_correct(s.model, x_adv, y, s.score_draws if randomised else 1)

    return attack


def _black_box(s: Subject, lam: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Square, and at λ > 0 the transfer attack (the evaluation's column where it ran one), at ``lam``."""
    points, white = s.white[lam][:2]
    # reason: on a point the white-box worst case broke (score 0) no attack can be stronger: its gap is 0, so
    # the attack runs only where it can still beat white-box, and the others keep the white-box inputs and score
    alive = white > 0
    found = {"square": s.only(alive, points, white, 1, _square(s, lam))}
    if lam > 0:
        evaluated = s.column(lam, "transfer")
        if evaluated:
            s.skipped += len(s.y)
            found["transfer"] = s.adversarial[lam][evaluated[0].label], s.evaluated[lam][evaluated[0].label]
        else:
            spec = AttackSpec("transfer", s.eps, s.config.steps)
            found["transfer"] = s.only(alive, points, white, 1, lambda x, y: attack_and_score(
                s.model, spec, x, y, lam, s.score_draws, s.classes))
    return found


def check_black_box(s: Subject) -> AuditCheck:
    """Square and the transfer attack must not beat the white-box ensemble by more than the CI (flagged: obfuscated
    gradients); a stronger one the evaluation's headline lacks goes to ``s.fold`` (the headline takes it there)."""
    numbers: dict[str, Any] = {}
    problems: list[str] = []
    missing: set[str] = set()  # stronger black-box attacks the evaluation's headline does not hold
    for lam in s.lams:
        white = s.at_eps(lam, 1.0)
        found = _black_box(s, lam)
        row = {"white_box_pct": _pct(white.mean().item())}
        for name, (_, score) in found.items():
            gap, ci = _mean_ci(white - score)
            row[f"{name}_pct"] = _pct(score.mean().item())
            if gap > ci and gap > 0:
                problems.append(f"λ={lam:g}: {name} {_pct(score.mean().item()):g}% beats white-box "
                                f"{_pct(white.mean().item()):g}% (CI ±{_pct(ci):g})")
                # reason: a transfer attack the evaluation ran is already one of the headline's worst-case members
                if not s.column(lam, name):
                    missing.add(name)
                    if s.fold is not None:
                        s.fold.setdefault(lam, {})[name] = found[name]
        candidates = [*found.values(), *s.white[lam][2]]
        rescored = worst_case(s.model, candidates, s.x, s.y, lam, s.score_draws)[1].mean().item()
        # reason: as the headline (floatify.headline): a re-scored worst case is never above an attack it is the
        # worst of
        row["with_black_box_pct"] = _pct(min([rescored, white.mean().item(),
                                              *(score.mean().item() for _, score in found.values())]))
        numbers[f"lam={lam:g}"] = row
    numbers["square"] = f"{s.config.square_queries} queries × {s.config.square_draws} draws (λ > 0)"
    return AuditCheck("black-box vs white-box", not problems, numbers, _black_box_note(problems, missing, s))


def _black_box_note(problems: list[str], missing: set[str], s: Subject) -> str:
    if not problems:
        return "no black-box attack beats the white-box ensemble"
    lacks = " and ".join(sorted(missing))
    if missing and s.fold is not None:
        return ("; ".join(problems) + f": the headline, which lacked {lacks}, takes it into its worst case on the "
                f"{len(s.y)} audited points (the report's notes say where)")
    if missing:
        return ("; ".join(problems) + f": the headline, which lacks {lacks}, overstates robustness; quote "
                f"with_black_box_pct, the worst case with it")
    return ("; ".join(problems) + ": the white-box gradients alone understate the attack; the headline already "
            "takes the stronger attack's worst case, so it stands")


def _doubled(spec: AttackSpec) -> AttackSpec:
    return dataclasses.replace(spec, steps=2 * spec.steps, eot_draws=2 * spec.eot_draws, label="")


def check_convergence(s: Subject) -> AuditCheck:
    """The evaluation's strongest iterative attack, with twice its iterations and draws, at the most randomised λ."""
    lam = s.lams[-1]  # reason: where EOT matters most; at λ = 0 doubling draws changes nothing
    columns = s.evaluated.get(lam, {})
    iterative = [a for a in s.white_box if a.label in columns and _doubled(a).label != a.label]
    if not iterative:
        return AuditCheck("convergence", None, {}, "the evaluation ran no iterative attack on the noisy model")
    spec = min(iterative, key=lambda a: columns[a.label].mean().item())
    twice, evaluated = _doubled(spec), columns[spec.label]
    # reason: a point the column broke (score 0) cannot go lower: skipping it can only raise the drop measured
    _, score = s.only(evaluated > 0, s.x, evaluated, 1, lambda x, y: attack_and_score(
        s.model, twice, x, y, lam, s.score_draws, s.classes))
    drop, ci = _mean_ci(evaluated - score)
    numbers = {"lam": lam, "attack": spec.label, "evaluated_pct": _pct(evaluated.mean().item()),
               "doubled": twice.label, "doubled_pct": _pct(score.mean().item()), "drop_points": _pct(drop),
               "ci_points": _pct(ci)}
    if drop <= max(s.config.tolerance, ci):
        return AuditCheck("convergence", True, numbers, f"{twice.label} lowers {spec.label} by {_pct(drop):g} points "
                                                        f"at λ={lam:g} (allowed {_pct(max(s.config.tolerance, ci)):g})")
    fix = ("use the strong preset (--eval-attacks strong)" if s.preset != "strong" else
           f"evaluate with --eval-steps {twice.steps} --eot-draws {twice.eot_draws}")
    return AuditCheck("convergence", False, numbers, f"{twice.label} lowers {spec.label} by {_pct(drop):g} points at "
                                                     f"λ={lam:g}: not converged; {fix}")


def _noise_off(s: Subject, lam: float) -> tuple[torch.Tensor, list[str]]:
    """Per point, the noise-off model's robust accuracy at ``lam`` (the evaluation's noise-off columns where it ran
    any; else the cheap white-box attacks with the noise off) and the attacks it comes from."""
    labels = [a.label for a in s.attacks if not a.noise and a.handler.is_attack and a.label in s.evaluated.get(lam, {})]
    if labels:  # reason: a deterministic model: the minimum of exact scores is exact
        s.skipped += len(s.y) * len(s.white_box)
        return torch.stack([s.evaluated[lam][label] for label in labels]).amin(0), labels
    return s.ensemble(lam, s.eps, noise=False)[1], [s.cheap(a, s.eps, noise=False).label for a in s.white_box]


def check_randomness(s: Subject) -> AuditCheck:
    """The robust accuracy the weight noise adds: the noisy model against the same λ with the noise off (stated)."""
    numbers: dict[str, Any] = {}
    parts: list[str] = []
    for lam in (v for v in s.lams if v > 0):
        off, attacks = _noise_off(s, lam)
        noisy = s.at_eps(lam, 1.0).mean().item()
        numbers[f"lam={lam:g}"] = {"noisy_pct": _pct(noisy), "noise_off_pct": _pct(off.mean().item()),
                                   "gap_points": _pct(noisy - off.mean().item()), "noise_off_attacks": attacks}
        parts.append(f"λ={lam:g}: {_pct(noisy - off.mean().item()):+g} points from the noise")
    return AuditCheck("randomness", None, numbers, "; ".join(parts) or "no randomised λ audited")


def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    """Per point, the cross-entropy averaged over ``draws`` noise draws, the same draws for every call (seeded)."""
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.no_grad():
        torch.manual_seed(seed)  # reason: common random numbers: a loss change is the input's, not the noise's
        return torch.stack([F.cross_entropy(model(x), y, reduction="none") for _ in range(draws)]).mean(0)


def check_loss_landscape(s: Subject) -> AuditCheck:
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
                                for p, _ in s.white[lam][2]]).amax(0)
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


def _costed(s: Subject, counter: PassCounter) -> list[AuditCheck]:
    """The checks, each with its cost (the sweep's in the budget sweep's): point-attacks run and skipped, passes."""
    checks, start = [], s.started
    for check in CHECKS:
        result = check(s)
        cost = {"point_attacks": s.attacked, "skipped": s.skipped, "model_passes": round(counter.passes(len(s.y)), 1),
                "seconds": round(time.perf_counter() - start, 2)}
        checks.append(dataclasses.replace(result, numbers={**result.numbers, "cost": cost}))
        s.attacked = s.skipped = counter.forwards = counter.backwards = 0
        start = time.perf_counter()
    return checks


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[AttackSpec],
          evaluated: dict[float, dict[str, torch.Tensor]], config: AuditConfig, *, preset: str = "custom",
          score_draws: int = 8, num_classes: int | None = None,
          adversarial: dict[float, dict[str, torch.Tensor]] | None = None,
          fold: dict[float, dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None) -> list[AuditCheck]:
    """The six checks on the points ``x, y`` at the λ of ``evaluated`` (per-point scores of the evaluation there).

    :func:`floatify.evaluate` calls this with ``audit=`` (:class:`floatify.audit_tap.SubsetTap`); ``attacks``
    are the evaluation's and ``adversarial`` its columns' inputs on ``x`` (reused, not re-attacked). ``fold``, if
    given, receives per λ the black-box attacks (inputs, per-point score) that beat the white-box ensemble and
    the evaluation's headline lacks.
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
    subject = Subject(model, x, y, eps, tuple(sorted(evaluated)), list(attacks), white_box, evaluated,
                       adversarial or {}, preset, score_draws, classes, config, fold)
    try:
        with PassCounter(model) as counter:
            subject.started = time.perf_counter()
            sweep(subject)
            return _costed(subject, counter)
    finally:
        model.train(was_training)
