"""The headline robust accuracy: per point, the worst case over every attack on the noisy model, clean input included.

:class:`Headline` says which columns of an evaluation it takes (the attacks on the noisy model, and clean),
:func:`worst_case` measures it on a batch (the lowest-scoring candidate per point, re-scored with fresh draws on a
randomised model) and :func:`headline_score` keeps the report's cell never above any of its member columns.
:func:`floatify.evaluate` puts it first among the robust columns.

Example:
    >>> from floatify.attacks import AttackSpec
    >>> from floatify.report import Score
    >>> headline = Headline.of([AttackSpec("clean"), AttackSpec("fgsm"), AttackSpec("pgd", steps=3),
    ...                         AttackSpec("pgd", steps=3, noise=False)])  # noise off: a different model, left out
    >>> headline.label, headline.attack_labels
    ('worst case (2 attacks)', ['fgsm', 'pgd-3'])
    >>> headline_score(Score(0.5, 0.05, 100), [Score(0.9, 0.03, 100), Score(0.4, 0.05, 100)]).mean
    0.4
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from floatify.attacks import AttackSpec
from floatify.context import lam as at_lam
from floatify.report import Score
from floatify.scoring import SCORE_DRAWS, expected_correct, strongest

__all__ = ["Headline", "worst_case", "headline_score"]


@dataclass(frozen=True)
class Headline:
    """The headline column: per point, the worst case over every attack on the noisy model, clean input included.

    Which attacks it takes, its label and its description; :func:`worst_case` measures it.
    """

    members: tuple[AttackSpec, ...]  # the columns in the worst case (the clean column too, where there is one)

    @classmethod
    def of(cls, attacks: Sequence[AttackSpec]) -> Headline | None:
        members = tuple(a for a in attacks if a.handler.in_headline(a))
        return cls(members) if any(a.handler.is_attack for a in members) else None

    @property
    def attack_labels(self) -> list[str]:
        return [a.label for a in self.members if a.handler.is_attack]

    @property
    def label(self) -> str:
        return f"worst case ({len(self.attack_labels)} attacks)"

    def describe(self) -> str:
        return (f"per point, the worst case over {', '.join(self.attack_labels)} (and the clean input), picked on "
                f"their scores and re-scored with fresh noise draws; where one of those columns is lower, that "
                f"column, so it is never above any of them (each candidate scores an attack actually run: taking "
                f"the lowest biases it at most slightly low; exact on a deterministic model): the headline robust "
                f"accuracy")


def worst_case(model: nn.Module, candidates: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
               y: torch.Tensor, lam: float, score_draws: int = SCORE_DRAWS
               ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """The headline's measurement: per point the candidate with the lowest score, the clean input included.

    ``candidates`` are ``(points, per-point score)`` pairs from :func:`~floatify.attacks.attack_and_score` at
    ``lam``. A randomised model (λ > 0) re-scores the worst points with ``score_draws`` fresh draws. Returns the
    worst points, their score and the per-draw batch accuracies of that score.

    reason: the minimum over several noisy estimates is biased low (and picking by it is a selection);
    scoring the selected points afresh gives the expected accuracy of a fixed set of adversarial inputs.

    Example:
        >>> import torch, floatify
        >>> from floatify.attacks import AttackSpec, attack_and_score
        >>> from floatify.headline import worst_case
        >>> model = floatify.convert(torch.nn.Linear(4, 3)).eval()
        >>> x, y = torch.rand(6, 4), torch.randint(0, 3, (6,))
        >>> found = [attack_and_score(model, AttackSpec(kind, steps=2), x, y, 0.0) for kind in ("fgsm", "pgd")]
        >>> points, score, _ = worst_case(model, found, x, y, 0.0)
        >>> bool((score <= torch.minimum(found[0][1], found[1][1])).all())
        True
    """
    if not any(torch.equal(c[0], x) for c in candidates):
        with at_lam(lam):
            candidates = [(x, expected_correct(model, x, y, score_draws if lam > 0 else 1)), *candidates]
    worst, worst_score = strongest(candidates)
    batch_draws: list[float] = []
    if lam > 0:
        with at_lam(lam):
            worst_score = expected_correct(model, worst, y, score_draws, batch_draws)
    else:
        batch_draws.append(worst_score.mean().item())
    return worst, worst_score, batch_draws


def headline_score(worst: Score | None, members: Sequence[Score | None]) -> Score | None:
    """The headline cell: the per-point worst case's score, or the lowest of its member columns where that is lower.

    reason: the worst case is re-scored with fresh draws, so on a randomised model it can land above a member
    column by noise alone (at eps 0 every candidate is the clean input). Each candidate is an unbiased score of
    an attack actually run; the headline takes the strongest, so it is never above clean or any attack it is the
    worst case of, and biased at most slightly low (the minimum of noisy estimates).

    Example:
        >>> from floatify.headline import headline_score
        >>> from floatify.report import Score
        >>> headline_score(Score(0.30, 0.05, 100), [Score(0.9, 0.03, 100), Score(0.28, 0.05, 100)]).mean
        0.28
    """
    candidates = [s for s in (worst, *members) if s is not None]
    return min(candidates, key=lambda s: s.mean) if candidates else None
