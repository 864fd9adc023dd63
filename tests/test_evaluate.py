"""floatify.evaluate: the config and its overrides, the attack loop, the headline column, the report.

The headline's own measurement (worst_case, headline_score) is tested in tests/test_headline.py."""

from __future__ import annotations

import importlib
import json
import math
import warnings

import hypothesis.strategies as st
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from torch.utils.data import DataLoader, Subset, TensorDataset

import floatify
from floatify.attack_presets import strong
from floatify.attacks import AttackSpec, attack_and_score
from floatify.convert import FloatifyWarning
from floatify.evaluate import DEFAULT_EPS, EvalConfig
from floatify.layers.noise import get_noise_source, noise_source
from floatify.report import Report

from attack_models import exact_robust_accuracy, linear_task, small_model


def tiny_model():
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))


def tiny_data(n=12, batch_size=6):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.rand(n, 3, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g))


def run(config=None, data=None, **kw):
    """evaluate on the tiny model, seeded, without a progress bar."""
    torch.manual_seed(0)
    data = DataLoader(tiny_data(), batch_size=6) if data is None else data
    return floatify.evaluate(tiny_model(), data, config, progress=False, **kw)


# ------------------------------------------------------------------------------ one config shape
@pytest.mark.parametrize("config, overrides", [
    (EvalConfig(lams=(0, 1), attacks="quick", steps=2, eot_draws=2), {}),
    (None, dict(lams=[0, 1], attacks="quick", steps=2, eot_draws=2)),
    (EvalConfig(lams=[0, 1], steps=2), dict(attacks="quick", eot_draws=2)),  # overrides replace the config's
    (EvalConfig(lams=[0, 1], attacks="strong", steps=5, eot_draws=2), dict(attacks="quick", steps=2)),
])
def test_a_config_and_keyword_overrides_are_one_shape(config, overrides):
    reference = run(lams=[0, 1], attacks="quick", eps=DEFAULT_EPS, steps=2, eot_draws=2)
    assert reference.meta["preset"] == "quick" and "pgd-2" in reference.attacks and "eot-pgd-2x2" in reference.attacks
    assert run(config, **overrides).to_json() == reference.to_json()


def test_eps_none_is_8_255_in_the_library():
    assert EvalConfig().eps is None and DEFAULT_EPS == 8 / 255
    report = run(lams=[0], attacks="clean,fgsm")
    assert report.meta["eps"] == f"{8 / 255:.5f}" and report.meta["preset"] == "custom"
    assert run(lams=[0], attacks="clean,fgsm", eps=0.1).meta["eps"] == "0.10000"


@pytest.mark.parametrize("overrides, error, message", [
    (dict(lamz=[0]), TypeError, "evaluate\\(\\) got an unknown option 'lamz'; valid options: lams, attacks, eps, "),
    (dict(lams=[]), ValueError, "lams must name at least one operating point"),
    (dict(lams=[1.5]), ValueError, "must be in \\[0, 1\\]"),
    (dict(lams=0.5), TypeError, "lams must be a sequence of operating points"),
    (dict(lams=[0, 0]), ValueError, "lams names λ=0 more than once \\(0, 0\\); give each operating point once"),
    (dict(lams=[1, 0.5, 1.0, 0.5]), ValueError, "lams names λ=0.5, 1 more than once"),
    (dict(attacks="strongest"), ValueError, "unknown attack 'strongest'; choose one of clean"),
    (dict(attacks=[]), ValueError, "a non-empty list of floatify.attacks.AttackSpec"),
    (dict(attacks=[AttackSpec("pgd"), "fgsm"]), ValueError, "a non-empty list of floatify.attacks.AttackSpec"),
    (dict(attacks=[AttackSpec("pgd"), AttackSpec("pgd")]), ValueError, "attack labels must be unique"),
    (dict(attacks=[AttackSpec("fgsm", label="worst case (1 attacks)")]), ValueError, "reserved for the headline"),
    (dict(attacks=[AttackSpec("clean")], eps=0.1), ValueError, "eps build the attacks of a preset or list"),
    (dict(attacks=[AttackSpec("clean")], steps=3), ValueError, "set steps on each AttackSpec"),
    (dict(eps=0.5 + 1), ValueError, "eps .* must be a number in \\[0, 1\\]"),
    (dict(steps=0), ValueError, "steps \\(attack iterations\\) must be an int >= 1"),
    (dict(score_draws=2.5), TypeError, "score_draws \\(noise draws per point\\) must be an int"),
    (dict(limit=0), ValueError, "limit \\(test points\\) must be an int >= 1"),
    (dict(noise_source="gpu"), ValueError, "noise_source must be one of bank, fresh"),
    (dict(batch_size=64), ValueError, "batch_size=64 applies where evaluate batches a Dataset"),
    (dict(max_batches=0), ValueError, "max_batches must be an int >= 1"),
])
def test_bad_settings_are_one_clear_line_before_anything_runs(overrides, error, message):
    class Untouchable:
        def __iter__(self):
            raise AssertionError("the data must not be read before the settings are checked")

    with pytest.raises(error, match=message) as raised:
        floatify.evaluate(tiny_model(), Untouchable(), progress=False, **overrides)
    assert "\n" not in str(raised.value)


