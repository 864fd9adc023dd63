"""Latency and parameter overhead of floatify.convert (CPU by default).

Original vs converted forward latency at λ = 0, 0.5 and 1, measured interleaved in one run (median of
per-round ratios), conversion time and parameter overhead, for resnet18, a ViT-tiny and a
mobilenetv3. λ = 1 is timed with each noise source (:mod:`floatify.layers.noise`): the default bank and
fresh ``torch.randn`` draws; "noise floor" is what fresh draws alone cost (one Gaussian per weight tensor).
On CUDA the timers synchronise the device.

    python benchmarks/overhead.py [--rounds 30] [--size 224] [--batches 1 32] [--device cpu|cuda] [--compiled]
                                  [--out benchmarks/results/overhead.json]

``--compiled`` times ``torch.compile`` (inductor) of the original and of the converted model at λ = 0 and 1
instead (writes overhead_compiled.json): without autograd a compiled CPU forward makes each noisy weight with one
``floatify::noisy_weight`` call (:mod:`floatify.layers.noisy_weight`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

# reason: inductor's pool of compile workers outlives the compilation and can skew the timings beside it (an
# eager λ = 1 forward read 1.8x once); compiling in-process keeps the timed process alone
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import timm  # noqa: E402
import torch  # noqa: E402

import floatify
from floatify.layers.noise import noise_source

sys.path.insert(0, str(Path(__file__).parent))
from cost import device_name  # noqa: E402

MODELS = {
    "resnet18": dict(name="resnet18"),
    "vit_tiny": dict(name="vit_tiny_patch16_224"),
    "mobilenetv3": dict(name="mobilenetv3_large_100"),
}


def _time(fn, x, device: str) -> float:
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(x)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _models(key: str, size: int, device: str) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    """The original model, its conversion (both eval, on ``device``) and the seconds the conversion took."""
    torch.manual_seed(0)
    original = timm.create_model(MODELS[key]["name"], num_classes=1000, img_size=size).eval() if "vit" in key \
        else timm.create_model(MODELS[key]["name"], num_classes=1000).eval()
    start = time.perf_counter()
    converted = floatify.convert(original)
    convert_s = time.perf_counter() - start
    return original.to(device), converted.to(device), convert_s


def _interleaved(fns: dict, x: torch.Tensor, rounds: int, device: str) -> dict[str, list[float]]:
    """Per-round times of every function, two warm-up calls each, in a fresh shuffled order every round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():  # warm-up (and, for compiled functions, the compilation)
            fn(x)
            fn(x)
        order = list(fns)
        for r in range(rounds):
            random.Random(r).shuffle(order)
            for k in order:
                times[k].append(_time(fns[k], x, device))
    return times


def _lam(model, value, source="bank"):
    def f(inp):
        with floatify.lam(value), noise_source(source):
            return model(inp)
    return f


def measure_compiled(key: str, size: int, batch: int, rounds: int, device: str) -> dict:
    """``torch.compile`` (inductor) of the original and of the converted model at λ = 0 and 1, with the eager
    original and the eager λ = 1 beside them; ratios are over the compiled original."""
    original, converted, _ = _models(key, size, device)
    compiled_original, compiled_converted = torch.compile(original), torch.compile(converted)
    fns = {"original": original, "compiled_original": compiled_original,
           "compiled_lam0": _lam(compiled_converted, 0.0), "compiled_lam1": _lam(compiled_converted, 1.0),
           "converted_lam1": _lam(converted, 1.0)}
    times = _interleaved(fns, torch.rand(batch, 3, size, size, device=device), rounds, device)
    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["compiled_original"])) for k in fns}
    return {"model": MODELS[key]["name"], "input": [batch, 3, size, size], "device": device,
            "device_name": device_name(device), "rounds": rounds,
            "median_ms": {k: 1000 * statistics.median(v) for k, v in times.items()},
            "ratio_over_compiled_original": ratio}


