"""floatify.attack_presets: the presets' attacks and the CLI's attack lists, parsed to labelled specs."""

from __future__ import annotations

import pytest

from floatify.attack_presets import parse_attacks, quick, strong


@pytest.mark.parametrize("text,labels", [
    ("quick", [s.label for s in quick(0.1)]),
    ("strong", ["clean", "apgd-ce-50x10", "apgd-dlr-50x10", "transfer-50", "apgd-ce-50 (noise off)"]),
    ("clean,apgd-dlr:nonoise", ["clean", "apgd-dlr-50 (noise off)"]),
    ("eot-pgd, transfer, fgsm:nonoise", ["eot-pgd-10x8", "transfer-50", "fgsm (noise off)"]),
    ("eot-pgd:nonoise", ["eot-pgd-10 (noise off)"]),
])
def test_presets_and_lists_parse(text, labels):
    assert [s.label for s in parse_attacks(text, 0.1)] == labels


def test_strong_descriptions_name_loss_iterations_draws_restarts_and_eps():
    d = {s.label: s.describe() for s in strong(0.1, steps=100, eot_draws=20)}
    assert all(w in d["apgd-dlr-100x20"] for w in ("DLR", "100 iterations", "20 noise draws", "1 restart", "25.5/255"))
    assert "noise-off model" in d["transfer-100"]


@pytest.mark.parametrize("text, message", [
    ("pgd:noisy", "unknown attack modifier ':noisy' in 'pgd:noisy' (only ':nonoise')"),
    (" , ", "no attack named in ','; name a preset (quick, strong) or attacks"),
    ("cw", "unknown attack 'cw'; choose one of clean, fgsm"),
])
def test_a_bad_attack_list_is_one_clear_line(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_attacks(text, 0.1)