def test_config_must_be_an_eval_config():
    with pytest.raises(TypeError, match="takes a floatify.EvalConfig as config, got list; pass settings as keywords"):
        floatify.evaluate(tiny_model(), [], [0, 1])  # the positional lams of earlier versions


def test_a_dataset_is_batched_here_and_limit_counts_points():
    data = tiny_data(n=12)
    from_dataset = run(data=data, lams=[0], attacks=[AttackSpec("clean")], batch_size=5, limit=7)
    from_loader = run(data=DataLoader(Subset(data, range(7)), batch_size=5), lams=[0], attacks=[AttackSpec("clean")])
    assert from_dataset.meta["points"] == 7 and from_dataset.meta["limit"] == 7
    assert from_dataset.scores == from_loader.scores


def test_max_batches_stops_early_and_the_report_says_so():
    report = run(lams=[0], attacks=[AttackSpec("clean")], max_batches=1)
    assert report.meta["points"] == 6 and report.meta["max_batches"] == 1


@pytest.mark.parametrize("kind, not_applicable_at", [("transfer", 0.0), ("autoattack", 1.0)])
def test_an_attack_that_does_not_apply_at_a_lam_is_n_a_there(kind, not_applicable_at):
    model = floatify.convert(nn.Sequential(nn.Flatten(), nn.Linear(12, 10))).train()  # AutoAttack wants > 3 classes
    report = floatify.evaluate(model, DataLoader(tiny_data(), batch_size=6), lams=[0, 1],
                               attacks=[AttackSpec("clean"), AttackSpec(kind, steps=1)], score_draws=2, progress=False)
    label = AttackSpec(kind, steps=1).label
    assert [v for v in (0.0, 1.0) if report.score(v, label) is None] == [not_applicable_at]
    assert model.training  # evaluated in eval mode, handed back as it was


def test_empty_data_is_an_error():
    with pytest.raises(ValueError, match="yielded no data"):
        run(data=[(torch.rand(0, 3, 2, 2), torch.zeros(0, dtype=torch.long))], lams=[0], attacks="clean")


