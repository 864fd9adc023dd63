"""What a CPU user can do instead of floatify's glibc tuning: the FLOAT/plain training step under other allocators.

``floatify.fit`` leaves the process's allocator alone unless asked (``keep_freed_heap=True``): on CPU glibc returns
freed heap to the system at ``zero_grad`` and the next FLOAT step faults it back in. Preloading jemalloc or tcmalloc
(``LD_PRELOAD``) keeps freed memory for reuse without any floatify setting. This script times the FLOAT/plain step
ratio (``benchmarks/cost.py --pair``: a fresh process holding only a plain and a FLOAT resnet18, PGD-7, batch 64,
32 px, interleaved medians) under glibc as it comes, glibc with ``keep_freed_heap``, jemalloc and tcmalloc (those
found on this machine: Debian's libjemalloc2 and libtcmalloc-minimal4; jemalloc also with its page purging off,
``MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1``), one after the other.

    python benchmarks/allocators.py [--rounds 30] [--arch resnet18]   # writes benchmarks/results/allocators.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARIES = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
KEEP_PAGES = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
SEARCH = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


def _find(name: str) -> str | None:
    return next((str(Path(d) / name) for d in SEARCH if (Path(d) / name).is_file()), None)


def _pair(arch: str, rounds: int, heap: str, preload: str | None, conf: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    if preload:
        env["LD_PRELOAD"] = preload
    if conf:
        env["MALLOC_CONF"] = conf
    cmd = [sys.executable, str(HERE / "cost.py"), "--pair", arch, "--batch", "64", "--rounds", str(rounds),
           "--steps", "7", "--device", "cpu", "--heap", heap]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "allocators.json")
    args = parser.parse_args()
    rows = {"glibc (as it comes)": _pair(args.arch, args.rounds, "default", None),
            "glibc, keep_freed_heap=True": _pair(args.arch, args.rounds, "keep", None)}
    for name, library in LIBRARIES.items():
        path = _find(library)
        rows[f"{name} (LD_PRELOAD)"] = _pair(args.arch, args.rounds, "default", path) if path else \
            {"error": f"{library} not installed"}
        print(name, rows[f"{name} (LD_PRELOAD)"], flush=True)
    jemalloc = _find(LIBRARIES["jemalloc"])
    if jemalloc:  # reason: jemalloc purges freed pages after 10 s by default; off, it keeps them as glibc's tuning does
        rows["jemalloc, MALLOC_CONF=" + KEEP_PAGES] = _pair(args.arch, args.rounds, "default", jemalloc, KEEP_PAGES)
    result = {"arch": args.arch, "rounds": args.rounds, "batch": 64, "attack": "PGD-7", "rows": rows}
    from floatify.io import atomic_write

    atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
