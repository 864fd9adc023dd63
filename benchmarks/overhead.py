"""Latency and parameter overhead of floatify.convert (CPU by default).

Original vs converted forward latency at λ = 0, 0.5 and 1, measured interleaved in one run (median of
per-round ratios), conversion time and parameter overhead, for resnet18, a ViT-tiny and a
mobilenetv3. λ = 1 is timed with each noise source (:mod:`floatify.layers.noise`): the default bank and
fresh ``torch.randn`` draws; "noise floor" is what fresh draws alone cost (one Gaussian per weight tensor).
On CUDA the timers synchronise the device.

    python benchmarks/overhead.py [--rounds 30] [--size 224] [--batches 1 32] [--device cpu|cuda]
                                  [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

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


def measure(key: str, size: int, batch: int, rounds: int, device: str) -> dict:
    torch.manual_seed(0)
    original = timm.create_model(MODELS[key]["name"], num_classes=1000, img_size=size).eval() if "vit" in key \
        else timm.create_model(MODELS[key]["name"], num_classes=1000).eval()
    start = time.perf_counter()
    converted = floatify.convert(original)
    convert_s = time.perf_counter() - start
    original, converted = original.to(device), converted.to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    weights = [p for n, p in converted.named_parameters() if n.endswith("weight") and p.ndim > 1]

    def run_lam(model, value, source="bank"):
        def f(inp):
            with floatify.lam(value), noise_source(source):
                return model(inp)
        return f

    def noise_floor(_):
        for w in weights:
            torch.randn_like(w)

    fns = {
        "original": original,
        "converted_lam0": run_lam(converted, 0.0),
        "converted_lam05": run_lam(converted, 0.5),
        "converted_lam1": run_lam(converted, 1.0),
        "converted_lam1_fresh": run_lam(converted, 1.0, "fresh"),
        "noise_floor": noise_floor,
    }
    times = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():  # warm-up
            fn(x)
            fn(x)
        order = list(fns)
        for r in range(rounds):
            random.Random(r).shuffle(order)  # interleaved, in a fresh order every round
            for k in order:
                times[k].append(_time(fns[k], x, device))
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
    parser.add_argument("--out", type=Path, default=None,
                   help="default: benchmarks/results/overhead.json on CPU, overhead_cuda.json on CUDA")
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(f"benchmarks/results/overhead{'_cuda' if args.device.startswith('cuda') else ''}.json")
    torch.set_num_threads(2)
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
