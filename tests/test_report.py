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
    again = Report.from_json(report.to_json())
    assert again == report
    md = report.to_markdown()
    assert "| λ |" in md and "n/a" in md and "pgd-2" in md and "2 steps" in md and "score_draws=3" in md
    assert json.loads(report.to_json())["meta"]["points"] == 12
    png = report.plot(tmp_path / "t.png")
    assert png.stat().st_size > 5000
    from safetensors.torch import load_file

    adv = load_file(tmp_path / "adv.safetensors")
    assert set(adv) == {"lam=0/pgd-2", "lam=1/pgd-2", "lam=0/autoattack"}
    assert adv["lam=1/pgd-2"].shape == (12, 3, 2, 2)
