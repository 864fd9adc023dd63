"""What the audit's checks (:mod:`floatify.audit_checks`) share: the audited points and what the evaluation
measured on them (:class:`Subject`), the budget sweep built on it (:func:`sweep`), and what the audit costs
(:class:`PassCounter`).

:class:`Subject` reuses what the evaluation measured and attacks only the points whose outcome can still change:
eps × 1 is the evaluation's own white-box columns (:meth:`Subject.evaluations`), and :meth:`Subject.only` runs an
attack on the points a mask leaves alive, counting the point-attacks run and skipped.

Example:
    >>> import torch, floatify
    >>> from floatify.attacks import AttackSpec
    >>> from floatify.audit import AuditConfig
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))).eval()
    >>> x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))
    >>> apgd = AttackSpec("apgd-ce", steps=2)
    >>> s = Subject(model, x, y, apgd.eps, (0.0,), [apgd], [apgd], {}, {}, "custom", 1, 3, AuditConfig(steps=2))
    >>> sweep(s)
    >>> sorted(s.sweep[0.0]), s.attacked + s.skipped == 8 * 5  # 8 points at 5 multipliers, 1 attack each
    ([0.5, 1.0, 2.0, 4.0, 8.0], True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from floatify.attacks import AttackSpec, attack_and_score
from floatify.audit import AuditConfig
from floatify.headline import worst_case
from floatify.scoring import strongest

__all__ = ["PassCounter", "Subject", "sweep"]


class PassCounter:
    """Counts a model's forwards, in points, while active, and those with an input gradient (a backward follows).

    Example:
        >>> import torch
        >>> from floatify.audit_subject import PassCounter
        >>> net = torch.nn.Linear(3, 2)
        >>> with PassCounter(net) as counter:
        ...     _ = net(torch.rand(4, 3))
        ...     net(torch.rand(4, 3, requires_grad=True)).sum().backward()
        >>> counter.forwards, counter.backwards, counter.passes(4)
        (8, 4, 4.0)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model, self.forwards, self.backwards = model, 0, 0

    def __enter__(self) -> PassCounter:
        self._hook = self.model.register_forward_hook(self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()

    def _count(self, module: nn.Module, inputs: tuple, output: object) -> None:
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        rows = x.shape[0] if x is not None and x.dim() else 1
        self.forwards += rows
        if x is not None and x.requires_grad and torch.is_grad_enabled():
            self.backwards += rows

    def passes(self, points: int) -> float:
        """Forwards over ``points`` points, a backward counted as two forwards."""
        return (self.forwards + 2 * self.backwards) / points


@dataclass
class Subject:
    """What the checks share: the model, the audited points, the evaluation's attacks, per-point scores and
    adversarial inputs, and what the audit measured and spent so far."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    lams: tuple[float, ...]
    attacks: list[AttackSpec]  # the evaluation's
    white_box: list[AttackSpec]  # the evaluation's gradient attacks on the noisy model
    evaluated: dict[float, dict[str, torch.Tensor]]  # λ -> column label -> per-point score on the subset
    adversarial: dict[float, dict[str, torch.Tensor]]  # λ -> column label -> its adversarial inputs there
    preset: str
    score_draws: int
    classes: int
    config: AuditConfig
    fold: dict[float, dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None  # receives attacks to fold
    sweep: dict[float, dict[float, torch.Tensor]] = field(default_factory=dict)  # λ -> multiplier -> score
    white: dict[float, tuple[torch.Tensor, torch.Tensor, list]] = field(default_factory=dict)  # λ -> eps × 1
    reused: set[float] = field(default_factory=set)  # the λ whose eps × 1 is the evaluation's own attacks
    attacked: int = 0  # point-attacks run (one attack on one point: 1)
    skipped: int = 0  # point-attacks not run: reused from the evaluation, or on points already broken
    started: float = 0.0  # time.perf_counter() when the audit began (each check's cost states its seconds)

    def cheap(self, spec: AttackSpec, eps: float, noise: bool = True) -> AttackSpec:
        """``spec`` at ``eps`` with the audit's steps and draws: at most the config's, and at most half the
        evaluation's draws."""
        # reason: eps × 1, the number the black-box attacks are held against, is the evaluation's own attack; the
        # other budgets test a trend, and half the draws keep the audit within the evaluation's model passes
        draws = max(min(spec.eot_draws // 2, self.config.eot_draws), spec.handler.min_eot_draws, 1)
        step = None if spec.step_size is None else spec.step_size * eps / spec.eps
        return dataclasses.replace(spec, eps=eps, steps=min(spec.steps, self.config.steps), eot_draws=draws,
                                   step_size=step, noise=noise, label="")

    def only(self, alive: torch.Tensor | None, points: torch.Tensor, score: torch.Tensor, times: int,
             attack: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``attack(x, y)`` (``times`` attacks) on the points of the mask ``alive`` (None: all); the others keep
        ``points`` and ``score``."""
        alive = torch.ones_like(self.y, dtype=torch.bool) if alive is None else alive
        n = int(alive.sum())
        self.attacked, self.skipped = self.attacked + n * times, self.skipped + (len(self.y) - n) * times
        points, score = points.clone(), score.clone()
        if n:
            points[alive], score[alive] = attack(self.x[alive], self.y[alive])
        return points, score

    def ensemble(self, lam: float, eps: float, noise: bool = True, alive: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Per point, the worst case over the cheap white-box attacks at ``eps`` (re-scored): its inputs, its score
        and the attacks' own; only on the points of the mask ``alive``, the others keep the clean input and score 0
        (broken already; the attacks' own then hold the attacked points only)."""
        found: list = []

        def attack(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # reason: the candidates' scores only pick the worst per point (a few draws do); worst_case re-scores
            # the picked points with score_draws fresh draws, so the reported number stays unbiased
            select = min(self.score_draws, 2)
            found.extend(attack_and_score(self.model, self.cheap(s, eps, noise), x, y, lam, select, self.classes)
                         for s in self.white_box)
            if not noise:  # reason: a deterministic model: the minimum of exact scores is exact
                return strongest(found)
            return worst_case(self.model, found, x, y, lam, self.score_draws)[:2]

        zero = torch.zeros(len(self.y), device=self.x.device)
        return (*self.only(alive, self.x, zero, len(self.white_box), attack), found)

    def evaluations(self, lam: float) -> tuple[torch.Tensor, torch.Tensor, list] | None:
        """eps × 1 as the evaluation measured it: the worst case over its white-box columns' adversarial inputs
        (re-scored as :meth:`ensemble` does); None where it did not keep them."""
        scores, points = self.evaluated.get(lam, {}), self.adversarial.get(lam, {})
        labels = [a.label for a in self.white_box]
        if not all(label in scores and label in points for label in labels):
            return None
        found = [(points[label], scores[label]) for label in labels]
        self.skipped += len(self.y) * len(labels)
        self.reused.add(lam)
        return (*worst_case(self.model, found, self.x, self.y, lam, self.score_draws)[:2], found)

    def column(self, lam: float, kind: str, noise: bool = True) -> list[AttackSpec]:
        """The evaluation's attacks of ``kind`` (any attack: "") it ran at ``lam`` and kept the inputs of."""
        return [a for a in self.attacks if (a.kind == kind or not kind) and a.handler.is_attack and a.noise == noise
                and a.label in self.evaluated.get(lam, {}) and a.label in self.adversarial.get(lam, {})]

    def at_eps(self, lam: float, multiplier: float) -> torch.Tensor:
        return self.sweep[lam][multiplier]


def sweep(s: Subject) -> None:
    """Per λ and eps multiplier, per-point robust accuracy; eps × 1 the evaluation's own where it kept its inputs."""
    multipliers = s.config.multipliers
    for lam in s.lams:
        s.white[lam] = s.evaluations(lam) or s.ensemble(lam, s.eps)
        row = {m: s.ensemble(lam, s.eps * m)[1] for m in multipliers if m < 1}
        row[1.0] = alive = s.white[lam][1]
        for m in (m for m in multipliers if m > 1):
            # reason: a point broken at a smaller eps stays broken: its adversarial input lies inside the larger ball
            row[m] = alive = s.ensemble(lam, s.eps * m, alive=alive > 0)[1]
        s.sweep[lam] = row
