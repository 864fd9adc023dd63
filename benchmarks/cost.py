"""Cost of FLOAT vs plain PGD adversarial training vs OAT/FiLM, side by side in one run.

Parameters, training step time (same attack settings: PGD-7, eps 8/255, at λ = 1), inference latency at
λ = 0 and λ = 1 and peak training memory for ResNet-18/34-class models at 32×32. Step timings are
interleaved (every round times every variant, in a shuffled order) and reported as medians and median
ratios. FLOAT is timed twice: with one weight-noise draw per training step (``noise_draw="step"``, the
default) and with a fresh draw per forward (``"forward"``, the reference code); ``float-late`` is the default step
in a loop that frees the gradients after the forwards (the attack then recomputes its noisy weights per read);
``float-paired`` is the
default strategy's whole training step (a clean pass at λ = 0 plus the PGD step at λ = 1), compared with
``plain-paired``, the same clean + PGD loss on the unconverted model. FLOAT/plain is timed again, over twice the
rounds, in a fresh process that holds only those two models (``alone``): on CPU the step time depends on the
allocator's state, which the seven models of the main run share; minor page faults per step are recorded with both,
and on CPU the pair is timed once more inside :func:`floatify.heap.keep_freed_heap`, as ``floatify.fit`` trains on
CPU with ``keep_freed_heap=True`` (``alone_fit_heap``).
On CPU the process's own peak resident set is measured too, plain and FLOAT, with glibc's default and with the kept
heap (``peak_rss_mb``: growth over the first three training steps, optimizer state included). Peak memory: a fresh
subprocess per variant runs two training steps (gradients freed before the forwards, as in ``floatify.fit``, and
again with them freed after, the other common loop order); on CUDA ``torch.cuda.max_memory_allocated``, on CPU the
growth of the peak resident set size during the steps (Linux ``VmHWM``, reset before the steps, with glibc's
mmap threshold fixed at 64 KiB so that freed tensors leave the resident set).

    python benchmarks/cost.py [--rounds 10] [--batch 64] [--device cuda] [--out benchmarks/results/cost.json]

``--compiled`` times compiled training instead (``benchmarks/cost_compiled.py``: compiled FLOAT vs compiled PGD-AT
steps, compile times, eager beside them; writes cost_compiled[_cuda].json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import floatify
import floatify.heap
from floatify.attacks import make_attack
from floatify.compile import frozen_parameters
from floatify.heap import keep_freed_heap
from floatify.losses import DEFAULT_ADV_WEIGHT, float_paired_loss

sys.path.insert(0, str(Path(__file__).parent))
from baselines import filmify  # noqa: E402

VARIANTS = ("plain", "plain-paired", "float", "float-fwd", "float-late", "float-paired", "film")
TRAIN_ONLY = ("float-fwd", "float-late", "float-paired", "plain-paired")  # reason: same models as at inference


def build(arch: str, variant: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    base = timm.create_model(arch, num_classes=10)
    if variant.startswith("float"):
        base = floatify.convert(base)
    elif variant == "film":
        base = filmify(base)
    return base.to(device)


def train_step(model, variant, opt, x, y, steps, zero_grad_first=True, frozen_attack=False):
    """One training step at λ = 1 with PGD-``steps``: the library's float_loss for FLOAT and FiLM.

    ``zero_grad_first``: free the previous gradients before the forwards (floatify.fit's loop) or after them
    (``loss = ...; opt.zero_grad(); loss.backward()``, where the previous step's gradients live through the attack).
    ``frozen_attack``: PGD-AT's attack runs with the parameters frozen (:func:`floatify.compile.frozen_parameters`),
    as compiled FLOAT's attack does: a compiled backward would otherwise compute every weight gradient.
    """
    model.train()
    if variant == "float-late":  # reason: the FLOAT step in a loop that frees the gradients after the forwards
        zero_grad_first = False
    if zero_grad_first:
        opt.zero_grad(set_to_none=True)
    if variant == "plain":  # PGD-AT: attack, then CE on the adversarial batch
        with frozen_parameters(list(model.parameters())) if frozen_attack else contextlib.nullcontext():
            x_adv = make_attack(model, "pgd", 8 / 255, steps, 2 / 255)(x, y)
        loss = F.cross_entropy(model(x_adv), y)
    elif variant == "plain-paired":  # PGD-AT with a clean term: float-paired's step without FLOAT
        clean = F.cross_entropy(model(x), y)
        x_adv = make_attack(model, "pgd", 8 / 255, steps, 2 / 255)(x, y)
        loss = (1 - DEFAULT_ADV_WEIGHT) * clean + DEFAULT_ADV_WEIGHT * F.cross_entropy(model(x_adv), y)
    elif variant == "float-paired":  # the default strategy's whole step: clean at λ = 0 + PGD at λ = 1
        loss = float_paired_loss(model, x, y, eps=8 / 255, steps=steps)
    else:
        draw = "forward" if variant == "float-fwd" else "step"
        loss = floatify.float_loss(model, x, y, 1.0, eps=8 / 255, steps=steps, noise_draw=draw)
    if not zero_grad_first:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def device_name(device: str) -> str:
    """The card (CUDA) or the processor (CPU) the numbers were measured on."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb(arch: str, variant: str, batch: int, steps: int, device: str, order: str = "first") -> float:
    """Peak memory of two training steps over the model and optimizer state, measured in a fresh process."""
    # reason: glibc keeps freed large blocks for reuse, so peak RSS depends on allocation history; with a fixed
    # mmap threshold every tensor of 64 KiB or more is its own mapping, returned on free, and the peak RSS tracks
    # the live tensors
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--peak", arch, variant, "--batch", str(batch),
                          "--steps", str(steps), "--device", device, "--zero-grad", order],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:  # reason: a failed memory probe must not lose the timings; say why it failed
        print(f"peak memory of {arch}/{variant} not measured: {out.stderr.strip().splitlines()[-1:]}", flush=True)
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def peak_rss_mb(arch: str, variant: str, batch: int, steps: int, heap: str) -> float:
    """Growth of the process's peak resident set over its first three CPU training steps, in a fresh process.

    Unlike :func:`peak_memory_mb` it keeps glibc's own behaviour (``heap``: as it comes, or the freed heap kept as
    ``floatify.fit(keep_freed_heap=True)`` keeps it), so it is what a user sees in ``top``: freed blocks glibc
    keeps count too.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, __file__, "--rss", arch, variant, "--batch", str(batch),
                          "--steps", str(steps), "--heap", heap], capture_output=True, text=True, env=env)
    if out.returncode != 0:  # reason: a failed memory probe must not lose the timings; say why it failed
        print(f"peak RSS of {arch}/{variant} not measured: {out.stderr.strip().splitlines()[-1:]}", flush=True)
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def _rss_child(arch: str, variant: str, batch: int, steps: int, heap: str) -> None:
    torch.set_num_threads(2)
    model = build(arch, variant, "cpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    Path("/proc/self/clear_refs").write_text("5")  # reason: resets VmHWM (peak RSS) to the current RSS
    base = _proc_status_bytes("VmRSS")
    with _heap(heap) as kept:
        if heap == "keep" and not kept:  # reason: not the heap asked for; say why rather than measure the other
            raise SystemExit(f"the freed heap is not kept here: {floatify.heap.heap_tunable()}")
        for _ in range(3):
            train_step(model, variant, opt, x, y, steps)
        print((_proc_status_bytes("VmHWM") - base) / 2**20)


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reason: the kernel reports kB
    raise RuntimeError(f"no {field} in /proc/self/status (peak memory on CPU needs Linux)")


def _peak_child(arch: str, variant: str, batch: int, steps: int, device: str, order: str) -> None:
    torch.set_num_threads(2)
    model = build(arch, variant, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    train_step(model, variant, opt, x, y, steps)  # reason: warm-up (lazy init, optimizer state) before the reset
    opt.zero_grad(set_to_none=True)  # reason: the baseline is the model and optimizer state, in both orders
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reason: resets VmHWM (peak RSS) to the current RSS
        base = _proc_status_bytes("VmRSS")
    for _ in range(2):
        train_step(model, variant, opt, x, y, steps, zero_grad_first=order == "first")
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _proc_status_bytes("VmHWM") - base
    print(peak / 2**20)


def minor_faults() -> int:
    """Minor page faults of this process so far (memory the kernel maps in on first touch): 0 where unknown."""
    try:
        import resource  # reason: Unix only
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


HEAPS = ("default", "keep")
"""glibc as it comes, or inside :func:`floatify.heap.keep_freed_heap` (``floatify.fit(keep_freed_heap=True)``
on CPU)."""


def _heap(heap: str) -> contextlib.AbstractContextManager:
    """The heap a child process runs in; the context yields whether glibc keeps freed heap."""
    return keep_freed_heap() if heap == "keep" else contextlib.nullcontext(False)


def step_ratio_alone(arch: str, batch: int, rounds: int, steps: int, device: str, heap: str = "default") -> dict:
    """FLOAT/plain step time in a fresh process that holds only those two models (see :func:`_pair_child`)."""
    out = subprocess.run([sys.executable, __file__, "--pair", arch, "--batch", str(batch), "--rounds", str(rounds),
                          "--steps", str(steps), "--device", device, "--heap", heap], capture_output=True, text=True)
    if out.returncode != 0:  # reason: a failed probe must not lose the other measurements; say why it failed
        print(f"FLOAT/plain alone for {arch} not measured: {out.stderr.strip().splitlines()[-1:]}", flush=True)
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pair_child(arch: str, batch: int, rounds: int, steps: int, device: str, heap: str) -> None:
    """Interleaved plain and FLOAT steps with no other model in the process.

    reason: on CPU the step time depends on the allocator's state (glibc returns freed heap to the system and the
    next step faults it back in), which the other variants of :func:`measure` share; this is the process a user
    trains in.
    """
    torch.set_num_threads(2)
    models = {k: build(arch, k, device) for k in ("plain", "float")}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x, y = torch.rand(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    with _heap(heap) as kept:
        times, faults = interleaved_steps(models, opts, x, y, steps, rounds, device)
    ratios = [p / q for p, q in zip(times["float"], times["plain"])]
    q = statistics.quantiles(ratios, n=4)
    print(json.dumps({"ratio": statistics.median(ratios), "quartiles": [q[0], q[2]], "heap_kept": bool(kept),
                      "faults_per_step": {k: statistics.median(v) for k, v in faults.items()}}))


def interleaved_steps(models: dict, opts: dict, x, y, steps: int, rounds: int, device: str,
                      after_step: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Seconds and minor page faults of each model's training step, every round in a shuffled order (one warm-up
    step each first); ``after_step(name)`` runs after each timed step, outside the timing."""
    times: dict[str, list[float]] = {k: [] for k in models}
    faults: dict[str, list[int]] = {k: [] for k in models}
    for k, m in models.items():
        train_step(m, k, opts[k], x, y, 1)
    order = list(models)
    for r in range(rounds):
        random.Random(r).shuffle(order)
        for k in order:
            sync(device)
            f, t = minor_faults(), time.perf_counter()
            train_step(models[k], k, opts[k], x, y, steps)
            sync(device)
            times[k].append(time.perf_counter() - t)
            faults[k].append(minor_faults() - f)
            if after_step is not None:
                after_step(k)
    return times, faults