# ------------------------------------------------------------------------------ moved here from test_report.py
def test_evaluate_report_round_trip_markdown_and_plot(tmp_path):
    torch.manual_seed(0)
    model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    loader = DataLoader(TensorDataset(torch.rand(12, 3, 2, 2), torch.randint(0, 3, (12,))), batch_size=6)
    attacks = [AttackSpec("clean"), AttackSpec("pgd", steps=2), AttackSpec("autoattack")]
    report = floatify.evaluate(model, loader, lams=[0, 1], attacks=attacks, score_draws=3, progress=False,
                               save_adversarial=tmp_path / "adv.safetensors")
    assert report.score(1.0, "autoattack") is None and report.score(0.0, "autoattack") is not None
    assert report.headline == "worst case (2 attacks)"
    head0, clean0 = report.score(0.0, report.headline), report.score(0.0, "clean")
    assert head0.mean <= clean0.mean  # deterministic: the worst case includes the clean input
    head1, clean1 = report.score(1.0, report.headline), report.score(1.0, "clean")  # fresh draws: within the CIs
    assert head1.mean <= clean1.mean + head1.ci95 + clean1.ci95
    again = Report.from_json(report.to_json())
    assert again == report
    md = report.to_markdown()
    assert md.startswith("Turning the dial from λ = 0 to λ = 1 moves clean accuracy "
                         f"{100 * clean0.mean:.1f}% → {100 * clean1.mean:.1f}%")
    assert "| λ |" in md and "n/a" in md and "pgd-2" in md and "2 steps" in md and "score_draws=3" in md
    assert "weight_noise=bank" in md  # the noise source the attacker faced
    as_json = json.loads(report.to_json())
    assert as_json["meta"]["points"] == 12 and as_json["headline"] == report.headline
    assert list(as_json["attacks"])[:2] == ["clean", report.headline]
    assert set(as_json["headline_scores"]) == {"0.0", "1.0"}
    fig = report.figure()  # what the PNG shows: the clean and headline curves over λ, then the trade-off
    ax_lam, ax_trade = fig.axes
    curves = {c.get_label(): c.lines[0] for c in ax_lam.containers}  # one error-bar curve per column
    assert set(curves) == {"clean accuracy", f"robust accuracy: {report.headline}", "pgd-2", "autoattack"}
    clean_ys = [100 * report.score(v, "clean").mean for v in (0.0, 1.0)]
    head_ys = [100 * report.score(v, report.headline).mean for v in (0.0, 1.0)]
    assert list(curves["clean accuracy"].get_ydata()) == clean_ys
    assert list(curves[f"robust accuracy: {report.headline}"].get_ydata()) == head_ys
    assert curves["clean accuracy"].get_linewidth() > curves["pgd-2"].get_linewidth()  # the dial is drawn thick
    (trade,) = ax_trade.get_lines()
    assert list(trade.get_xdata()) == clean_ys and list(trade.get_ydata()) == head_ys
    png = report.plot(tmp_path / "t.png")
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (506, 1265)  # 11.5 × 4.6 inches at 110 dpi
    assert [p.name for p in tmp_path.iterdir() if "floatify-tmp" in p.name] == []  # written atomically
    from safetensors.torch import load_file

    adv = load_file(tmp_path / "adv.safetensors")
    assert set(adv) == {"lam=0/pgd-2", "lam=1/pgd-2", "lam=0/autoattack", "lam=0/worst-case", "lam=1/worst-case"}
    assert adv["lam=1/pgd-2"].shape == (12, 3, 2, 2)


def test_report_names_the_noise_source_it_was_measured_with():
    model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    data = [(torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,)))]
    with noise_source("fresh"):
        report = floatify.evaluate(model, data, lams=[1], attacks=[AttackSpec("clean")], score_draws=2,
                                   progress=False)
    assert report.meta["weight_noise"] == "fresh"
    report = floatify.evaluate(model, data, lams=[1], attacks=[AttackSpec("clean")], score_draws=2, progress=False,
                               noise_source="fresh")  # the same, as evaluate's (and the CLI's) option
    assert report.meta["weight_noise"] == "fresh"
    assert get_noise_source() == "bank"  # the option applies inside the call only


