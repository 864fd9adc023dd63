"""Serve the dial: one exported program answers requests that each carry their own operating point.

    python examples/serve.py                                  # builds a random resnet18 dial on the fly
    python examples/serve.py --model runs/demo                # a trained run folder (or hf-hub:owner/name)
    python examples/serve.py --model runs/demo --ask clean,balanced,min_robust=60,0.5
    python examples/serve.py --save runs/dial.pt2             # ... and keeps the program
    python examples/serve.py --program runs/dial.pt2 --image-size 32

A request asks for a raw λ (``0.5``), a named level (``clean``: λ = 0; ``robust``: the most robust measured λ;
``balanced``: the most robust λ losing at most 1 point of clean accuracy) or a constraint (``max_clean_drop=2``,
``min_robust=60``, in percentage points). Levels and constraints are resolved once, from the report saved with
the model (``Report.choose_lam``); a model without a report accepts raw λ only.

The program comes from ``floatify.export(model, example_inputs)`` (``torch.export.save`` writes it). Loading
and running it needs torch only. A worker thread drains the request queue, groups the pending requests by λ,
runs one batch per λ (λ is a runtime input of the program: no re-export, no recompilation) and completes each
request's future. At the end it prints, per λ, how many requests were answered, the mean batch size and the
request latency (queueing + compute).
"""

from __future__ import annotations

import argparse
import math
import queue
import random
import statistics
import threading
import time
from collections import defaultdict
from concurrent.futures import Future

import torch


def build_program(image_size: int, num_classes: int) -> torch.export.ExportedProgram:
    """A random resnet18 converted to FLOAT and exported with λ as an input (stands in for a trained one)."""
    import floatify
    from floatify.models import create_model

    model = floatify.convert(create_model("resnet18", num_classes))
    return floatify.export(model.eval(), torch.rand(2, 3, image_size, image_size))


LEVELS = {"clean": None, "robust": None, "balanced": {"max_clean_drop": 1.0}}
CONSTRAINTS = ("max_clean_drop", "min_robust")


def resolve_lam(request: str, report) -> float:
    """The λ a request asks for: a number, a named level (:data:`LEVELS`) or ``max_clean_drop=X``/``min_robust=Y``.

    >>> resolve_lam("0.25", None)
    0.25
    """
    try:
        return float(request)
    except ValueError:
        pass
    if report is None:
        raise ValueError(f"'{request}' needs the model's report (a run folder or a model saved with report=); "
                         f"ask for a number in [0, 1] instead")
    if request == "clean":
        return 0.0
    if request == "robust":
        headline = report.headline or report.clean_label
        return max(report.lams, key=lambda v: report.score(v, headline).mean)
    key, _, value = request.partition("=")
    if request in LEVELS:
        constraint = LEVELS[request]
    elif key in CONSTRAINTS and value:
        constraint = {key: float(value)}
    else:
        raise ValueError(f"unknown request '{request}': ask for a λ in [0, 1], {', '.join(LEVELS)}, or "
                         f"{'=X, '.join(CONSTRAINTS)}=X")
    return float(report.choose_lam(**constraint).lam)