def measure(arch: str, batch: int, rounds: int, steps: int, device: str) -> dict:
    variants = {k: build(arch, k, device) for k in VARIANTS}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in variants.items()}
    x, y = torch.rand(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    timed = [k for k in variants if k not in TRAIN_ONLY]
    lat: dict[str, list[float]] = {f"{k}@{v}": [] for k in timed for v in (0.0, 1.0)}

    def latency(k: str) -> None:  # reason: inference timed in the same rounds, after the variant's step
        if k in TRAIN_ONLY:
            return
        variants[k].eval()
        with torch.no_grad():
            for v in (0.0, 1.0):
                with floatify.lam(v):
                    t = time.perf_counter()
                    variants[k](x)
                    sync(device)
                    lat[f"{k}@{v}"].append(time.perf_counter() - t)

    step_t, faults = interleaved_steps(variants, opts, x, y, steps, rounds, device, latency)
    ratio = lambda a, b: statistics.median(p / q for p, q in zip(step_t[a], step_t[b]))  # noqa: E731

    def quartiles(a: str, b: str) -> list[float]:  # reason: the spread of the per-round ratios, reported with them
        q = statistics.quantiles([p / q for p, q in zip(step_t[a], step_t[b])], n=4)
        return [q[0], q[2]]

    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in variants.items()}
    return {
        "arch": arch, "batch": batch, "rounds": rounds, "pgd_steps": steps, "device": device,
        "device_name": device_name(device),
        "params": n_params,
        "params_ratio_float_plain": n_params["float"] / n_params["plain"],
        "params_ratio_film_float": n_params["film"] / n_params["float"],
        "step_s": {k: statistics.median(v) for k, v in step_t.items()},
        "step_ratio_float_plain": ratio("float", "plain"),
        "step_ratio_floatfwd_plain": ratio("float-fwd", "plain"),
        "step_ratio_floatlate_plain": ratio("float-late", "plain"),
        "step_ratio_paired_plain": ratio("float-paired", "plain"),
        "step_ratio_paired_plainpaired": ratio("float-paired", "plain-paired"),
        "step_ratio_quartiles": {"float_plain": quartiles("float", "plain"),
                                 "paired_plainpaired": quartiles("float-paired", "plain-paired")},
        "step_ratio_film_float": ratio("film", "float"),
        "minor_faults_per_step": {k: statistics.median(v) for k, v in faults.items()},
        # reason: twice the rounds: two models only, so cheap, and their ratio decides the step target
        "alone": step_ratio_alone(arch, batch, 2 * rounds, steps, device),
        "alone_fit_heap": step_ratio_alone(arch, batch, 2 * rounds, steps, device, "keep") if device == "cpu" else {},
        "latency_ms": {k: 1000 * statistics.median(v) for k, v in lat.items()},
        "peak_train_mb": {k: peak_memory_mb(arch, k, batch, steps, device) for k in VARIANTS if k != "float-late"},
        "peak_train_mb_zero_grad_late": {k: peak_memory_mb(arch, k, batch, steps, device, "late")
                                         for k in ("plain", "float", "plain-paired", "float-paired")},
        "peak_rss_mb": {h: {k: peak_rss_mb(arch, k, batch, steps, h) for k in ("plain", "float")} for h in HEAPS}
        if device == "cpu" else {},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet34"])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak", nargs=2, metavar=("ARCH", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--zero-grad", choices=("first", "late"), default="first", help=argparse.SUPPRESS)
    p.add_argument("--pair", metavar="ARCH", help=argparse.SUPPRESS)
    p.add_argument("--rss", nargs=2, metavar=("ARCH", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--heap", choices=HEAPS, default="default", help=argparse.SUPPRESS)
    p.add_argument("--compiled", action="store_true", help="compiled FLOAT vs compiled PGD-AT (cost_compiled.py)")
    p.add_argument("--compile-mode", default=None, help="--compiled: torch.compile's mode (default: default)")
    p.add_argument("--size", type=int, default=32, help="--compiled: image size in px")
    p.add_argument("--out", type=Path, default=None,
                   help="default: benchmarks/results/cost[_compiled].json on CPU, cost[_compiled]_cuda.json on CUDA")
    args = p.parse_args()
    if args.out is None:
        args.out = Path(f"benchmarks/results/cost{'_compiled' if args.compiled else ''}"
                        f"{'_cuda' if args.device.startswith('cuda') else ''}.json")
    if args.compiled:
        return _compiled(args)
    if args.peak:
        return _peak_child(*args.peak, args.batch, args.steps, args.device, args.zero_grad)
    if args.pair:
        return _pair_child(args.pair, args.batch, args.rounds, args.steps, args.device, args.heap)
    if args.rss:
        return _rss_child(*args.rss, args.batch, args.steps, args.heap)
    torch.set_num_threads(2)
    results = [measure(a, args.batch, args.rounds, args.steps, args.device) for a in args.archs]
    for r in results:
        print(f"{r['arch']}: params plain {r['params']['plain']:,} float {r['params']['float']:,} "
              f"film {r['params']['film']:,} | float/plain {r['params_ratio_float_plain']:.4f} "
              f"film/float {r['params_ratio_film_float']:.3f}")
        print(f"  step (PGD-{r['pgd_steps']}, batch {r['batch']}): " +
              ", ".join(f"{k} {v:.2f}s" for k, v in r["step_s"].items()) +
              f" | float/plain {r['step_ratio_float_plain']:.3f} float-fwd/plain {r['step_ratio_floatfwd_plain']:.3f}"
              f" float-late/plain {r['step_ratio_floatlate_plain']:.3f}"
              f" float-paired/plain-paired {r['step_ratio_paired_plainpaired']:.3f}"
              f" film/float {r['step_ratio_film_float']:.3f}")
        if r["alone"]:
            print(f"  float/plain alone in a process {r['alone']['ratio']:.3f} "
                  f"(quartiles {r['alone']['quartiles'][0]:.3f}-{r['alone']['quartiles'][1]:.3f}); minor page faults "
                  f"per step: {r['alone']['faults_per_step']}, with every variant: {r['minor_faults_per_step']}")
        if r["alone_fit_heap"]:
            kept = r["alone_fit_heap"]
            print(f"  float/plain alone, freed heap kept (fit(keep_freed_heap=True)) {kept['ratio']:.3f} "
                  f"(quartiles {kept['quartiles'][0]:.3f}-{kept['quartiles'][1]:.3f}); "
                  f"faults {kept['faults_per_step']}")
        if r["peak_rss_mb"]:
            print("  peak RSS growth MB, plain/float: " + ", ".join(
                f"{h} {v['plain']:.0f}/{v['float']:.0f}" for h, v in r["peak_rss_mb"].items()))
        print("  latency ms: " + ", ".join(f"{k} {v:.1f}" for k, v in r["latency_ms"].items()))
        print("  peak train MB: " + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_train_mb"].items()))
        print("  peak train MB, zero_grad after the forwards: "
              + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_train_mb_zero_grad_late"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


def _compiled(args) -> None:
    from cost_compiled import refuse, run

    from floatify.compile import check_compile_options

    try:
        check_compile_options(True, args.compile_mode)
    except ValueError as err:
        refuse(str(err))
    torch.set_num_threads(2)
    rows = run(args.archs, args.batch, args.rounds, args.steps, args.size, args.compile_mode, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
