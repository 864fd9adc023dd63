"""floatify.evaluate: the config and its overrides, the attack loop, the headline's worst case, the report."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import floatify
from floatify.attacks import AttackSpec, attack_and_score, strong
from floatify.evaluate import DEFAULT_EPS, EvalConfig, worst_case
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


