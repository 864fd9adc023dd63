"""floatify.distributed: the torchrun environment, devices, one process unchanged, and real two-process runs of
``torchrun -m floatify train`` (gloo, CPU): the run folder, identical ranks, resume, bad options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import floatify
import floatify.distributed as fd
from floatify.cli import main
from floatify.distributed import Launch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "test_resnet", "--image-size", "16", "--epochs", "2", "--train-limit", "64", "--batch-size", "16",
        "--steps", "1", "--strategy", "oat", "--zero-share", "0.5", "--eval-limit", "16", "--eval-attacks", "quick",
        "--eval-steps", "1", "--eot-draws", "1", "--lams", "0,1", "--no-progress", "--device", "cpu"]
TORCHRUN = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
RANK1 = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", **TORCHRUN}

# `floatify train` as the CLI runs it, with floatify.fit wrapped to record what each rank holds: its parameters and
# the λ it drew per step (in DUMP/rank<r>.safetensors, lams<r>.json), and, with STOP > 0, interrupted right after
# epoch STOP's checkpoint on every rank (as by Ctrl-C). Each rank writes its exit code to DUMP/exit<r>, and ignores
# torchrun's SIGTERM, sent to the others once one rank has exited with an error: every rank's own exit code shows.
WORKER = """
import json, os, signal, sys
from pathlib import Path
import torch, floatify, floatify.cli
from safetensors.torch import save_file
from floatify.losses import LamSampler

dump, stop, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
drawn, draw, fit = [], LamSampler.__call__, floatify.fit

def recording(self, *args, **kwargs):
    drawn.append(draw(self, *args, **kwargs))
    return drawn[-1]

def fit_and_dump(model, *args, on_epoch_end, **kwargs):
    def hook(epoch, record):
        on_epoch_end(epoch, record)
        if epoch == stop:
            torch.distributed.barrier()  # every rank (rank 0 with its checkpoint written) is here
            raise KeyboardInterrupt
    history = fit(model, *args, on_epoch_end=hook, **kwargs)
    rank = torch.distributed.get_rank()
    params = getattr(model, "module", model).named_parameters()
    save_file({k: v.detach().clone() for k, v in params}, dump / f"rank{rank}.safetensors")
    (dump / f"lams{rank}.json").write_text(json.dumps(drawn))
    return history

LamSampler.__call__, floatify.fit = recording, fit_and_dump
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = floatify.cli.main(argv)
(dump / f"exit{os.environ['RANK']}").write_text(str(code))
sys.exit(code)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _torchrun(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    # reason: --standalone lets torchrun bind a free port itself (no port picked here that another process may take)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _train_under_torchrun(tmp: Path, out: Path, extra: list[str] = (), stop: int = 0,
                          timeout: int = 240) -> subprocess.CompletedProcess:
    """``floatify train`` in two processes, as WORKER; what each rank holds and its exit code in tmp/dump-<out>."""
    dump = tmp / f"dump-{out.name}"
    dump.mkdir(exist_ok=True)
    worker = tmp / "worker.py"
    worker.write_text(WORKER)
    return _torchrun([str(worker), str(dump), str(stop), "train", "--out", str(out), *TINY, *extra], tmp, timeout)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "floatify train: error:" in line]


# the torchrun environment and devices

ENVIRONMENTS = [  # (environment, the Launch it gives, or the words of its error)
    ({}, Launch(), None),
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, Launch(), None),  # torchrun --nproc-per-node 1
    (RANK1, Launch(rank=1, world_size=2, local_rank=1, local_world_size=2), None),
    ({**RANK1, "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}, Launch(1, 4, 0, 1), None),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0", **TORCHRUN}, None, "RANK is not"),
    ({**RANK1, "RANK": "one"}, None, "RANK='one' is not an integer"),
    ({**RANK1, "RANK": "2"}, None, "inconsistent torchrun environment"),
    ({**RANK1, "LOCAL_RANK": "2"}, None, "inconsistent torchrun environment"),
    ({k: v for k, v in RANK1.items() if k != "MASTER_PORT"}, None, "MASTER_PORT not set"),
]


@pytest.mark.parametrize("environ, launch, error", ENVIRONMENTS)
def test_launch_from_environment(environ, launch, error):
    if error is None:
        assert fd.launch_from_environment(environ) == launch
    else:
        with pytest.raises(ValueError, match=error) as info:
            fd.launch_from_environment(environ)
        assert "torchrun" in str(info.value) and "\n" not in str(info.value)


