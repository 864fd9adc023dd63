import json

import torch
from torch.utils.data import DataLoader, TensorDataset

import floatify
from floatify.attacks import AttackSpec
from floatify.layers.noise import noise_source
from floatify.report import Report, Score


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
