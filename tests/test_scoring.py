"""floatify.scoring: a randomised model's per-point expected accuracy (a non-finite logit counted as wrong) and the
strongest candidate per point."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from floatify.scoring import expected_correct, strongest


class _Constant(nn.Module):
    """Every point gets the logits ``row`` (class 0 wins unless the row says otherwise)."""

    def __init__(self, row: list[float]):
        super().__init__()
        self.row = torch.tensor(row)

    def forward(self, x):
        return self.row.expand(len(x), -1)


@pytest.mark.parametrize("row, right", [  # logits of every point (all labelled 0), counted right?
    ([float("nan")] * 3, False),  # argmax of a NaN row is 0: a naive scorer says 100%
    ([float("inf"), 0.0, 0.0], False),
    ([1.0, float("-inf"), 0.0], False),
    ([1.0, 0.0, 0.0], True),
])
def test_a_non_finite_logit_counts_as_wrong(row, right):
    y = torch.zeros(5, dtype=torch.long)
    per_draw: list[float] = []
    hits = expected_correct(_Constant(row), torch.rand(5, 3), y, 2, per_draw)
    assert torch.equal(hits, torch.full((5,), float(right)))
    assert per_draw == [float(right)] * 2  # one batch accuracy per draw


@pytest.mark.parametrize("scores, picked", [  # per candidate, per point scores -> the candidate kept per point
    ([[1.0, 0.0], [0.5, 0.5]], [1, 0]),
    ([[0.5, 0.5], [0.5, 0.25], [0.125, 0.25]], [2, 1]),  # ties keep the first
])
def test_strongest_keeps_per_point_the_lowest_score(scores, picked):
    candidates = [(torch.full((2, 1), float(k)), torch.tensor(s)) for k, s in enumerate(scores)]
    points, best = strongest(candidates)
    assert points.flatten().tolist() == [float(k) for k in picked]
    assert best.tolist() == [scores[k][i] for i, k in enumerate(picked)]
