"""floatify.card: the model card says what the model is, shows its dial, how to load it and what to cite."""

from __future__ import annotations

import floatify
from floatify.artifact import load_report, read_config
from floatify.card import model_card
from floatify.models import create_model


def test_report_and_model_card(tmp_path):
    from floatify.report import Report, Score

    report = Report(lams=[0.0, 1.0], attacks={"clean": "no attack"}, scores={
        "0.0": {"clean": Score(0.9, 0.01, 100)}, "1.0": {"clean": Score(0.8, 0.02, 100)}}, meta={"eps": 0.1})
    folder = floatify.save(floatify.convert(create_model("resnet10t", 10)), tmp_path / "m", report=report,
                           training={"dataset": "digits", "eps": 0.1, "image_size": 16})
    assert {"report.json", "tradeoff.png"} <= {p.name for p in folder.iterdir()}
    assert load_report(folder) == report
    card = (folder / "README.md").read_text()
    for fragment in ("library_name: floatify", "resnet10t", "floatify.load(", "kundu2023float", "tradeoff.png",
                     "eps = 0.1"):
        assert fragment in card
    config = read_config(folder)
    assert config["preprocessing"]["input_size"] == [3, 16, 16] and config["training"]["dataset"] == "digits"




# what the config says, a fragment the card must hold
FACTS = [
    ({"frozen": {"lam": 0.3}}, "frozen at λ = 0.3"),
    ({"sparsity": {"density": 0.1}}, "Pruned to 10.0%"),
    ({"training": {"eps": 8 / 255}}, "eps = 0.03137"),
    ({"architecture": None}, "# a custom model with a FLOAT dial"),
]


def test_card_states_each_fact_of_the_config():
    base = {"architecture": {"name": "resnet18"}, "preprocessing": {"input_size": [3, 32, 32]}, "training": {}}
    for change, fragment in FACTS:
        assert fragment in model_card({**base, **change}), (change, fragment)
    assert "frozen" not in model_card(base) and "Pruned" not in model_card(base)
