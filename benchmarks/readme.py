"""Fill the README's generated blocks from the result files, so every number in it is a measured one.

    python benchmarks/readme.py          # rewrite the blocks of README.md
    python benchmarks/readme.py --check  # exit 1 (and say which block) when README.md and the results disagree

A block is the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; its content is rendered from
``benchmarks/results/``:

* ``commands``: ``make demo`` and ``make test`` with their measured times (``timings.json``);
* ``results``: the dial of ``make demo`` on the embedded digits (``demo_metrics.json``: λ, clean, headline robust
  accuracy, its attack, eps and draws) and what a model trained only for robustness (PGD-AT) gets in the same
  setting as FLOAT's default recipe (``tradeoff.json``, mean over seeds).

Example:
    >>> fill("a\\n<!-- x:start -->\\nold\\n<!-- x:end -->\\nb\\n", {"x": "new"})
    'a\\n<!-- x:start -->\\nnew\\n<!-- x:end -->\\nb\\n'
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
DIAL_METHOD = "float-paired"  # the library default (strategy "paired", bn_mix "interpolate"): RESULTS.md's choice
ANCHOR_METHOD = "pgd-at"  # a model trained only for robustness, the anchor the dial's robust end is compared with


def block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(name)}:start -->\n)(.*?)(<!-- {re.escape(name)}:end -->)", re.DOTALL)


def fill(text: str, blocks: dict[str, str]) -> str:
    """``text`` with the content of each named block replaced; a block missing from ``text`` is an error."""
    for name, content in blocks.items():
        pattern = block_pattern(name)
        if not pattern.search(text):
            raise ValueError(f"README.md has no block '{name}': add the lines <!-- {name}:start --> and "
                             f"<!-- {name}:end --> where it belongs")
        text = pattern.sub(lambda m, c=content: m.group(1) + c.rstrip("\n") + "\n" + m.group(3), text, count=1)
    return text


def blocks_of(text: str, names: list[str]) -> dict[str, str | None]:
    """The current content of each named block (None where the block is missing)."""
    found = {}
    for name in names:
        match = block_pattern(name).search(text)
        found[name] = match.group(2) if match else None
    return found


def load(name: str, results: Path = RESULTS) -> dict:
    path = results / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the benchmark that writes it (benchmarks/RESULTS.md lists "
                                f"them) or restore it from git")
    return json.loads(path.read_text())


def duration(seconds: float) -> str:
    """``97.9`` → ``'1 min 38 s'``; under a minute ``'42 s'``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def commands_block(timings: dict) -> str:
    demo, test = duration(timings["make_demo_seconds"]), duration(timings["make_test_seconds"])
    machine = timings["machine"]
    return "\n".join([
        "```bash",
        f"make demo    # {demo} on {machine}: FLOAT-train resnet18 on the embedded digits, print its dial",
        f"make test    # {test} on {machine}: the test suite and the doctests (CI runs it, then make docs, make lint)",
        "```",
    ])


def _pct(score: dict | None) -> str:
    return "n/a" if score is None else f"{100 * score['mean']:.1f} ± {100 * score['ci95']:.1f}"


def headline_attacks(metrics: dict) -> list[str]:
    """The attacks the headline takes the worst case of: every column but clean, the headline and noise-off ones."""
    skip = {metrics["clean_label"], metrics["headline"], *metrics.get("noise_off", [])}
    return [name for name in metrics["attacks"] if name not in skip]


def seed_mean(rows: list[dict], method: str, quantity: str, lam: str) -> tuple[float, int]:
    """Mean over seeds of one method's clean or robust accuracy at one λ, in %, and the number of seeds."""
    values = [100 * r[quantity][lam] for r in rows if r["method"] == method and lam in r.get(quantity, {})]
    if not values:
        raise ValueError(f"tradeoff.json has no {method} {quantity} at λ={lam}: rerun benchmarks/tradeoff.py with "
                         f"--methods {method}")
    return statistics.mean(values), len(values)