# ------------------------------------------------------------------------------ moved here from test_attacks.py
class Coin(nn.Module):
    """x -> 2 logits whose margin for class 0 is m + noise, noise ~ N(0, 2 s^2): P(correct) = Φ(m / (s√2))."""

    def __init__(self, margin: float, a: float = 1.0):
        super().__init__()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[a], [-a]]))
            self.fc.bias.copy_(torch.tensor([margin - 2 * a, 0.0]))

    def forward(self, x):
        return self.fc(x.reshape(len(x), -1)[:, :1] * 0 + 1)  # input-independent: a coin with known bias


@pytest.mark.filterwarnings("ignore:every test point has label")  # reason: one class by construction
def test_eot_scoring_matches_known_accuracy():
    torch.manual_seed(0)
    margin, a = 0.5, 1.0
    model = floatify.convert(Coin(margin, a)).eval()
    with torch.no_grad():
        model.fc.weight_alpha.fill_(1.0)
    s = 1.0 * 1.0 * (a * math.sqrt(2))  # λ α std(W); std of [a, -a] is a√2
    expected = 0.5 * (1 + math.erf(margin / (s * math.sqrt(2)) / math.sqrt(2)))
    x, y = torch.rand(400, 1), torch.zeros(400, dtype=torch.long)
    report = floatify.evaluate(model, [(x, y)], lams=[0.0, 1.0], attacks=[AttackSpec("clean")], score_draws=300,
                               progress=False)
    at1 = report.score(1.0, "clean")
    # every point shares each draw, so the interval must come from the draw-to-draw spread (~ 1.96·0.028)
    assert 0.04 < at1.ci95 < 0.08
    assert abs(at1.mean - expected) < at1.ci95, (at1, expected)
    assert report.score(0.0, "clean").mean == 1.0  # deterministic at λ = 0: margin > 0
    # a single noisy forward per point would give a 0/1 verdict per point; expected accuracy is fractional
    _, per_point = attack_and_score(model, AttackSpec("clean"), x, y, 1.0, score_draws=20)
    assert ((per_point > 0) & (per_point < 1)).float().mean() > 0.5


@pytest.mark.filterwarnings("ignore:every test point has label")  # reason: one class by construction
def test_strong_headline_reaches_the_exact_worst_case():
    eps = 0.05
    model, x, y = linear_task()
    exact = exact_robust_accuracy(model.fc, x, y, eps)
    report = floatify.evaluate(model, [(x, y)], lams=[0.0], attacks=strong(eps, steps=50), progress=False)
    assert abs(report.score(0.0, report.headline).mean - exact) <= 0.02


def test_headline_is_the_per_point_worst_case_and_never_above_any_attack():
    model = small_model()
    x, y = torch.rand(24, 3, 8, 8), torch.randint(0, 3, (24,))
    attacks = [AttackSpec("clean"), AttackSpec("fgsm"), AttackSpec("apgd-ce", steps=3),
               AttackSpec("apgd-dlr", steps=3), AttackSpec("pgd", steps=3, noise=False)]
    report = floatify.evaluate(model, [(x, y)], lams=[0.0, 1.0], attacks=attacks, score_draws=6, progress=False)
    assert report.headline == "worst case (3 attacks)"
    at0 = {label: report.score(0.0, label).mean for label in report.attacks}
    # deterministic at λ = 0: the headline is at most every attack on the noisy model (and the clean accuracy)
    assert at0[report.headline] <= min(at0[a.label] for a in attacks if a.noise) + 1e-9
    assert "pgd-3 (noise off)" not in report.attacks[report.headline]
    assert report.columns()[:2] == ["clean", report.headline]




# ------------------------------------------------------------------------------ hostile data, one clear line each
def _batch(n=8, x=None, y=None):
    g = torch.Generator().manual_seed(2)
    return (torch.rand(n, 3, 2, 2, generator=g) if x is None else x,
            torch.randint(0, 3, (n,), generator=g) if y is None else y)


def _with_nan():
    x, y = _batch()
    x[0, 0, 0, 0] = float("nan")
    return x, y