class DialServer:
    """Batches requests by λ: ``submit(image, lam)`` returns a future of the logits."""

    def __init__(self, program: torch.export.ExportedProgram, max_batch: int = 16, max_wait_ms: float = 5.0):
        self.run = program.module()
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.requests: queue.Queue = queue.Queue()
        self.stats: dict[float, dict[str, list]] = defaultdict(lambda: {"latency": [], "batch": [], "compute": []})
        self.worker = threading.Thread(target=self._serve, daemon=True)
        self.worker.start()

    def submit(self, image: torch.Tensor, lam: float) -> Future:
        lam = float(lam)
        if math.isnan(lam) or not 0.0 <= lam <= 1.0:  # reason: the program does not range-check λ
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        future: Future = Future()
        self.requests.put((image, lam, time.perf_counter(), future))
        return future

    def close(self) -> None:
        self.requests.put(None)
        self.worker.join()

    def _serve(self) -> None:
        while True:
            first = self.requests.get()
            if first is None:
                return
            pending, deadline = [first], time.perf_counter() + self.max_wait
            while len(pending) < 4 * self.max_batch and (left := deadline - time.perf_counter()) > 0:
                try:
                    item = self.requests.get(timeout=left)
                except queue.Empty:
                    break
                if item is None:
                    self.requests.put(None)  # reason: answer what is pending, then stop
                    break
                pending.append(item)
            by_lam: dict[float, list] = defaultdict(list)
            for item in pending:
                by_lam[item[1]].append(item)
            for lam, items in by_lam.items():
                for start in range(0, len(items), self.max_batch):
                    self._answer(lam, items[start : start + self.max_batch])

    def _answer(self, lam: float, items: list) -> None:
        began = time.perf_counter()
        try:
            with torch.no_grad():
                logits = self.run(torch.stack([image for image, *_ in items]), torch.tensor(lam))
        except Exception as err:  # reason: a failed batch fails its requests, not the server
            for *_, future in items:
                future.set_exception(err)
            return
        done = time.perf_counter()
        for (_, _, submitted, future), row in zip(items, logits, strict=True):
            self.stats[lam]["latency"].append(done - submitted)
            future.set_result(row)
        self.stats[lam]["batch"].append(len(items))
        self.stats[lam]["compute"].append(done - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a saved dial: a run folder, a floatify.save folder or hf-hub:owner/name")
    parser.add_argument("--program", help="an exported dial (.pt2); default: build a random resnet18 one")
    parser.add_argument("--save", help="where to save the program built on the fly")
    parser.add_argument("--image-size", type=int, default=32, help="request image size (default 32)")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the model built on the fly")
    parser.add_argument("--requests", type=int, default=200, help="number of requests to send (default 200)")
    parser.add_argument("--ask", default="0,0.25,0.5,1",
                        help="what the clients ask for: λ values, levels (clean, balanced, robust) or constraints "
                             "(max_clean_drop=2, min_robust=60), comma-separated (default 0,0.25,0.5,1)")
    parser.add_argument("--max-batch", type=int, default=16, help="largest batch per λ (default 16)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second sent (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    report = None
    start = time.perf_counter()
    if args.model:
        import floatify
        from floatify.artifact import load_report, read_config

        model, report = floatify.load(args.model), load_report(args.model)
        size = read_config(args.model)["preprocessing"]["input_size"]
        args.image_size = size[-1] if size else args.image_size
        program = floatify.export(model, torch.rand(2, 3, args.image_size, args.image_size))
        print(f"loaded and exported {args.model} in {time.perf_counter() - start:.1f} s")
    elif args.program:
        program = torch.export.load(args.program)
        print(f"loaded {args.program} in {time.perf_counter() - start:.1f} s")
    else:
        program = build_program(args.image_size, args.num_classes)
        print(f"built and exported a random resnet18 dial in {time.perf_counter() - start:.1f} s")
    if args.save:
        torch.export.save(program, args.save)
        print(f"saved to {args.save}")
    asked = {request: resolve_lam(request, report) for request in args.ask.split(",") if request.strip()}
    for request, lam in asked.items():
        print(f"  '{request}' -> λ = {lam:.3f}")
    lams = sorted(set(asked.values()))

    server = DialServer(program, max_batch=args.max_batch)
    for lam in lams:  # warm-up (first calls of each branch are slower), not counted
        server.submit(torch.rand(3, args.image_size, args.image_size), lam).result()
    server.stats.clear()
    futures = []
    for _ in range(args.requests):
        lam = rng.choice(lams)
        futures.append((lam, server.submit(torch.rand(3, args.image_size, args.image_size), lam)))
        time.sleep(rng.expovariate(args.rate))
    answers = [(lam, f.result()) for lam, f in futures]
    server.close()

    print(f"{'λ':>5} {'requests':>8} {'mean batch':>10} {'compute ms/batch':>16} {'latency p50 ms':>14} "
          f"{'p95 ms':>8}  predictions")
    for lam in sorted(server.stats):
        latency = sorted(1000 * t for t in server.stats[lam]["latency"])
        batches = server.stats[lam]["batch"]
        p95 = latency[min(len(latency) - 1, int(0.95 * len(latency)))]
        top = [int(a.argmax()) for v, a in answers if v == lam]
        compute = 1000 * statistics.mean(server.stats[lam]["compute"])
        print(f"{lam:5.2f} {len(latency):8d} {statistics.mean(batches):10.1f} {compute:16.1f} "
              f"{statistics.median(latency):14.1f} {p95:8.1f}  {len(set(top))} distinct top-1 classes")


if __name__ == "__main__":
    main()