TWO_ON_ONE_MACHINE = Launch(rank=1, world_size=2, local_rank=1, local_world_size=2)
DEVICES = [  # (launch, --device, GPUs on the machine, the device it gives, or the words of its error)
    (Launch(), "cpu", 0, torch.device("cpu"), None),
    (TWO_ON_ONE_MACHINE, "cpu", 2, torch.device("cpu"), None),
    (TWO_ON_ONE_MACHINE, "cuda", 2, torch.device("cuda", 1), None),
    (TWO_ON_ONE_MACHINE, None, 2, torch.device("cuda", 1), None),
    (Launch(), "cuda:1", 2, torch.device("cuda", 1), None),
    (TWO_ON_ONE_MACHINE, "cuda:0", 2, None, "pass 'cuda', not 'cuda:0'"),
    (TWO_ON_ONE_MACHINE, "cuda", 1, None, "2 processes on this machine but it has 1 GPU"),
    (TWO_ON_ONE_MACHINE, "cuda", 0, None, "CUDA is not available"),
    (TWO_ON_ONE_MACHINE, "meta", 2, None, "cpu or cuda only"),
    (Launch(), "gpu7", 0, None, "unknown device 'gpu7'"),
]


@pytest.mark.parametrize("launch, name, gpus, device, error", DEVICES)
def test_local_device(monkeypatch, launch, name, gpus, device, error):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    if error is None:
        assert fd.local_device(launch, name) == device
    else:
        with pytest.raises(ValueError, match=error):
            fd.local_device(launch, name)


# one process: nothing changes

def test_one_process_has_no_group_and_every_helper_passes_through():
    net, data = torch.nn.Linear(2, 2), list(range(6))
    with fd.process_group(Launch(), torch.device("cpu")):
        assert not dist.is_initialized()
        assert fd.wrap(net, torch.device("cpu")) is net and fd.shard(data, seed=0) is None
        assert fd.broadcast_text("λ ünïcode") == "λ ünïcode" and fd.broadcast_text(None) is None
        assert fd.is_main_process()
        fd.barrier()
    error = ValueError("own error")
    with pytest.raises(ValueError) as info, fd.together():
        raise error
    assert info.value is error  # re-raised as it was, not wrapped


EARLY = [  # (bad options, words of rank 0's one line): refused on every rank before any process group exists
    (["--eval-limit", "0"], "--eval-limit must be at least 1"),
    (["--train-limit", "24"], "24 training points shared by 2 processes is 12 per process, fewer than --batch-size 16"),
    (["--device", "cuda:0"], "--device: "),  # no CUDA here, or not cuda:LOCAL_RANK
]


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("bad, words", EARLY)
def test_bad_options_stop_every_rank_before_any_collective_and_rank_0_alone_speaks(monkeypatch, tmp_path, capsys,
                                                                                   rank, bad, words):
    for key, value in {**RANK1, "RANK": str(rank), "LOCAL_RANK": str(rank)}.items():
        monkeypatch.setenv(key, value)

    def no_group(*args, **kwargs):  # reason: the other rank does not exist here; a group would wait for it
        raise AssertionError("a process group was started before the options were checked")

    monkeypatch.setattr(dist, "init_process_group", no_group)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out)] + TINY + bad) == 2  # the other rank is never started here: no wait
    assert not dist.is_initialized() and not out.exists()
    out_text, err_text = capsys.readouterr()
    assert out_text == ""
    if rank == 0:
        assert err_text.startswith("floatify train: error: ") and err_text.count("\n") == 1 and words in err_text
    else:
        assert err_text == ""
        with pytest.raises(SystemExit) as info:
            main(["train", "--out", str(out), "--lams", "2"])  # argparse's usage error: quiet as well
        assert info.value.code == 2 and capsys.readouterr() == ("", "")