def measure(key: str, size: int, batch: int, rounds: int, device: str) -> dict:
    original, converted, convert_s = _models(key, size, device)
    x = torch.rand(batch, 3, size, size, device=device)
    weights = [p for n, p in converted.named_parameters() if n.endswith("weight") and p.ndim > 1]

    def noise_floor(_):
        for w in weights:
            torch.randn_like(w)

    fns = {
        "original": original,
        "converted_lam0": _lam(converted, 0.0),
        "converted_lam05": _lam(converted, 0.5),
        "converted_lam1": _lam(converted, 1.0),
        "converted_lam1_fresh": _lam(converted, 1.0, "fresh"),
        "noise_floor": noise_floor,
    }
    times = _interleaved(fns, x, rounds, device)
    ratio0 = statistics.median(a / b for a, b in zip(times["converted_lam0"], times["original"]))
    ratio1 = statistics.median(a / b for a, b in zip(times["converted_lam1"], times["original"]))
    ratio05 = statistics.median(a / b for a, b in zip(times["converted_lam05"], times["original"]))
    ratio1_fresh = statistics.median(a / b for a, b in zip(times["converted_lam1_fresh"], times["original"]))
    s = floatify.summary(converted)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return {
        "model": MODELS[key]["name"],
        "input": [batch, 3, size, size],
        "device": device,
        "device_name": device_name(device),
        "rounds": rounds,
        "median_ms": med,
        "latency_ratio_lam0": ratio0,
        "latency_ratio_lam05": ratio05,
        "latency_ratio_lam1": ratio1,
        "latency_ratio_lam1_fresh": ratio1_fresh,
        "lam1_extra_ms": med["converted_lam1"] - med["original"],
        "noise_floor_ms": med["noise_floor"],
        "conversion_s": convert_s,
        "params_original": s.original_params,
        "params_added": s.added_params,
        "param_overhead_percent": s.overhead_percent,
        "conditioned_weights": len(s.conditioned),
        "dual_bn": len(s.dual_bn),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--compiled", action="store_true",
                        help="time torch.compile (inductor) of the original and the converted model instead")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/overhead[_compiled][_cuda].json")
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(f"benchmarks/results/overhead{'_compiled' if args.compiled else ''}"
                        f"{'_cuda' if args.device.startswith('cuda') else ''}.json")
    torch.set_num_threads(2)
    if args.compiled:
        rows = [measure_compiled(k, args.size, b, args.rounds, args.device) for b in args.batches for k in args.models]
        print(f"{'model':24s} {'batch':>5s} {'compiled ms':>11s} {'λ=0':>6s} {'λ=1':>6s} {'eager λ=1':>9s}  "
              f"({args.device}, {args.size} px; latency over the compiled original)")
        for r in rows:
            q = r["ratio_over_compiled_original"]
            print(f"{r['model']:24s} {r['input'][0]:5d} {r['median_ms']['compiled_original']:11.1f} "
                  f"{q['compiled_lam0']:6.3f} {q['compiled_lam1']:6.2f} {q['converted_lam1']:9.2f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
        return print(f"wrote {args.out}")
    results = [measure(k, args.size, b, args.rounds, args.device) for b in args.batches for k in args.models]
    print(f"{'model':24s} {'batch':>5s} {'orig ms':>8s} {'λ=0':>6s} {'λ=.5':>6s} {'λ=1':>6s} {'fresh':>6s} "
          f"{'λ=1 +ms':>8s} {'floor ms':>8s} {'params +%':>9s}  ({args.device}, {args.size} px; latency ratios)")
    for r in results:
        print(f"{r['model']:24s} {r['input'][0]:5d} {r['median_ms']['original']:8.1f} {r['latency_ratio_lam0']:6.3f} "
              f"{r['latency_ratio_lam05']:6.3f} {r['latency_ratio_lam1']:6.3f} {r['latency_ratio_lam1_fresh']:6.2f} "
              f"{r['lam1_extra_ms']:8.1f} {r['noise_floor_ms']:8.1f} {r['param_overhead_percent']:9.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
