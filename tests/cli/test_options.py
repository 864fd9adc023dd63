"""floatify.cli.options: the option parsers and the checks every command shares, as tables of inputs."""

from __future__ import annotations

import argparse

import pytest
import torch

from floatify.cli.options import CliError, device_of, parse_eps, parse_lams, parse_numbers, parse_path

# parser, text, the value it gives (or the fragment of its one-line refusal)
PARSED = [
    (parse_eps, "8/255", 8 / 255),
    (parse_eps, "0.1", 0.1),
    (parse_eps, "8/0", "eps must be a number like 0.031 or 8/255"),
    (parse_eps, "2", "eps must be in [0, 1]"),
    (parse_eps, "nan", "eps must be in [0, 1]"),
    (parse_lams, "0,0.5,1", [0.0, 0.5, 1.0]),
    (parse_lams, "0,x", "--lams must be comma-separated numbers"),
    (parse_lams, "0,1.5", "[0, 1]"),
    (parse_numbers, "0.5,0.5,0.5", [0.5, 0.5, 0.5]),
    (parse_numbers, "a,b,c", "3 comma-separated numbers"),
    (parse_path, "runs/x", __import__("pathlib").Path("runs/x")),
    (parse_path, "  ", "is empty"),
]


@pytest.mark.parametrize("parse, text, want", PARSED, ids=[f"{p.__name__}({t!r})" for p, t, _ in PARSED])
def test_parsers(parse, text, want):
    if isinstance(want, str):
        with pytest.raises(argparse.ArgumentTypeError, match=want.replace("[", r"\[").replace("]", r"\]")):
            parse(text)
    else:
        assert parse(text) == want


# --device value -> the fragment of its one-line refusal (None: accepted)
DEVICES = [
    ("cpu", None),
    ("meta", "floatify runs on cpu or cuda"),
    ("mps", "floatify runs on cpu or cuda"),
    ("gpu0", "unknown --device 'gpu0'"),
    ("cuda", None if torch.cuda.is_available() else "CUDA is not available"),
]


@pytest.mark.parametrize("name, fragment", DEVICES, ids=[d[0] for d in DEVICES])
def test_device_of(name, fragment):
    if fragment is None:
        assert device_of(name).type == name
    else:
        with pytest.raises(CliError, match=fragment):
            device_of(name)
