"""floatify.headline: the per-point worst case over the attacks (clean input included), re-scored afresh on a
randomised model, and the headline cell never above any of its member columns."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
import torch.nn as nn
from hypothesis import given, settings

import floatify
from floatify.evaluate import _score
from floatify.headline import headline_score, worst_case
from floatify.report import Score


def identity_model():
    model = floatify.convert(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    return model.eval()  # logits = x: a point of class 0 is right iff x[0] > x[1]


def test_worst_case_takes_per_point_the_lowest_scoring_candidate_clean_input_included():
    model = identity_model()
    x, y = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]), torch.zeros(3, dtype=torch.long)  # point 2 is wrong
    a = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4]])  # breaks point 0 (and moves point 2 to a right answer)
    b = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])  # breaks point 1
    found = [(a, torch.tensor([0.0, 1.0, 1.0])), (b, torch.tensor([1.0, 0.0, 1.0]))]  # each one's own score
    points, score, draws = worst_case(model, found, x, y, 0.0)
    assert torch.equal(score, torch.zeros(3)) and draws == [0.0]
    assert torch.equal(points, torch.stack([a[0], b[1], x[2]]))  # point 2: the clean input beats both attacks
    points, score, draws = worst_case(model, found, x, y, 1.0, score_draws=5)  # randomised: re-scored afresh
    assert len(draws) == 5 and torch.equal(points, torch.stack([a[0], b[1], x[2]]))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_property_headline_score_is_at_most_every_member_from_per_point_correctness(data):
    points, draws = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 8))
    per_point = st.lists(st.integers(0, draws), min_size=points, max_size=points)

    def column() -> Score:
        hits = torch.tensor(data.draw(per_point), dtype=torch.float32) / draws
        batch_draws = data.draw(st.lists(st.floats(0, 1), min_size=draws, max_size=draws))
        return _score(hits, [(points, batch_draws)])

    members = [column() for _ in range(data.draw(st.integers(1, 4)))]
    members += [None] * data.draw(st.integers(0, 1))  # an attack not applicable at this λ
    worst = column()
    head = headline_score(worst, members)
    assert head is not None and head.n == points
    assert head.mean <= worst.mean and all(head.mean <= m.mean for m in members if m is not None)
    assert head in [worst, *members]  # one of the measured candidates, its interval with it
    assert 0.0 <= head.low <= head.mean <= head.high <= 1.0
