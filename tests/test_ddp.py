"""Two-process DDP (gloo, CPU): parameters stay identical across ranks, λ = 0 steps included."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "--master_addr=127.0.0.1", str(EXAMPLE), "--model", "resnet10t", "--image-size", "16", "--batch-size", "8",
           "--max-steps", "4", "--steps", "1", "--strategy", "oat", "--backend", "gloo", "--device", "cpu",
           "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0.00" in result.stdout, "the run must include λ = 0 steps: " + result.stdout
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    alphas = [k for k in a if k.endswith("weight_alpha")]
    assert alphas and any(a[k].item() != 0.25 for k in alphas), "α must have been trained"
