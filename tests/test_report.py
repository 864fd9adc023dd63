import json

import torch
from torch.utils.data import DataLoader, TensorDataset

import floatify
from floatify.attacks import AttackSpec
from floatify.report import Report


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
    as_json = json.loads(report.to_json())
    assert as_json["meta"]["points"] == 12 and as_json["headline"] == report.headline
    assert list(as_json["attacks"])[:2] == ["clean", report.headline]
    assert set(as_json["headline_scores"]) == {"0.0", "1.0"}
    png = report.plot(tmp_path / "t.png")
    assert png.stat().st_size > 5000
    from safetensors.torch import load_file

    adv = load_file(tmp_path / "adv.safetensors")
    assert set(adv) == {"lam=0/pgd-2", "lam=1/pgd-2", "lam=0/autoattack", "lam=0/worst-case", "lam=1/worst-case"}
    assert adv["lam=1/pgd-2"].shape == (12, 3, 2, 2)
