"""`make demo`, timed: run the README's demo command, keep its report and how long it took.

    python benchmarks/demo.py

Runs ``make demo`` (the same command the README documents), then copies runs/demo/{report.md,report.json,
tradeoff.png} to benchmarks/results/demo_* and writes benchmarks/results/demo.json: wall-clock seconds of the
whole command and the training seconds from runs/demo/history.json. Time it alone: on 2 cores a second heavy
process distorts it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    t0 = time.perf_counter()
    subprocess.run(["make", "demo"], cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    run = ROOT / "runs" / "demo"
    history = json.loads((run / "history.json").read_text())
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    for name, copy in (("report.md", "demo_report.md"), ("report.json", "demo_metrics.json"),
                       ("tradeoff.png", "demo_tradeoff.png")):
        shutil.copyfile(run / name, out / copy)
    result = {"wall_s": wall, "train_s": sum(r["seconds"] for r in history), "epochs": len(history)}
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
