"""benchmarks/readme.py and the README it fills: every number generated, short, no broken relative link."""

from __future__ import annotations

import doctest
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 150


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmarks_readme", ROOT / "benchmarks" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme = _load_script()
BLOCKS = sorted(readme.render())


# ---------------------------------------------------------------------------------------------- the README as it is


@pytest.mark.parametrize("name", BLOCKS)
def test_block_matches_the_result_files(name):
    current = readme.blocks_of(README.read_text(), [name])[name]
    assert current is not None, f"README.md lost its block '{name}'"
    expected = readme.blocks_of(readme.fill(README.read_text(), readme.render()), [name])[name]
    assert current == expected, f"README.md's block '{name}' disagrees with benchmarks/results: run " \
                                f"python benchmarks/readme.py"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines; keep it to {MAX_LINES} and move detail into docs/"


def _relative_links(text: str) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link) and not link.startswith("#")]


def _anchors(markdown: str) -> set[str]:
    """Heading anchors as GitHub and mkdocs' toc make them (ASCII headings), plus explicit ``{ #id }``."""
    found = set(re.findall(r"\{\s*#([\w-]+)\s*\}", markdown))
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*(?:\{.*\})?$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\s-]", "", heading.lower()).strip()
        found.add(re.sub(r"[\s]+", "-", slug))
    return found


@pytest.mark.parametrize("link", _relative_links(README.read_text()))
def test_relative_link_exists(link):
    path, _, anchor = link.partition("#")
    target = ROOT / path
    assert target.exists(), f"README.md links to {path}, which does not exist"
    if anchor:
        assert anchor in _anchors(target.read_text()), f"README.md links to {link}: {path} has no heading #{anchor}"


def test_readme_names_every_cli_verb():
    from floatify.cli import build_parser

    verbs = build_parser()._subparsers._group_actions[0].choices  # reason: argparse has no public accessor
    text = README.read_text()
    missing = [verb for verb in verbs if f"`floatify {verb}" not in text]
    assert not missing, f"README.md's command table lacks floatify {', '.join(missing)}"


# ---------------------------------------------------------------------------------------------- the script


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    shutil.copytree(readme.RESULTS, results)
    target = tmp_path / "README.md"
    shutil.copyfile(README, target)
    return target, results


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# (what is changed, how) -> --check must fail with exit code 1; rewriting then makes it pass again
DISAGREEMENTS = [
    ("a number in the README", lambda readme_file, results: readme_file.write_text(  # the demo's clean at λ = 0.5
        re.sub(r"\| 0\.5 \| [0-9.]+ ±", "| 0.5 | 99.9 ±", readme_file.read_text(), count=1))),
    ("the demo's clean accuracy", lambda readme_file, results: _edit_json(
        results / "demo_metrics.json", lambda d: d["scores"]["0.5"]["clean"].update(mean=0.5))),
    ("the PGD-AT anchor", lambda readme_file, results: _edit_json(
        results / "tradeoff.json", lambda d: [r["robust"].update({"0.0": 0.1}) for r in d["results"]
                                              if r["method"] == readme.ANCHOR_METHOD])),
    ("the measured test time", lambda readme_file, results: _edit_json(
        results / "timings.json", lambda d: d.update(make_test_seconds=601))),
]


@pytest.mark.parametrize("what, change", DISAGREEMENTS, ids=[row[0] for row in DISAGREEMENTS])
def test_check_fails_when_readme_and_results_disagree(tmp_path, capsys, what, change):
    readme_file, results = _copy(tmp_path)
    args = ["--readme", str(readme_file), "--results", str(results)]
    assert readme.main(["--check", *args]) == 0
    change(readme_file, results)
    assert readme.main(["--check", *args]) == 1, f"--check did not notice {what}"
    assert "run python benchmarks/readme.py" in capsys.readouterr().err
    assert readme.main(args) == 0
    assert readme.main(["--check", *args]) == 0


# bad input -> one line naming the problem and the fix, exit code 2
BAD_INPUT = [
    ("a missing block", lambda readme_file, results: readme_file.write_text(
        readme_file.read_text().replace("<!-- results:end -->", "")), "add the lines <!-- results:start -->"),
    ("a missing result file", lambda readme_file, results: (results / "timings.json").unlink(),
     "timings.json is missing"),
    ("a result file without a field", lambda readme_file, results: _edit_json(
        results / "timings.json", lambda d: d.pop("make_demo_seconds")), "lacks the field 'make_demo_seconds'"),
]


@pytest.mark.parametrize("what, change, message", BAD_INPUT, ids=[row[0] for row in BAD_INPUT])
def test_bad_input_is_one_line(tmp_path, capsys, what, change, message):
    readme_file, results = _copy(tmp_path)
    change(readme_file, results)
    assert readme.main(["--check", "--readme", str(readme_file), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


DURATIONS = [(42.4, "42 s"), (97.9, "1 min 38 s"), (192, "3 min 12 s"), (60, "1 min 0 s")]


@pytest.mark.parametrize("seconds, text", DURATIONS)
def test_duration(seconds, text):
    assert readme.duration(seconds) == text


def test_doctests():
    result = doctest.testmod(readme)
    assert result.attempted > 0 and result.failed == 0
