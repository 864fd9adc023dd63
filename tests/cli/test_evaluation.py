"""floatify eval SOURCE: a run folder, a saved folder or a Hub id, its own data by default, choosing λ."""

from __future__ import annotations

import json
import shutil

import pytest

import floatify
from floatify.checkpoint import save_checkpoint
from floatify.cli import main
from floatify.models import create_model

QUICK_EVAL = ["--lams", "0", "--eval-attacks", "clean", "--eval-limit", "48", "--no-progress"]


def _clean(folder) -> float:
    return json.loads((folder / "report.json").read_text())["scores"]["0.0"]["clean"]["mean"]


def test_eval_of_a_run_folder_reproduces_lambda_zero(trained_run, tmp_path, run_cli):
    out = tmp_path / "ev"
    assert main(["eval", str(trained_run), "--out", str(out)] + QUICK_EVAL) == 0
    assert _clean(out) == _clean(trained_run)  # λ = 0 is deterministic: the reloaded model scores the same
    assert {"report.md", "report.json", "tradeoff.png"} <= {p.name for p in out.iterdir()}
    code, err = run_cli(["eval", trained_run, "--out", out] + QUICK_EVAL)
    assert code == 2 and "already holds an evaluation" in err
    assert main(["eval", str(trained_run), "--out", str(out), "--overwrite", "--noise-source", "fresh"]
                + QUICK_EVAL) == 0
    assert json.loads((out / "report.json").read_text())["meta"]["weight_noise"] == "fresh"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"], "no staging folder left"


def test_eval_audit_writes_its_checks_and_one_verdict_line(trained_run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", str(trained_run), "--out", str(out), "--lams", "0,1", "--eval-attacks", "clean,apgd-ce",
                 "--eval-steps", "2", "--eot-draws", "2", "--score-draws", "2", "--eval-limit", "16", "--no-progress",
                 "--audit", "--audit-subset", "16", "--audit-steps", "2", "--audit-square-queries", "10"]) == 0
    checks = json.loads((out / "report.json").read_text())["audit"]
    assert [c["name"] for c in checks] == ["budget sweep", "unbounded attack", "black-box vs white-box",
                                           "convergence", "randomness", "loss landscape"]
    assert {k for k in checks[0]["numbers"] if k.startswith("lam=")} == {"lam=0", "lam=1"}  # the dial's ends
    verdicts = [line for line in capsys.readouterr().out.splitlines() if line.startswith("audit: ")]
    assert len(verdicts) == 1 and verdicts[0] in (out / "report.md").read_text()


def test_eval_writes_beside_the_run_by_default_and_reads_its_weights_file(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["eval", str(run / "model.safetensors")] + QUICK_EVAL) == 0
    assert _clean(run / "eval") == _clean(trained_run)