@pytest.mark.parametrize("batch, num_classes, error, message", [
    (_with_nan(), None, ValueError, "inputs hold 1 NaN or infinite values; they must be finite"),
    (_batch(x=torch.full((8, 3, 2, 2), float("inf"))), None, ValueError, "inputs hold 96 NaN or infinite values"),
    (_batch(x=torch.rand(8)), None, ValueError, "inputs must be a batch of points, batch first .* got shape \\(8,\\)"),
    (_batch(x=torch.randint(0, 2, (8, 3, 2, 2))), None, ValueError, "inputs must be float images in \\[0, 1\\]"),
    (_batch(x=2 * torch.rand(8, 3, 2, 2)), None, ValueError, "inputs must be images in \\[0, 1\\]"),
    (_batch(y=torch.full((8,), 3)), None, ValueError,
     "labels must lie in \\[0, 2\\] \\(the model outputs 3 classes\\), got \\[3, 3\\]; evaluate on data of"),
    (_batch(y=torch.full((8,), 5)), 10, ValueError, "\\[0, 2\\] \\(the model outputs 3 classes, num_classes=10\\)"),
    (_batch(y=torch.full((8,), 2)), 2, ValueError, "labels must lie in \\[0, 1\\] \\(num_classes=2\\)"),
    (_batch(y=-torch.ones(8, dtype=torch.long)), None, ValueError, "labels must lie in \\[0, 2\\].* got \\[-1, -1\\]"),
    (_batch(y=torch.zeros(8)), None, ValueError, "labels must be integer class indices, got dtype torch.float32"),
    (_batch(y=torch.zeros(8, dtype=torch.bool)), None, ValueError, "labels must be integer class indices"),
    (_batch(y=torch.zeros(8, 1, dtype=torch.long)), None, ValueError, "labels must be one class index per input, "
                                                                       "shape \\(8,\\), got shape \\(8, 1\\)"),
    (_batch(y=torch.zeros(5, dtype=torch.long)), None, ValueError, "one class index per input.* got shape \\(5,\\)"),
    ((torch.rand(8, 3, 2, 2).tolist(), torch.zeros(8, dtype=torch.long)), None, TypeError,
     "the loader must yield \\(inputs, labels\\) tensor pairs, got \\(list, Tensor\\)"),
])
def test_hostile_data_is_one_clear_line_before_any_attack(batch, num_classes, error, message, monkeypatch):
    evaluation = importlib.import_module("floatify.evaluate")  # reason: floatify.evaluate is also the function
    monkeypatch.setattr(evaluation, "attack_and_score", lambda *a, **k: pytest.fail("attacked a bad batch"))
    with pytest.raises(error, match=message) as raised:
        floatify.evaluate(tiny_model(), [batch], lams=[0, 1], attacks="quick", steps=1, num_classes=num_classes,
                          progress=False)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("head, shape", [(nn.Flatten(0), "\\(3,\\)"), (nn.Unflatten(1, (3, 1)), "\\(1, 3, 1\\)")])
def test_a_model_whose_output_is_not_logits_is_one_clear_line(head, shape):
    model = floatify.convert(nn.Sequential(nn.Flatten(), nn.Linear(12, 3), head))
    with pytest.raises(ValueError, match=f"the model must return \\(batch, classes\\) logits, got {shape}"):
        floatify.evaluate(model, [_batch()], lams=[0], attacks="clean", progress=False)


def test_labels_of_other_integer_types_are_class_indices():
    x, y = _batch()
    as_long = run(data=[(x, y)], lams=[0, 1], attacks="clean,fgsm", score_draws=2)
    assert run(data=[(x, y.int())], lams=[0, 1], attacks="clean,fgsm", score_draws=2).scores == as_long.scores


