"""floatify train: the run folder is a loadable artifact, every bad option is one line before anything is written,
and --overwrite replaces a run in one step."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields

import pytest
import torch

import floatify
from floatify.cli import main
from floatify.layers.noise import noise_source

import helpers
from helpers import old_run_unchanged, plant_old_run


def test_the_run_folder_is_a_saved_dial(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"model.safetensors", "config.json", "report.json", "tradeoff.png", "README.md", "report.md",
            "train_state.safetensors", "history.json", "summary.csv"} <= names
    report = json.loads((trained_run / "report.json").read_text())
    assert set(report["scores"]) == {"0.0", "1.0"}
    assert list(report["attacks"]) == ["clean", "worst case (2 attacks)", "pgd-2", "eot-pgd-2x2", "pgd-2 (noise off)"]
    assert report["headline"] == "worst case (2 attacks)" and report["meta"]["preset"] == "custom"
    assert report["meta"]["eps"] == "0.10000"  # digits defaults to its own threat model (eps 0.1)
    config = json.loads((trained_run / "config.json").read_text())
    assert config["architecture"]["name"] == "resnet10t" and config["training"]["dataset"] == "digits"
    assert config["training"]["eps"] == 0.1 and config["preprocessing"]["input_size"] == [3, 8, 8]
    model = floatify.load(trained_run)
    x = torch.rand(4, 3, 8, 8)
    with floatify.lam(0.0):
        assert model(x).shape == (4, 10)
    assert "EOT-PGD" in (trained_run / "report.md").read_text()


def test_overwrite_swaps_in_the_new_run_and_names_the_final_folder(trained_run, tmp_path, capsys, tiny):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)  # reason: an earlier run to overwrite, without training one more
    (out / "eval").mkdir()  # an evaluation of the old model goes with it
    assert main(["train", "--out", str(out), "--overwrite", "--seed", "3"] + tiny) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}:" in printed and ".floatify-staging" not in printed
    assert json.loads((out / "config.json").read_text())["training"]["seed"] == 3
    assert not (out / "eval").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_refuses_an_output_dir_holding_a_run(trained_run, run_cli, tiny):
    code, err = run_cli(["train", "--out", trained_run] + tiny)
    assert code == 2 and "--overwrite" in err and "--resume" in err


# extra options -> the one-line message; every row is refused before the previous run in --out is touched
BAD_OPTIONS = [
    (["--model", "resnet81"], "unknown model 'resnet81'"),
    (["--dataset", "imagenet22k"], "unknown dataset"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent"], "--download"),
    (["--eval-attacks", "clean,cw"], "unknown attack"),
    (["--eval-attacks", "strongest"], "unknown attack"),
    (["--eval-attacks", "pgd,pgd"], "--eval-attacks"),
    (["--lams", "0,0"], "--lams names a λ twice"),
    (["--score-draws", "0"], "--score-draws must be at least 1"),
    (["--lams", ","], "--lams is empty"),
    (["--eval-limit", "0"], "--eval-limit must be at least 1"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be at least 1"),
    (["--eval-steps", "0"], "steps must be"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--density", "0"], "--density must be in (0, 1]"),
    (["--density", "1.5"], "--density must be in (0, 1]"),
    (["--grad-clip", "0"], "--grad-clip must be a finite number > 0"),
    (["--grad-clip", "-1"], "--grad-clip must be a finite number > 0"),
    (["--steps", "-5"], "--steps must be at least 1"),
    (["--train-limit", "10", "--batch-size", "64"], "--train-limit 10 is smaller than --batch-size 64"),
    (["--batch-size", "4096"], "fewer than --batch-size 4096"),
    (["--device", "meta"], "floatify runs on cpu or cuda"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--resume"], "exclude each other"),
    (["--compile", "--compile-mode", "turbo"], "--compile-mode must be one of default, reduce-overhead"),
    (["--compile-mode", "default"], "compile_mode='default' needs compile=True (--compile)"),
    (["--compile", "--compile-mode", "reduce-overhead", "--device", "cpu"], "which need a CUDA device"),
    (["--audit", "--audit-subset", "500"], "audit subset (500 points) is larger than the test set (360 points"),
    (["--audit", "--eps", "0.2", "--audit-multipliers", "1,8"], "outside [0, 1]"),
    (["--audit", "--audit-multipliers", "2"], "at least two numbers > 0"),
]


@pytest.mark.parametrize("argv, message", BAD_OPTIONS, ids=[" ".join(r[0]) for r in BAD_OPTIONS])
def test_bad_options_are_refused_before_the_previous_run_is_touched(tmp_path, run_cli, argv, message):
    out = tmp_path / "run1"
    plant_old_run(out)
    code, err = run_cli(["train", "--out", out, "--overwrite", "--model", "resnet10t", "--no-progress"] + argv)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert old_run_unchanged(out)


def _raising_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler found")


def test_compile_where_torch_cannot_compile_is_one_line_not_an_eager_run(monkeypatch, tmp_path, run_cli):
    import floatify.compile

    monkeypatch.setattr(floatify.compile, "BACKEND", _raising_backend)
    monkeypatch.setattr(floatify.compile, "_PROBLEMS", {})
    out = tmp_path / "run1"
    plant_old_run(out)
    code, err = run_cli(["train", "--out", out, "--overwrite", "--model", "resnet10t", "--no-progress", "--compile"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--compile: torch" in err and "no C++ compiler found" in err and "drop --compile" in err
    assert old_run_unchanged(out)


# what --out is -> the one-line message (nothing is created)
BAD_OUT = [
    ("a file", lambda p: p.write_text("x"), "exists and is not a folder"),
    ("a dangling symlink", lambda p: p.symlink_to(p.parent / "nowhere"), "dangling symlink"),
    ("a run and foreign files, --overwrite", lambda p: (plant_old_run(p), (p / "notes.txt").write_text("mine")),
     "also holds notes.txt"),
    ("no state to --resume", lambda p: p.mkdir(), "no train_state.safetensors"),
    ("the pickle state of an older floatify", lambda p: (p.mkdir(), (p / "train_state.pt").write_bytes(b"x")),
     "older floatify"),
]


@pytest.mark.parametrize("name, make, message", BAD_OUT, ids=[r[0] for r in BAD_OUT])
def test_an_out_that_cannot_hold_the_run_is_refused(tmp_path, run_cli, tiny, name, make, message):
    out = tmp_path / "out"
    make(out)
    flags = ["--resume"] if "resume" in name or "older" in name else ["--overwrite"] if "overwrite" in name else []
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code, err = run_cli(["train", "--out", out] + flags + tiny)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("command", [["train"], ["eval", "runs/x"], ["export", "runs/x"]])
def test_an_empty_out_is_an_argument_error(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main(command + ["--out", ""])
    assert exc.value.code == 2 and "--out: is empty; name a path" in capsys.readouterr().err


def test_a_readme_of_yours_in_out_is_never_replaced(tmp_path, run_cli, tiny):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("my notes")
    code, err = run_cli(["train", "--out", tmp_path / "out"] + tiny)
    assert code == 2 and "not a floatify model card" in err
    assert (tmp_path / "out" / "README.md").read_text() == "my notes"


def test_an_unwritable_out_is_found_before_training(tmp_path, run_cli, tiny):
    (tmp_path / "file").write_text("x")
    code, err = run_cli(["train", "--out", tmp_path / "file" / "run"] + tiny)
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("stage", ["training", "writing the report"])
def test_a_failed_overwrite_leaves_the_old_run_byte_identical(tmp_path, monkeypatch, tiny, stage):
    out = tmp_path / "run1"
    plant_old_run(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    if stage == "training":
        monkeypatch.setattr(floatify, "fit", killed)
    else:
        monkeypatch.setattr("floatify.cli.evaluation.write_markdown", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "--out", str(out), "--overwrite"] + tiny)
    assert old_run_unchanged(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run1"], "the staging folder is gone"


def test_overwrite_never_follows_planted_symlinks(tmp_path, tiny):
    out = tmp_path / "run1"
    plant_old_run(out)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for planted in ("train_state.safetensors", "history.json"):
        (out / planted).symlink_to(victim)
    assert main(["train", "--out", str(out), "--overwrite"] + tiny) == 0
    assert victim.read_text() == "precious"
    assert (out / "model.safetensors").read_bytes() != helpers.OLD_RUN["model.safetensors"]
    assert not (out / "adversarial.safetensors").exists()  # a file of the replaced run is not left behind
    assert not (out / "history.json").is_symlink()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("argv, message", [
    (["--density", "0.5"], "density"),
    (["--no-dual-bn"], "dual_bn"),
    (["--alpha-init", "0.5"], "alpha_init"),
    (["--bn-curve", "1.0"], "bn_curve"),
    (["--train-limit", "200", "--batch-size", "100"], "changed"),
])
def test_resume_with_other_settings_is_refused(trained_run, tmp_path, run_cli, tiny, argv, message):
    out = tmp_path / "copy"
    shutil.copytree(trained_run, out)
    code, err = run_cli(["train", "--out", out, "--resume"] + tiny + argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_floats_training_run_loads_pruned(tmp_path, tiny):
    out = tmp_path / "sparse"
    assert main(["train", "--out", str(out), "--density", "0.2", "--sparsity-criterion", "snip"] + tiny) == 0
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert abs(float(meta["density"]) - 0.2) < 0.01 and float(meta["compressed_MB"]) < float(meta["dense_MB"])
    config = json.loads((out / "config.json").read_text())
    assert abs(config["sparsity"]["density"] - 0.2) < 0.01
    from floatify.sparsity import sparsity_report

    assert abs(sparsity_report(floatify.load(out)).density - 0.2) < 0.01


def test_help_explains_every_option(capsys):
    from floatify.cli import build_parser

    parser = build_parser()
    for command in ("train", "eval", "export"):
        sub = parser._subparsers._group_actions[0].choices[command]
        undocumented = [a.option_strings or a.dest for a in sub._actions if not a.help]
        assert not undocumented, (command, undocumented)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"floatify {floatify.__version__}"


def test_option_defaults_are_the_configs_defaults():
    """Every TrainConfig/FloatConfig/EvalConfig field is an option whose default is the field's (one source)."""

    from floatify.cli import build_parser
    from floatify.evaluate import EvalConfig
    from floatify.train import TrainConfig

    args = vars(build_parser().parse_args(["train", "--out", "x"]))
    dataset_dependent = {"eps"}  # None on the command line: floatify.data.default_eps(--dataset)
    for cls in (TrainConfig, floatify.FloatConfig):
        for f in fields(cls):
            if f.name not in dataset_dependent:
                assert args[f.name] == f.default, (cls.__name__, f.name, args[f.name], f.default)
    flags = {"attacks": "eval_attacks", "eps": "eval_eps", "steps": "eval_steps", "limit": "eval_limit",
             "batch_size": "eval_batch_size"}
    for f in fields(EvalConfig):
        value = args[flags.get(f.name, f.name)]
        assert (tuple(value) if f.name == "lams" else value) == f.default, (f.name, value, f.default)
    assert build_parser().parse_args(["train", "--out", "x", "--no-dual-bn"]).dual_bn is False
    assert build_parser().parse_args(["train", "--out", "x", "--keep-freed-heap"]).keep_freed_heap is True
    assert build_parser().parse_args(["train", "--out", "x", "--model-ema", "--eval-every", "2"]).eval_every == 2


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--out", "x", "--lams", "0,1.5"], "[0, 1]"),
    (["train", "--out", "x", "--noise-draw", "epoch"], "invalid choice: 'epoch'"),
    (["train", "--out", "x", "--augment", "mirror"], "invalid choice: 'mirror'"),
    (["eval"], "the following arguments are required: source"),
    (["export", "runs/x"], "the following arguments are required: --out"),
])
def test_argument_errors_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and fragment in capsys.readouterr().err