def test_eval_prints_the_lambda_a_constraint_chooses(trained_run, tmp_path, capsys):
    assert main(["eval", str(trained_run), "--out", str(tmp_path / "ev"), "--lams", "0,1", "--eval-attacks",
                 "clean,pgd", "--eval-steps", "1", "--eval-limit", "32", "--no-progress", "--max-clean-drop", "100",
                 "--min-robust", "0"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("--max-clean-drop 100 --min-robust 0: λ = 1.000 (clean ")


def test_eval_says_when_no_lambda_meets_the_constraint(trained_run, tmp_path, capsys):
    assert main(["eval", str(trained_run), "--out", str(tmp_path / "ev"), "--min-robust", "100", "--lams", "0,1",
                 "--eval-attacks", "clean,pgd", "--eval-steps", "1", "--eval-limit", "32", "--no-progress"]) == 0
    assert "--min-robust 100: no λ" in capsys.readouterr().out


def test_an_earlier_run_folder_still_evaluates(tmp_path):
    model = floatify.convert(create_model("resnet10t", 10), floatify.FloatConfig(bn_mix="switch", bn_curve=1.0))
    (tmp_path / "old").mkdir()
    meta = {"model": "resnet10t", "num_classes": 10, "image_size": 8, "dataset": "digits",
            "convert": {"alpha_init": 0.25, "dual_bn": True}, "train": {"eps": 0.1, "seed": 0}}
    save_checkpoint(tmp_path / "old" / "model.safetensors", model, meta)
    assert main(["eval", str(tmp_path / "old")] + QUICK_EVAL) == 0
    assert (tmp_path / "old" / "eval" / "report.json").is_file()


def _saved(folder):
    return floatify.save(floatify.convert(create_model("resnet10t", 10)), folder,
                         training={"dataset": "digits", "image_size": 8, "eps": 0.1})


def _edit(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


# how the source is made, extra options -> the one-line message; nothing is written
HOSTILE = [
    ("missing", lambda p: None, [], "does not exist"),
    ("a folder without weights", lambda p: p.mkdir(), [], "has no model.safetensors"),
    ("pickle weights", lambda p: (p.mkdir(), (p / "pytorch_model.bin").write_bytes(b"x")), [], "pickle weights"),
    ("truncated weights", lambda p: (_saved(p), (p / "model.safetensors").write_bytes(b"\x00" * 10)), [],
     "truncated or corrupted"),
    ("config edited into nonsense", lambda p: (_saved(p), _edit(p, architecture={"name": 3})), [],
     "'architecture.name' must be a model name"),
    ("a newer format", lambda p: (_saved(p), _edit(p, format_version=9)), [], "upgrade floatify"),
    ("no training data recorded", lambda p: (_saved(p), _edit(p, training=None)), [], "pass --dataset"),
    ("--out a file", _saved, ["--out", "FILE"], "is not a folder"),
    ("--score-draws 0", _saved, ["--score-draws", "0"], "--score-draws must be at least 1"),
    ("--max-clean-drop without λ = 0", _saved, ["--max-clean-drop", "2", "--lams", "1"], "include 0 in --lams"),
    ("--min-robust above 100", _saved, ["--min-robust", "101"], "--min-robust must be in [0, 100]"),
    ("a Hub id without owner", None, [], "not a Hub id"),
    ("--out the model's own folder", _saved, ["--out", "SOURCE"], "is the model's folder or holds it"),
    ("--out a folder holding the model", _saved, ["--out", "PARENT"], "is the model's folder or holds it"),
    ("--out a folder of other files", _saved, ["--out", "FOREIGN"], "holds other files"),
    ("--audit-subset above the test points", _saved, ["--audit", "--eval-limit", "16", "--audit-subset", "32"],
     "larger than the test set (16 points"),
    ("--audit sweep leaving [0, 1]", _saved, ["--audit", "--audit-multipliers", "1,16"], "outside [0, 1]"),
    ("--audit-lams not evaluated", _saved, ["--audit", "--lams", "0", "--audit-lams", "1"], "not among the evaluated"),
]


@pytest.mark.parametrize("name, make, extra, message", HOSTILE, ids=[r[0] for r in HOSTILE])
def test_hostile_sources_and_options_are_one_line(tmp_path, run_cli, name, make, extra, message):
    source = tmp_path / "m"
    if make is not None:
        make(source)
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "FOREIGN").mkdir()
    (tmp_path / "FOREIGN" / "thesis.tex").write_text("mine")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    places = {"FILE": tmp_path / "FILE", "SOURCE": source, "PARENT": tmp_path, "FOREIGN": tmp_path / "FOREIGN"}
    extra = [str(places.get(a, a)) for a in extra]
    code, err = run_cli(["eval", source if make is not None else "hf-hub:resnet", "--no-progress"] + extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_weights_that_do_not_fit_are_named(tmp_path, run_cli):
    folder = _saved(tmp_path / "m")
    shutil.copy(_saved(tmp_path / "other").joinpath("model.safetensors"), folder / "model.safetensors")
    _edit(folder, architecture={"source": "timm", "name": "resnet10t", "num_classes": 11, "kwargs": {}})
    code, err = run_cli(["eval", folder, "--no-progress"])
    assert code == 2 and "does not fit" in err and len(err.strip().splitlines()) == 1


def test_a_frozen_model_is_evaluated_at_its_one_operating_point(tmp_path, run_cli, capsys):
    frozen = floatify.freeze(floatify.convert(create_model("resnet10t", 10)), lam=0.3, seed=0)
    floatify.save(frozen, tmp_path / "m", training={"dataset": "digits", "image_size": 8, "eps": 0.1})
    code, err = run_cli(["eval", tmp_path / "m", "--min-robust", "10", "--no-progress"])
    assert code == 2 and "frozen at λ = 0.3" in err
    assert main(["eval", str(tmp_path / "m"), "--eval-attacks", "clean", "--eval-limit", "16", "--no-progress"]) == 0
    assert json.loads((tmp_path / "m" / "eval" / "report.json").read_text())["lams"] == [0.0]
