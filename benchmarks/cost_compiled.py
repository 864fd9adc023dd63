"""``cost.py --compiled``: a compiled FLOAT training step vs a compiled plain PGD-AT step, eager beside them.

Four models per architecture, each trained at λ = 1 with PGD-``steps`` exactly as ``cost.py`` times them: plain and
FLOAT eager, and plain and FLOAT compiled with the same ``torch.compile`` backend and mode — plain in place
(``module.compile``), FLOAT as ``floatify.fit(compile=True)`` compiles it (:func:`floatify.compile.compiled_training`:
the step's held noise as graph inputs). Compile time is each compiled model's first step minus its median steady
step, each model compiled with empty inductor caches (as on a first run); steady steps are interleaved (every round
times every model, in a shuffled order) and reported as medians and median per-round ratios with their quartiles.
Graph counts are dynamo's frames per model over the whole run (one per train/eval mode and λ > 0 or not: never one
per round), and ``ops_per_step`` counts the profiler's operator events of one steady step (host work, not timings).

A torch that cannot compile here is an error, never a silent eager run in the compiled columns.

    python benchmarks/cost.py --compiled [--archs resnet18 resnet34] [--rounds 10] [--batch 64] [--size 32]
        [--compile-mode default] [--device cpu] [--out benchmarks/results/cost_compiled.json]
"""

from __future__ import annotations

import contextlib
import random
import statistics
import sys
import time
from typing import NoReturn

import torch
import torch._dynamo.testing

from floatify.compile import check_compile_device, compiled_training, compiler_problem

KINDS = ("plain", "float", "plain-compiled", "float-compiled")


def refuse(message: str) -> NoReturn:
    """The compiled columns cannot be measured here: one line on stderr, exit code 2."""
    print(f"cost.py --compiled: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_can_compile(mode: str | None, device: str) -> None:
    """Stop with one line where the mode cannot run on the device or torch cannot compile here."""
    try:
        check_compile_device(mode, device)
    except ValueError as err:
        refuse(str(err))
    problem = compiler_problem(device)
    if problem is not None:
        refuse(f"{problem}; the compiled columns would be eager ones")


@contextlib.contextmanager
def _cold_caches():
    """Inductor's caches empty, as on a first run: a fresh cache folder for one model's compilation.

    reason: a warm on-disk cache would hide the compile time; a shared in-process one would let the second model
    reuse the first one's kernels (inductor's ``force_disable_caches`` instead recompiles every repeated kernel,
    which no real run does)."""
    import tempfile

    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    with tempfile.TemporaryDirectory(prefix="floatify-inductor-") as folder, temporary_cache_dir(folder):
        yield


def _step(model, kind: str, opt, x, y, steps: int) -> None:
    from cost import train_step  # reason: the very step cost.py times, eager and compiled alike

    # reason: compiled PGD-AT's attack with frozen parameters, as compiled FLOAT's is (floatify.compile)
    train_step(model, "float" if kind.startswith("float") else "plain", opt, x, y, steps,
               frozen_attack=kind == "plain-compiled")


def _profile_ops(model, kind: str, opt, x, y, steps: int) -> int:
    """Operator events the profiler records in one steady step: what the host dispatches (CPU ops and launches)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _step(model, kind, opt, x, y, steps)
    return sum(e.count for e in prof.key_averages())


def measure_compiled(arch: str, batch: int, rounds: int, steps: int, size: int, mode: str | None,
                     device: str) -> dict:
    from cost import build, device_name, sync

    check_can_compile(mode, device)
    counters = {k: torch._dynamo.testing.CompileCounterWithBackend("inductor") for k in KINDS if "compiled" in k}
    models = {k: build(arch, k.removesuffix("-compiled"), device) for k in KINDS}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    with contextlib.ExitStack() as stack:
        # reason: the counter wraps inductor, so graphs are counted and compiled exactly as floatify.fit compiles them
        models["plain-compiled"].compile(backend=counters["plain-compiled"], mode=mode)
        compiled = stack.enter_context(compiled_training(models["float-compiled"], mode,
                                                         backend=counters["float-compiled"]))
        if not compiled:
            refuse("floatify.compile fell back to eager")
        probes = {k: c.frame_count for k, c in counters.items()}  # reason: the probe graph is not the model's
        first = {}
        for k in KINDS:  # reason: the first step of each model compiles it (eager ones: their warm-up)
            with _cold_caches() if k in counters else contextlib.nullcontext():
                sync(device)
                t = time.perf_counter()
                _step(models[k], k, opts[k], x, y, steps)
                sync(device)
                first[k] = time.perf_counter() - t
        for k, counter in counters.items():
            if counter.frame_count == probes[k]:  # reason: never a silent eager number in a compiled column
                refuse(f"{k} ran without compiling a graph")
        for k in KINDS:  # reason: one untimed step more each, so no lazy first-run work lands in a timed round
            _step(models[k], k, opts[k], x, y, steps)
        times: dict[str, list[float]] = {k: [] for k in KINDS}
        order = list(KINDS)
        for r in range(rounds):
            random.Random(r).shuffle(order)
            for k in order:
                sync(device)
                t = time.perf_counter()
                _step(models[k], k, opts[k], x, y, steps)
                sync(device)
                times[k].append(time.perf_counter() - t)
        ops = {k: _profile_ops(models[k], k, opts[k], x, y, steps) for k in KINDS}
        graphs = {k: c.frame_count - probes[k] for k, c in counters.items()}

    def ratio(a: str, b: str) -> dict:
        per_round = [p / q for p, q in zip(times[a], times[b])]
        q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else [per_round[0]] * 3
        return {"median": statistics.median(per_round), "quartiles": [q[0], q[2]]}

    step = {k: statistics.median(v) for k, v in times.items()}
    compile_s = {k: first[k] - step[k] for k in counters}
    return {
        "arch": arch, "batch": batch, "size": size, "rounds": rounds, "pgd_steps": steps, "device": device,
        "device_name": device_name(device), "compile_mode": mode or "default", "backend": "inductor",
        "torch": torch.__version__, "step_s": step, "first_step_s": first, "compile_s": compile_s,
        "compile_ratio_float_plain": compile_s["float-compiled"] / compile_s["plain-compiled"],
        "step_ratio_compiled_float_plain": ratio("float-compiled", "plain-compiled"),
        "step_ratio_eager_float_plain": ratio("float", "plain"),
        "speedup_compiled": {"plain": ratio("plain", "plain-compiled"), "float": ratio("float", "float-compiled")},
        "graphs": graphs, "ops_per_step": ops,
    }


def run(archs: list[str], batch: int, rounds: int, steps: int, size: int, mode: str | None,
        device: str) -> list[dict]:
    """Every architecture measured (each compile with cold caches), printed as it goes."""
    check_can_compile(mode, device)
    rows = []
    for arch in archs:
        r = measure_compiled(arch, batch, rounds, steps, size, mode, device)
        c, e = r["step_ratio_compiled_float_plain"], r["step_ratio_eager_float_plain"]
        print(f"{arch} ({size} px, batch {batch}, PGD-{steps}, {r['compile_mode']}): compiled FLOAT/plain step "
              f"{c['median']:.3f} (quartiles {c['quartiles'][0]:.3f}-{c['quartiles'][1]:.3f}), eager "
              f"{e['median']:.3f}; compile s plain {r['compile_s']['plain-compiled']:.1f} FLOAT "
              f"{r['compile_s']['float-compiled']:.1f} ({r['compile_ratio_float_plain']:.2f}x); graphs {r['graphs']}; "
              f"ops/step {r['ops_per_step']}", flush=True)
        rows.append(r)
    return rows
