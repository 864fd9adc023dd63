"""Conversion coverage over the timm + torchvision zoo the tests use (tests/zoo_models.py).

For every model: convert, check λ = 0 reproduces the original bitwise, no layer was skipped, and a λ = 1
forward is finite and differs from λ = 0. A model counts as covered only if all of these hold; failures
are listed with the reason. Like the tests, all-zero initialised parameters get random values first.

    python benchmarks/coverage.py [--out benchmarks/results/coverage.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import floatify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import wake_up  # noqa: E402
from zoo_models import TIMM_CASES, ZOO  # noqa: E402


def check(case) -> str | None:
    """None when the model is covered, else why not."""
    torch.manual_seed(0)
    # reason: zero-initialised heads/gains (timm MLP-Mixer/ResMLP/gMLP heads, torchvision ViT head, layer
    # scales) have std(W) = 0 at birth, so their noise is zero until training moves them; the tests do the same.
    original = wake_up(case.build()).eval()
    x = torch.rand(2, 3, case.input_size, case.input_size)
    with torch.no_grad():
        expected = original(x)
        model = floatify.convert(original)
        if not torch.equal(model(x), expected):
            return "λ = 0 output differs from the original"
        skipped = floatify.summary(model).skipped
        if skipped:
            return f"skipped layers: {skipped}"
        with floatify.lam(1.0):
            noisy = model(x)
        if not torch.isfinite(noisy).all():
            return "non-finite output at λ = 1"
        if torch.equal(noisy, expected):
            return "λ = 1 output equals λ = 0: the noise does not reach the output"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/coverage.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    t0, failures = time.perf_counter(), {}
    timm_names = {c.name for c in TIMM_CASES}
    for case in ZOO:
        try:
            reason = check(case)
        except Exception as err:  # reason: a crash is a coverage failure to report, not to hide
            reason = f"{type(err).__name__}: {err}"
        if reason is not None:
            failures[case.name] = reason
        print(f"{case.name}: {'ok' if reason is None else reason}", flush=True)
    result = {"total": len(ZOO), "converted": len(ZOO) - len(failures),
              "timm": sum(c.name in timm_names for c in ZOO), "torchvision": sum(c.name not in timm_names for c in ZOO),
              "failures": failures, "seconds": time.perf_counter() - t0,
              "check": "convert; λ = 0 bitwise equal to the original; no skipped layer; "
                       "λ = 1 output finite and different"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"converted {result['converted']}/{result['total']}")


if __name__ == "__main__":
    main()