class Constant(nn.Module):
    """A converted-looking classifier that always answers class 0."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("make_model, labels, lams, note", [
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), None, [0, 1],
     "the model has no conditioned layers: λ has no effect, every λ row measures the same plain model; convert it "
     "with floatify.convert"),
    (lambda: floatify.convert(Constant()), torch.zeros(8, dtype=torch.long), [0, 1],
     "every test point has label 0: the accuracies measure one class only"),
])
def test_an_evaluation_that_measures_little_says_so_in_a_warning_and_the_report(make_model, labels, lams, note):
    with pytest.warns(FloatifyWarning, match=note):
        report = floatify.evaluate(make_model(), [_batch(y=labels)], lams=lams, attacks="clean,fgsm", score_draws=2,
                                   progress=False)
    assert [n for n in report.notes if n.startswith(note)] and f"Note: {note}" in report.to_markdown()
    assert Report.from_json(report.to_json()).notes == report.notes


@pytest.mark.parametrize("make_model, labels, lams", [
    (tiny_model, None, [0, 1]),  # converted, several classes
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), None, [0]),  # a plain model at λ = 0: a baseline
])
def test_a_meaningful_evaluation_has_no_such_note(make_model, labels, lams):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FloatifyWarning)
        report = floatify.evaluate(make_model(), [_batch(y=labels)], lams=lams, attacks="clean,fgsm", score_draws=2,
                                   progress=False)
    assert report.notes == []


# ------------------------------------------------------------------------------ invariants of every reported number
def _noisy_tiny_model(seed: int, alpha: float) -> nn.Module:
    torch.manual_seed(seed)
    model = floatify.convert(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    with torch.no_grad():
        model[1].weight_alpha.fill_(alpha)  # reason: a large α makes λ > 0 visibly random
    return model


def _printed_interval(cell: str) -> tuple[float, float]:
    """(low, high) in % of a printed cell: ``m ± c`` or ``m +u/-d``."""
    mean, rest = cell.split(" ", 1)
    if rest.startswith("± "):
        return float(mean) - float(rest[2:]), float(mean) + float(rest[2:])
    up, down = rest.split("/")
    return float(mean) - float(down.lstrip("-")), float(mean) + float(up.lstrip("+"))


def check_invariants(report: Report, points: int, lams: list[float]) -> None:
    """Every number of ``report`` keeps its invariants: the headline is at most clean and every column it is
    the worst case of, n is the number of points, each λ appears once, every interval lies in [0, 100]."""
    assert report.lams == [float(v) for v in lams] and len(set(report.lams)) == len(report.lams)
    assert report.meta["points"] == points
    members = [label for label in report.attacks if label != report.headline and label not in report.noise_off]
    for v in report.lams:
        head = report.score(v, report.headline)
        for label in members:
            score = report.score(v, label)
            if score is not None:
                assert head.mean <= score.mean, (v, label, head, score)
        for score in report.scores[str(float(v))].values():
            if score is not None:
                assert score.n == points and 0.0 <= score.low <= score.mean <= score.high <= 1.0
    for line in report.to_markdown().splitlines():
        if line.startswith("| ") and not line.startswith("| λ"):
            for cell in line.strip("| ").split(" | ")[1:]:
                if cell != "n/a":
                    low, high = _printed_interval(cell)
                    assert -1e-9 <= low and high <= 100 + 1e-9, line


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), alpha=st.sampled_from([0.05, 1.0, 3.0]), eps=st.sampled_from([0.0, 0.02, 0.3]),
       lams=st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=1, max_size=3, unique=True),
       points=st.integers(1, 12), draws=st.integers(1, 3))
def test_property_every_reported_number_keeps_its_invariants(seed, alpha, eps, lams, points, draws):
    model = _noisy_tiny_model(seed, alpha)
    g = torch.Generator().manual_seed(seed)
    data = [(torch.rand(points, 3, 2, 2, generator=g), torch.randint(0, 3, (points,), generator=g))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatifyWarning)  # reason: a tiny draw may hold one class
        report = floatify.evaluate(model, data, lams=lams, attacks="quick", eps=eps, steps=1, eot_draws=2,
                                   score_draws=draws, progress=False)
    check_invariants(report, points, lams)
