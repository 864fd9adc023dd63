"""Command line: ``floatify train``, ``floatify eval`` and ``floatify export``.

    floatify train --model resnet18 --dataset digits --out runs/demo
    floatify eval runs/demo --max-clean-drop 2          # or hf-hub:owner/name
    floatify export runs/demo --out dial.pt2            # λ a run-time input; --onnx for ONNX
    torchrun --nproc-per-node 4 -m floatify train --model resnet18 --dataset cifar10 --out runs/ddp   # one per GPU

Errors are one line on stderr (``floatify <command>: error: ...``) and exit code 2; under torchrun rank 0 alone
prints.

Example:
    >>> from floatify.cli import build_parser
    >>> sorted(build_parser()._subparsers._group_actions[0].choices)
    ['eval', 'export', 'train']
"""

from __future__ import annotations

import contextlib
import os
import sys

from floatify.cli.options import CliError

__all__ = ["main", "build_parser", "CliError"]


def build_parser():
    import argparse

    from floatify import __version__
    from floatify.cli.evaluation import add_eval_parser
    from floatify.cli.exporting import add_export_parser
    from floatify.cli.training import add_train_parser

    parser = argparse.ArgumentParser(
        prog="floatify",
        description="FLOAT once-for-all adversarial training for timm/torchvision models: one model, a dial λ "
                    "between clean accuracy (λ=0) and robustness (λ=1).",
    )
    parser.add_argument("--version", action="version", version=f"floatify {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_export_parser(sub)
    return parser


def _speaks() -> bool:
    """Whether this process prints: a plain process or rank 0 of a torchrun job."""
    from floatify.distributed import launch_from_environment

    try:
        return launch_from_environment().is_main
    except ValueError:
        return True  # reason: a broken torchrun environment is reported by the command itself


def _quiet_unless(speaks: bool) -> contextlib.ExitStack:
    """Until closed, stdout and stderr go nowhere where this process does not speak (torchrun ranks > 0).

    reason: the other ranks run the same options, so their errors are rank 0's (or reach rank 0 through
    floatify.distributed.together); a crash still shows its traceback, printed after this is closed.
    """
    stack = contextlib.ExitStack()
    if not speaks:
        sink = stack.enter_context(open(os.devnull, "w"))
        stack.enter_context(contextlib.redirect_stdout(sink))
        stack.enter_context(contextlib.redirect_stderr(sink))
    return stack


def _run(args) -> None:
    from floatify.cli.evaluation import run_eval
    from floatify.cli.exporting import run_export
    from floatify.cli.training import run_train

    {"train": run_train, "eval": run_eval, "export": run_export}[args.command](args)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, or 2 after one line saying what is wrong and what to do)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # reason: progress lines appear when piped to a log
    parser = build_parser()
    speaks = _speaks()
    with _quiet_unless(speaks):  # reason: under torchrun rank 0 alone prints, usage errors included
        args = parser.parse_args(argv)
    from floatify.distributed import RankFailed

    quiet = _quiet_unless(speaks)
    try:
        _run(args)
    except (CliError, RankFailed, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
        print(f"floatify {args.command}: error: {err}", file=sys.stderr)  # reason: ValueError covers bad files
        return 2
    except OSError as err:  # permissions, a full disk, a path that cannot be created
        where = f" ({err.filename})" if err.filename else ""
        print(f"floatify {args.command}: error: {err.strerror or err}{where}; check the path and its permissions",
              file=sys.stderr)
        return 2
    finally:
        quiet.close()
    return 0
