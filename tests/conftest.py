import os
import sys

import pytest
import torch

from floatify.cli import main

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------- the command line (tests/cli)
TINY = ["--model", "resnet10t", "--image-size", "8", "--train-limit", "256", "--epochs", "1", "--batch-size", "128",
        "--steps", "1",
        "--lams", "0,1", "--eval-attacks", "clean,pgd,eot-pgd,pgd:nonoise", "--eval-steps", "2", "--eot-draws", "2",
        "--score-draws", "2", "--eval-limit", "48", "--no-progress"]


@pytest.fixture(scope="module")
def digits():
    """The 8 px digits of the audit tests (tests/audit_models.py)."""
    import audit_models

    return audit_models.digits()


@pytest.fixture(scope="module")
def pgd_at():
    """A small PGD-trained model, trained once per test module (its random numbers stay the module's own)."""
    import audit_models

    return audit_models.pgd_at()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--out", str(out)] + TINY) == 0
    return out


@pytest.fixture
def tiny() -> list[str]:
    """The options of a tiny training run (resnet10t at 8 px, one epoch, a cheap evaluation)."""
    return list(TINY)


@pytest.fixture
def run_cli(capsys):
    """``run_cli(argv) -> (exit code, stderr)``."""
    def run(argv):
        code = main([str(a) for a in argv])
        return code, capsys.readouterr().err
    return run