def test_eval_refuses_several_processes_in_one_line(monkeypatch, tmp_path, capsys):
    for key, value in {**RANK1, "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    assert main(["eval", str(tmp_path / "model.safetensors"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without torchrun" in err and not list(tmp_path.iterdir())


# two processes (gloo, CPU)

TOGETHER = """
import json, sys
from pathlib import Path
import torch
import floatify
import floatify.distributed as fd

launch = fd.launch_from_environment()
with fd.process_group(launch, torch.device("cpu")):
    text = fd.broadcast_text("from rank 0: λ ✓" if launch.rank == 0 else "never sent")
    none = fd.broadcast_text(None if launch.rank == 1 else "x", src=1)
    try:
        with fd.together("the check"):
            if launch.rank == int(sys.argv[1]):
                raise ValueError("bad on this rank\\nsecond line")
        outcome = "passed"
    except fd.RankFailed as err:
        outcome = ["RankFailed", err.rank, err.message]
    except ValueError as err:
        outcome = ["ValueError", str(err)]
    fd.barrier()
report = [text, none, outcome, torch.distributed.is_initialized()]
Path(sys.argv[2], f"rank{launch.rank}.json").write_text(json.dumps(report))
"""


@pytest.mark.slow
def test_together_stops_every_rank_with_the_failing_ranks_message(tmp_path):
    """Rank 1 fails alone: it raises its own error, rank 0 a RankFailed with its message (the CLI's --out check
    covers rank 0 failing alone)."""
    script = tmp_path / "together.py"
    script.write_text(TOGETHER)
    result = _torchrun([str(script), "1", str(tmp_path)], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r[:2] + r[3:] for r in reports] == [["from rank 0: λ ✓", None, False]] * 2  # group gone after the block
    assert reports[0][2] == ["RankFailed", 1, "bad on this rank second line"]
    assert reports[1][2] == ["ValueError", "bad on this rank\nsecond line"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """A two-epoch two-process run, uninterrupted."""
    tmp = tmp_path_factory.mktemp("torchrun")
    result = _train_under_torchrun(tmp, tmp / "straight")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, tmp / "straight", result


@pytest.fixture(scope="module")
def resumed_run(straight_run):
    """The same run interrupted after its first epoch, then continued with --resume."""
    tmp = straight_run[0]
    out = tmp / "resumed"
    cut = _train_under_torchrun(tmp, out, stop=1)
    assert cut.returncode != 0 and "KeyboardInterrupt" in cut.stderr
    first = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in first] == [1] and not (out / "model.safetensors").exists()
    result = _torchrun(["-m", "floatify", "train", "--out", str(out), "--resume", *TINY], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, first, result


@pytest.mark.slow
def test_torchrun_writes_the_run_of_one_process_once_and_eval_reads_it(straight_run, tmp_path):
    _, out, result = straight_run
    single = tmp_path / "single"
    assert main(["train", "--out", str(single)] + TINY) == 0
    assert sorted(os.listdir(out)) == sorted(os.listdir(single))  # the same files, nothing hidden left behind
    assert result.stdout.count("  epoch 1:") == 1 and result.stdout.count("wrote ") == 1  # rank 0 alone, once
    assert "2 processes" in result.stdout and not _error_lines(result.stderr)
    ev = tmp_path / "ev"
    assert main(["eval", str(out), "--out", str(ev), "--lams", "0",
                 "--eval-attacks", "clean", "--eval-limit", "16", "--no-progress"]) == 0
    clean = [json.loads((folder / "report.json").read_text())["scores"]["0.0"]["clean"] for folder in (out, ev)]
    assert clean[0] == clean[1]  # λ = 0 is deterministic: eval reads back the very model rank 0 evaluated


@pytest.mark.slow
def test_ranks_end_identical_and_draw_the_same_lam_every_step(straight_run):
    tmp, out, _ = straight_run
    dump = tmp / "dump-straight"
    ranks = [load_file(dump / f"rank{r}.safetensors") for r in (0, 1)]
    saved = load_file(out / "model.safetensors")
    assert ranks[0].keys() == ranks[1].keys() and set(ranks[0]) <= set(saved)
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]) and torch.equal(value, saved[key]), key
    lams = [json.loads((dump / f"lams{r}.json").read_text()) for r in (0, 1)]
    assert lams[0] == lams[1] and len(lams[0]) == 4  # 64 points / 2 ranks / batch 16 = 2 steps, 2 epochs
    assert {v for step in lams[0] for v in step} >= {0.0, 0.4}  # λ = 0 steps (unused α under DDP) and λ > 0 ones
    alphas = [k for k in ranks[0] if k.endswith("weight_alpha")]
    assert alphas and any(ranks[0][k].item() != 0.25 for k in alphas)  # α was trained


@pytest.mark.slow
def test_resume_under_torchrun_ends_with_the_weights_of_the_uninterrupted_run(straight_run, resumed_run):
    out, first, result = resumed_run
    straight, resumed = load_file(straight_run[1] / "model.safetensors"), load_file(out / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []
    # it continued: epoch 1 is the interrupted run's (its record, time included, kept), only epoch 2 was trained
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and history[0] == first[0]
    assert "  epoch 1:" not in result.stdout and result.stdout.count("  epoch 2:") == 1


@pytest.mark.slow
def test_an_out_rank_0_cannot_write_stops_both_ranks_with_one_line(tmp_path):
    """Found by rank 0 alone, after the process group is up (the options every rank refuses before it are in
    test_bad_options_stop_every_rank_before_any_collective_and_rank_0_alone_speaks)."""
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "run"  # a folder inside a file cannot be made
    # reason: a hang ends in the timeout (an error here), not in a result
    result = _train_under_torchrun(tmp_path, out, timeout=120)
    exits = [f.read_text() if f.exists() else None for f in (tmp_path / "dump-run" / f"exit{r}" for r in (0, 1))]
    assert result.returncode != 0 and exits == ["2", "2"], result.stderr[-3000:]
    lines = _error_lines(result.stdout + result.stderr)
    assert len(lines) == 1 and "is not writable" in lines[0], result.stderr[-3000:]  # rank 0's; rank 1 is quiet
    assert not [line for line in result.stderr.splitlines() if "/floatify/" in line]  # no traceback from a rank
    assert not out.exists()


@pytest.mark.slow
def test_the_example_trains_two_processes_with_the_defaults_and_saves_what_floatify_loads(tmp_path):
    out = tmp_path / "dial"
    result = _torchrun([str(REPO / "examples" / "train_ddp.py"), "--model", "test_resnet", "--train-limit", "64",
                        "--batch-size", "16", "--device", "cpu", "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = floatify.load(out).state_dict()
    alphas = [k for k in state if k.endswith("weight_alpha")]
    assert alphas and any(state[k].item() != 0.25 for k in alphas)  # α was trained (strategy paired: λ = 1 steps)
