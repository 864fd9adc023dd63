"""The report: its columns' meanings, JSON round trips and choosing λ from a constraint."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floatify.report import Report, Score


def _report(**kw):
    score = {"0.0": Score(0.9, 0.01, 100), "1.0": Score(0.6, 0.02, 100)}
    worse = {"0.0": Score(0.2, 0.01, 100), "1.0": Score(0.1, 0.02, 100)}
    labels = {"no attack": score, "off": worse, "pgd": {"0.0": Score(0.5, 0.01, 100), "1.0": Score(0.4, 0.02, 100)}}
    scores = {v: {label: col[v] for label, col in labels.items()} for v in ("0.0", "1.0")}
    return Report([0.0, 1.0], {k: k for k in labels}, scores, {"eps": "0.1"}, **kw)


def test_column_meaning_is_stored_not_read_off_labels():
    report = _report(clean_label="no attack", noise_off=["off"])
    # 'off' attacks the noise-off model: not the robust column, even though it is the lowest
    assert report.robust_label() == "pgd" and report.columns()[0] == "no attack"
    assert "clean accuracy 90.0% → 60.0%" in report.dial_summary()
    again = Report.from_json(report.to_json())
    assert again == report and again.noise_off == ["off"] and again.clean_label == "no attack"
    assert _report(clean_label=None).dial_summary() == ""


def test_reports_written_before_column_meanings_were_stored_still_load():
    report = _report(clean_label="no attack")
    old = json.loads(report.to_json())
    del old["clean_label"], old["noise_off"]
    old["attacks"] = {"clean": "no attack", "pgd (noise off)": "x"}
    old["scores"] = {v: {"clean": row["no attack"], "pgd (noise off)": row["pgd"]} for v, row in old["scores"].items()}
    loaded = Report.from_json(json.dumps(old))
    assert loaded.clean_label == "clean" and loaded.noise_off == ["pgd (noise off)"]


# ------------------------------------------------------------------------------ intervals within [0, 100], notes
@pytest.mark.parametrize("score, text, low, high", [
    (Score(0.5, 0.1, 10), "50.0 ± 10.0", 0.4, 0.6),
    (Score(0.98, 0.05, 10), "98.0 +2.0/-5.0", 0.93, 1.0),
    (Score(0.01, 0.03, 10), "1.0 +3.0/-1.0", 0.0, 0.04),
    (Score(1.0, 0.0, 10), "100.0 ± 0.0", 1.0, 1.0),
    (Score(0.0, 0.2, 3), "0.0 +20.0/-0.0", 0.0, 0.2),
])
def test_an_interval_is_printed_stored_and_drawn_within_0_and_100(score, text, low, high):
    assert score.text() == text and (score.low, score.high) == pytest.approx((low, high))
    report = Report([0.0], {"clean": "no attack"}, {"0.0": {"clean": score}})
    assert f"| 0 | {text} |" in report.to_markdown()
    stored = json.loads(report.to_json())["scores"]["0.0"]["clean"]
    assert (stored["low"], stored["high"]) == pytest.approx((low, high))
    assert Report.from_json(report.to_json()) == report
    (bar,) = report.figure().axes[0].containers
    (segment,) = bar.lines[2][0].get_segments()  # the error bar: (x, low) to (x, high), in %
    assert [y for _, y in segment] == pytest.approx([100 * low, 100 * high])


@settings(max_examples=200, deadline=None)
@given(mean=st.floats(0, 1), ci95=st.floats(0, 2))
def test_property_a_printed_interval_never_leaves_0_to_100(mean, ci95):
    score = Score(mean, ci95, 10)
    assert 0.0 <= score.low <= score.mean <= score.high <= 1.0
    value, rest = score.text().split(" ", 1)
    up, down = (rest[2:], rest[2:]) if rest.startswith("± ") else rest[1:].split("/-")
    assert float(value) - float(down) >= -1e-9 and float(value) + float(up) <= 100 + 1e-9


def test_notes_are_printed_and_kept():
    report = _report(notes=["every test point has label 0: one class only"])
    assert "\nNote: every test point has label 0: one class only" in report.to_markdown()
    assert Report.from_json(report.to_json()).notes == report.notes
    old = json.loads(report.to_json())
    del old["notes"]  # a report written before notes were stored
    assert Report.from_json(json.dumps(old)).notes == []


# ------------------------------------------------------------------------------ choose_lam: λ from a constraint
def _dial(lams, clean, robust, clean_label="clean"):
    """A report whose clean and headline columns are ``clean``/``robust`` (%) at ``lams``."""
    scores = {str(float(v)): {"clean": Score(c / 100, 0.0, 100), "worst": Score(r / 100, 0.0, 100)}
              for v, c, r in zip(lams, clean, robust)}
    return Report([float(v) for v in lams], {"clean": "no attack", "worst": "worst case"}, scores, headline="worst",
                  clean_label=clean_label)


STEADY = ([0, 0.5, 1], [96, 92, 80], [10, 40, 50])  # clean falls, robust rises
HUMP = ([0, 0.5, 1], [90, 88, 86], [20, 60, 40])  # robust peaks inside


@pytest.mark.parametrize("curves, constraint, lam, clean, robust, measured", [
    (STEADY, dict(max_clean_drop=4), 0.5, 92, 40, True),  # exactly on the bound at a measured λ
    (STEADY, dict(max_clean_drop=2), 0.25, 94, 25, False),  # interpolated to the bound
    (STEADY, dict(max_clean_drop=20), 1.0, 80, 50, True),  # every λ allowed: the most robust
    (STEADY, dict(min_robust=40), 0.5, 92, 40, True),
    (STEADY, dict(min_robust=45), 0.75, 86, 45, False),
    (STEADY, dict(max_clean_drop=10, min_robust=45), 0.75, 86, 45, False),  # both, met at one λ only
    (STEADY, dict(max_clean_drop=10, min_robust=20), 0.75, 86, 45, False),  # both: the most robust meeting them
    (([1, 0, 0.5], [80, 96, 92], [50, 10, 40]), dict(max_clean_drop=2), 0.25, 94, 25, False),  # λ in any order
    (HUMP, dict(max_clean_drop=10), 0.5, 88, 60, True),  # the most robust, not the largest λ
    (HUMP, dict(min_robust=50), 0.375, 88.5, 50, False),  # the least λ reaching it
    (([0, 0.5, 1], [90, 90, 80], [30, 30, 30]), dict(max_clean_drop=5), 0.0, 90, 30, True),  # ties: cleaner, smaller
    (([0], [90], [30]), dict(max_clean_drop=1), 0.0, 90, 30, True),
])
def test_choose_lam_meets_the_constraint_at_the_best_lam(curves, constraint, lam, clean, robust, measured):
    choice = _dial(*curves).choose_lam(**constraint)
    assert choice.lam == pytest.approx(lam, abs=1e-12)
    assert (choice.clean, choice.robust) == (pytest.approx(clean), pytest.approx(robust))
    assert choice.measured is measured
    assert ("interpolated" in choice.reason) is not measured and "\n" not in choice.reason
    assert f"λ={lam:g}" in choice.reason and "worst" in choice.reason


@pytest.mark.parametrize("report, constraint, error, message", [
    (_dial(*STEADY), {}, ValueError, "needs a constraint: max_clean_drop .* or min_robust"),
    (_dial([0.5, 1], [92, 80], [40, 50]), dict(max_clean_drop=4), ValueError,
     "counts from λ = 0, which this report lacks .*evaluate with 0 among the lams"),
    (_dial(*STEADY), dict(min_robust=60), ValueError,
     "no λ reaches 60% robust accuracy \\(worst\\): the most robust is 50.0% at λ=1$"),
    (_dial(*STEADY), dict(max_clean_drop=2, min_robust=45), ValueError,
     "no λ keeps clean accuracy within 2 points of λ=0 \\(96.0%\\) while reaching 45% robust accuracy: the smallest "
     "drop that reaches it is 10.0 at λ=0.75$"),
    (_dial(*STEADY), dict(max_clean_drop=-1), ValueError, "max_clean_drop .* must be a number in \\[0, 100\\]"),
    (_dial(*STEADY), dict(min_robust=True), TypeError, "min_robust .* must be a number"),
    (_dial(*STEADY, clean_label=None), dict(min_robust=20), ValueError, "needs the clean column"),
])
def test_choose_lam_says_what_is_wrong_or_the_best_reachable(report, constraint, error, message):
    with pytest.raises(error, match=message) as raised:
        report.choose_lam(**constraint)
    assert "\n" not in str(raised.value)


def _interp(report, lam):
    lams = sorted(report.lams)
    clean = [100 * report.score(v, report.clean_label).mean for v in lams]
    robust = [100 * report.score(v, report.headline).mean for v in lams]
    return float(np.interp(lam, lams, clean)), float(np.interp(lam, lams, robust))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_choose_lam_property_the_choice_meets_the_constraint_on_the_piecewise_linear_curves(data):
    lams = [0.0] + sorted(data.draw(st.sets(st.integers(1, 8), max_size=4)))
    lams = [v / 8 for v in [0] + lams[1:]]  # exact in binary: the checks below need no slack
    clean = data.draw(st.lists(st.integers(0, 100), min_size=len(lams), max_size=len(lams)))
    robust = data.draw(st.lists(st.integers(0, 100), min_size=len(lams), max_size=len(lams)))
    drop = data.draw(st.one_of(st.none(), st.integers(0, 30)))
    floor = data.draw(st.one_of(st.none() if drop is not None else st.nothing(), st.integers(0, 100)))
    report = _dial(lams, clean, robust)

    def meets(lam: float, slack: float = 0.0) -> bool:
        c, r = _interp(report, lam)
        return (drop is None or c >= clean[0] - drop - slack) and (floor is None or r >= floor - slack)

    grid = sorted(set(lams) | {i / 1024 for i in range(1025)})
    try:
        choice = report.choose_lam(max_clean_drop=drop, min_robust=floor)
    except ValueError:
        assert not any(meets(v) for v in grid)  # no λ meets it
        return
    assert meets(choice.lam, slack=1e-9)
    assert (choice.clean, choice.robust) == pytest.approx(_interp(report, choice.lam), abs=1e-9)
    assert choice.measured is (choice.lam in lams)
    if drop is None:  # the least λ reaching min_robust
        assert not any(meets(v) for v in grid if v < choice.lam - 1e-6)
    else:  # the most robust λ meeting the constraint
        assert all(_interp(report, v)[1] <= choice.robust + 1e-9 for v in grid if meets(v))