def test_the_run_at_lambda_above_zero_replays_under_the_same_seed(trained_run):
    model, again = floatify.load(trained_run), floatify.load(trained_run)
    x = torch.rand(4, 3, 8, 8)
    outs = []
    for m in (model, again):
        torch.manual_seed(5)
        with noise_source("fresh"), floatify.lam(0.5):
            outs.append(m(x))
    assert torch.equal(*outs)


# Another value of every option the resume tag holds (every `floatify train` option but RESUMABLE_OPTIONS, the
# evaluation options and the TrainConfig fields, which fit compares itself: tests/test_train.py). A new option gets a
# row here (checked below), so a resume can never ignore it.
OTHER_OPTION_VALUE = {"model": "resnet14t", "dataset": "cifar10", "image_size": 12, "train_limit": 200,
                      "batch_size": 100, "val_split": 0.2, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                      "alpha_init": 0.5, "dual_bn": False, "bn_mix": "switch", "bn_curve": 1.0, "density": 0.5,
                      "sparsity_criterion": "random"}


def _tag_options() -> set[str]:
    from floatify.cli import build_parser
    from floatify.cli.training import RESUMABLE_OPTIONS, _eval_options
    from floatify.train import TrainConfig

    args = build_parser().parse_args(["train", "--out", "x"])
    return set(vars(args)) - RESUMABLE_OPTIONS - _eval_options() - {f.name for f in fields(TrainConfig)}


def test_every_training_option_has_a_row_in_the_resume_tag_table():
    assert _tag_options() == set(OTHER_OPTION_VALUE)


@pytest.mark.parametrize("option", sorted(OTHER_OPTION_VALUE))
def test_changing_any_training_option_changes_the_resume_tag(option):
    """The tag is derived from the options: each one, changed alone, makes a resume refuse (check_same_run)."""
    from types import SimpleNamespace

    from floatify.cli import build_parser
    from floatify.cli.training import _tag
    from floatify.distributed import launch_from_environment

    def tag(args):
        args.initial_weights = "random"
        data = SimpleNamespace(name=args.dataset, image_size=args.image_size, augmentation=args.augment,
                               val_split=args.val_split)
        return _tag(args, data, launch_from_environment())

    base = build_parser().parse_args(["train", "--out", "x", "--density", "0.2"])
    changed = build_parser().parse_args(["train", "--out", "x", "--density", "0.2"])
    setattr(changed, option, OTHER_OPTION_VALUE[option])
    assert tag(base) != tag(changed)
    json.dumps(tag(changed))  # the run state stores it as JSON
