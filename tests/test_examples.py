"""examples/: the serving example resolves what a request asks for (a λ, a level, a constraint) from the report."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from floatify.report import Report, Score

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _serve():
    spec = importlib.util.spec_from_file_location("serve_example", EXAMPLES / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT = Report([0.0, 0.5, 1.0], {"clean": "no attack", "pgd": "PGD"}, {
    "0.0": {"clean": Score(0.99, 0.0, 100), "pgd": Score(0.05, 0.0, 100)},
    "0.5": {"clean": Score(0.98, 0.0, 100), "pgd": Score(0.40, 0.0, 100)},
    "1.0": {"clean": Score(0.95, 0.0, 100), "pgd": Score(0.60, 0.0, 100)}}, headline="pgd")

# request -> the λ it resolves to (or the fragment of the error)
REQUESTS = [
    ("0.25", 0.25),
    ("clean", 0.0),
    ("robust", 1.0),
    ("balanced", 0.5),  # the most robust λ losing at most 1 point of clean accuracy
    ("min_robust=40", 0.5),
    ("max_clean_drop=4", 1.0),
    ("fastest", "unknown request 'fastest'"),
    ("min_robust=99", "no λ"),
]


@pytest.mark.parametrize("request_, want", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_requests_resolve_from_the_report(request_, want):
    serve = _serve()
    if isinstance(want, str):
        with pytest.raises(ValueError, match=want):
            serve.resolve_lam(request_, REPORT)
    else:
        assert serve.resolve_lam(request_, REPORT) == pytest.approx(want)


def test_levels_need_a_report():
    with pytest.raises(ValueError, match="needs the model's report"):
        _serve().resolve_lam("balanced", None)
