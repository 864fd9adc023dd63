"""Honest scores of a randomised model: per point, the expected accuracy over fresh noise draws, and per point the
strongest (lowest-scoring) of several candidate inputs.

A model at λ > 0 draws fresh weight noise per forward, so one forward pass is one sample of its answer:
:func:`expected_correct` averages ``draws`` of them (a NaN or infinite logit counts as wrong) and can hand back each
draw's batch accuracy for a confidence interval; :func:`strongest` keeps, per point, the candidate with the lowest
score (attacks keep their strongest iterate with it, the headline its worst case).

Example:
    >>> import torch
    >>> model = lambda x: x  # logits = inputs: a point of class 0 is right iff x[0] > x[1]
    >>> x, y = torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0])
    >>> expected_correct(model, x, y, draws=1)
    tensor([1., 0.])
    >>> strongest([(x, torch.tensor([1.0, 0.0])), (x.flip(1), torch.tensor([0.0, 1.0]))])[1]
    tensor([0., 0.])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from floatify.apgd import correct_predictions

__all__ = ["SCORE_DRAWS", "expected_correct", "strongest"]

SCORE_DRAWS = 8  # fresh noise draws per point when scoring a randomised model


@torch.no_grad()
def expected_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int,
                     per_draw: list | None = None) -> torch.Tensor:
    """Per point, the fraction of ``draws`` forward passes (fresh noise each) that classify it right.

    One noise draw is shared by the whole batch in a forward pass, so points are correlated within a
    draw; ``per_draw`` (if given) receives each draw's batch accuracy for an honest confidence interval.

    Example:
        >>> import torch
        >>> from floatify.scoring import expected_correct
        >>> expected_correct(lambda x: x, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]), 2)
        tensor([1., 0.])
    """
    hits = torch.zeros(len(y), device=y.device)
    for _ in range(draws):
        correct = correct_predictions(model(x), y)
        hits += correct
        if per_draw is not None:
            per_draw.append(correct.mean().item())
    return hits / draws


def strongest(candidates: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point, the candidate input with the lowest score (the first on ties).

    Example:
        >>> import torch
        >>> from floatify.scoring import strongest
        >>> strongest([(torch.zeros(2, 1), torch.tensor([1.0, 0.0])), (torch.ones(2, 1), torch.tensor([0.5, 0.5]))])
        (tensor([[1.],
                [0.]]), tensor([0.5000, 0.0000]))
    """
    best, best_score = candidates[0][0].clone(), candidates[0][1].clone()
    for x_c, score in candidates[1:]:
        stronger = score < best_score
        best[stronger] = x_c[stronger]
        best_score = torch.minimum(best_score, score)
    return best, best_score
