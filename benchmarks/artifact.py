"""The trained dial as an artifact: save/load round trips over the model zoo, and load time against timm.

1. Round trips: every non-slow model of the conversion zoo (timm and torchvision, ``tests/zoo_models.py``), plus a
   pruned (FLOATS, density 0.2) and a frozen (λ = 0.3) resnet18: ``floatify.save`` then ``floatify.load``; λ = 0
   logits must be bit-identical, and λ = 0.5 identical under the same seed (fresh noise draws). Models built by name
   load from the folder alone; the others (a timm model built with structural kwargs such as ``depth=2`` and no
   ``arch=``) load with ``model=<the unconverted model>``; which path each took is recorded.
2. Load time, resnet50 (1000 classes): ``floatify.load(folder)`` against ``timm.create_model`` +
   ``load_state_dict(safetensors.torch.load_file(...))`` of the plain model; interleaved, median of ``--rounds``.
   Target: at most 1.2×.

    python benchmarks/artifact.py            # writes benchmarks/results/artifact.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import floatify  # noqa: E402
from floatify.artifact import read_config  # noqa: E402
from floatify.io import atomic_write  # noqa: E402
from floatify.layers.noise import noise_source  # noqa: E402
from floatify.models import create_model  # noqa: E402


def _logits(model, x, lam):
    torch.manual_seed(1)
    with noise_source("fresh"), floatify.lam(lam), torch.no_grad():
        return model(x)


def round_trip(name: str, model, build, size: int, folder: Path) -> dict:
    model.eval()
    t0 = time.perf_counter()
    floatify.save(model, folder)
    by_name = read_config(folder)["architecture"] is not None
    again = floatify.load(folder) if by_name else floatify.load(folder, model=build())
    seconds = time.perf_counter() - t0
    x = torch.rand(2, 3, size, size)
    exact = {str(lam): bool(torch.equal(_logits(model, x, lam), _logits(again, x, lam))) for lam in (0.0, 0.5)}
    return {"model": name, "loaded_by_name": by_name, "exact": exact, "seconds": round(seconds, 3)}


def zoo_round_trips(root: Path) -> list[dict]:
    from zoo_models import ZOO

    rows = []
    for case in [c for c in ZOO if not c.slow]:
        model = floatify.convert(case.build())
        rows.append(round_trip(case.name, model, case.build, case.input_size, root / case.name))
        print(json.dumps(rows[-1]), flush=True)
    pruned = floatify.convert(create_model("resnet18", 10))
    floatify.sparsify(pruned, 0.2, criterion="magnitude")
    frozen = floatify.freeze(floatify.convert(create_model("resnet18", 10)), lam=0.3, seed=0)
    for name, model in (("resnet18 pruned (density 0.2)", pruned), ("resnet18 frozen (λ = 0.3)", frozen)):
        rows.append(round_trip(name, model, None, 32, root / name.split()[1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def load_time(root: Path, rounds: int) -> dict:
    import timm
    from safetensors.torch import load_file, save_file

    folder = floatify.save(floatify.convert(create_model("resnet50", 1000)), root / "resnet50")
    plain = root / "resnet50-plain.safetensors"
    save_file(timm.create_model("resnet50", num_classes=1000).state_dict(), str(plain))

    def baseline():
        timm.create_model("resnet50", num_classes=1000).load_state_dict(load_file(str(plain)))

    times: dict[str, list[float]] = {"floatify.load": [], "timm + load_state_dict": []}
    for _ in range(rounds):
        for label, run in (("floatify.load", lambda: floatify.load(folder)), ("timm + load_state_dict", baseline)):
            t0 = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["floatify.load"] / medians["timm + load_state_dict"]
    return {"model": "resnet50 (1000 classes)", "rounds": rounds, "median_seconds": medians,
            "ratio": round(ratio, 3), "target": 1.2, "met": ratio <= 1.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "artifact.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        rows = zoo_round_trips(Path(tmp))
        timing = load_time(Path(tmp), args.rounds)
    result = {"round_trips": rows, "models": len(rows),
              "all_exact_at_lam0": all(r["exact"]["0.0"] for r in rows),
              "all_exact_at_lam05_same_seed": all(r["exact"]["0.5"] for r in rows),
              "load_time": timing, "threads": torch.get_num_threads()}
    atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "round_trips"}, indent=2))


if __name__ == "__main__":
    main()