def results_block(metrics: dict, trade: dict) -> str:
    meta, scores = metrics["meta"], metrics["scores"]
    lines = ["| model | λ | clean (%) | robust (%), headline |", "|---|---|---|---|"]
    for i, lam in enumerate(metrics["lams"]):
        row = scores[str(float(lam))]
        name = f"FLOAT {meta['model']} (`make demo`)" if i == 0 else ""
        lines.append(f"| {name} | {lam:g} | {_pct(row.get(metrics['clean_label']))} | "
                     f"{_pct(row.get(metrics['headline']))} |")
    args, rows = trade["args"], trade["results"]
    top = max((lam for r in rows if r["method"] == DIAL_METHOD for lam in r["robust"]), key=float, default="1.0")
    for method, label, lam in ((DIAL_METHOD, f"FLOAT {args['model']} (library defaults)", top),
                               (ANCHOR_METHOD, f"PGD-AT {args['model']} (trained for robustness only)", "0.0")):
        clean, seeds = seed_mean(rows, method, "clean", lam)
        robust, _ = seed_mean(rows, method, "robust", lam)
        shown = f"{float(lam):g}" if method == DIAL_METHOD else "–"
        lines.append(f"| {label} | {shown} | {clean:.1f} | {robust:.1f} |")
    demo_attacks = ", ".join(f"`{a}`" for a in headline_attacks(metrics))
    trade_attacks = ", ".join(f"`{a}`" for a in tradeoff_attacks(rows))
    note = (f"Digits, L∞ eps = {float(meta['eps']):g}. Robust: the headline, per test point the worst case of "
            f"{demo_attacks} (iterations × EOT noise draws) and the clean input, re-scored over "
            f"{meta['score_draws']} fresh noise draws and capped by each of those columns; {meta['points']} test "
            f"points, ± the 95% CI. The last two rows: `benchmarks/tradeoff.py` ({args['model']}, "
            f"{args['image_size']} px, {args['epochs']} epochs, the worst case of {trade_attacks}, "
            f"{args['eval_limit']} test points), mean of {seeds} seeds, measured before the cap (which can only "
            f"lower the FLOAT row).")
    return "\n".join(lines + [""] + textwrap.wrap(note, width=118, break_on_hyphens=False))


def tradeoff_attacks(rows: list[dict]) -> list[str]:
    """The attacks behind tradeoff.json's headline: its columns but clean, the worst case and noise-off ones."""
    return [name for name in rows[0]["attacks"]
            if name != "clean" and not name.startswith("worst case") and "noise off" not in name]


def render(results: Path = RESULTS) -> dict[str, str]:
    """Every generated block of the README, rendered from the result files in ``results``."""
    return {
        "commands": commands_block(load("timings.json", results)),
        "results": results_block(load("demo_metrics.json", results), load("tradeoff.json", results)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the README is out of date")
    parser.add_argument("--readme", type=Path, default=README, help="the README to fill (default: README.md)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the result files (default: benchmarks/results)")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        blocks = render(args.results)
        updated = fill(text, blocks)
    except (ValueError, FileNotFoundError) as err:  # reason: one line naming the problem and the fix, no traceback
        print(f"benchmarks/readme.py: error: {err}", file=sys.stderr)
        return 2
    except KeyError as err:
        print(f"benchmarks/readme.py: error: a result file lacks the field {err}: rerun the benchmark that writes it",
              file=sys.stderr)
        return 2
    if args.check:
        return report_stale(text, updated, list(blocks), args.readme)
    if updated != text:
        from floatify.io import atomic_write

        atomic_write(args.readme, updated)
    return 0


def report_stale(text: str, updated: str, names: list[str], readme: Path) -> int:
    """1 (and one line naming the blocks) when ``text`` differs from ``updated`` in a block, else 0."""
    now, wanted = blocks_of(text, names), blocks_of(updated, names)
    stale = [name for name in names if now[name] != wanted[name]]
    if stale:
        print(f"{readme} disagrees with the result files in block(s) {', '.join(stale)}: run python "
              f"benchmarks/readme.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
