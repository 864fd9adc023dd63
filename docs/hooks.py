"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages that are generated at build time, so none is copied by hand.

* ``cli.md``: the command-line reference, rendered from ``floatify.cli.build_parser()`` (what ``--help`` prints);
* ``api/<module>.md``: one mkdocstrings page per public module of ``floatify``, listed under "API reference" in the
  navigation (a new module gets its page without touching mkdocs.yml);
* ``results/*.png``: the plots of ``benchmarks/results/``, which ``benchmarks/RESULTS.md`` (included in
  ``benchmarks.md``) links to.

Nothing is written to disk: the pages exist only in the build (mkdocs' ``File.generated``). One Markdown
preprocessor is added: the reports floatify writes (and RESULTS.md) start a list right below a paragraph line, as
GitHub reads it; Python-Markdown needs a blank line there, so :class:`ListAfterParagraph` puts one in (after
``pymdownx.snippets`` has included them).
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import re
from pathlib import Path

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "floatify"
RESULTS = ROOT / "benchmarks" / "results"
API_SECTION = "API reference"
HELP_WIDTH = 76  # reason: usage lines wrap at the terminal's width; a fixed one fits the page and is reproducible


def _sibling(name: str):
    """A module of docs/ by file name (docs/ is no package and not on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"floatify_docs_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


plain_roles = _sibling("griffe_docstrings").plain_roles


def public_modules() -> list[str]:
    """Dotted names of floatify's modules, the package first; private ones (``_x``, ``__main__``) left out."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts):
            continue
        names.append(".".join(parts))
    return sorted(names, key=lambda name: (name != "floatify", name))


def api_path(module: str) -> str:
    return f"api/{module}.md"


def on_config(config):
    """Fill the (empty) "API reference" section of the navigation with one page per module; lists as GitHub reads."""
    config.markdown_extensions.append(ListAfterParagraph())
    section = _find_section(config.nav or [], API_SECTION)
    if section is None:
        raise ValueError(f"mkdocs.yml: the nav has no '{API_SECTION}' section for the generated module pages; add "
                         f"'- {API_SECTION}: []' to it")
    section[API_SECTION] = [{module: api_path(module)} for module in public_modules()]
    return config


def _find_section(nav: list, title: str) -> dict | None:
    """The nav entry ``{title: ...}``, searched depth first."""
    for entry in nav:
        if not isinstance(entry, dict):
            continue
        if title in entry:
            return entry
        for value in entry.values():
            found = _find_section(value, title) if isinstance(value, list) else None
            if found is not None:
                return found
    return None


def on_files(files: Files, config) -> Files:
    """Add the generated pages and the benchmark plots to the build."""
    files.append(File.generated(config, "cli.md", content=cli_page(_parser())))
    for module in public_modules():
        files.append(File.generated(config, api_path(module), content=api_page(module)))
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{plot.name}", abs_src_path=str(plot)))
    return files


def _parser() -> argparse.ArgumentParser:
    from floatify.cli import build_parser

    return build_parser()


# ---------------------------------------------------------------------------------------------------- lists

LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.)\s")
FENCE = re.compile(r"^\s*(```|~~~)")


def blank_before_lists(lines: list[str]) -> list[str]:
    """A blank line between a paragraph line and the list item right below it (code fences left alone).

    >>> blank_before_lists(["Attacks:", "- clean", "- pgd", "", "```", "x:", "- y", "```"])
    ['Attacks:', '', '- clean', '- pgd', '', '```', 'x:', '- y', '```']
    """
    out: list[str] = []
    in_fence = False
    for line in lines:
        if FENCE.match(line):
            in_fence = not in_fence
        previous = out[-1] if out else ""
        after_text = previous.strip() and not LIST_ITEM.match(previous) and not previous.startswith((" ", "\t", "|"))
        if not in_fence and LIST_ITEM.match(line) and not line.startswith((" ", "\t")) and after_text:
            out.append("")
        out.append(line)
    return out


class _BlankBeforeLists(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return blank_before_lists(lines)


class ListAfterParagraph(Extension):
    """Python-Markdown extension: lists that follow a paragraph line without a blank line, as on GitHub."""

    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 (Python-Markdown's name)
        md.preprocessors.register(_BlankBeforeLists(md), "blank_before_lists", 31)  # reason: after snippets (32)


# ---------------------------------------------------------------------------------------------------- API pages


def api_page(module: str) -> str:
    """The mkdocstrings page of one module; the package's page lists the top-level names and where they live."""
    if module != "floatify":
        return f"# `{module}`\n\n::: {module}\n"
    return "# `floatify`\n\n::: floatify\n    options:\n      members: false\n\n" + top_level_table()


def top_level_table() -> str:
    """The names ``floatify`` exports, each linked to its definition with the first line of its docstring."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    rows = ["## The top-level names", "", "| name | what it is |", "|---|---|"]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("floatify."):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                summary = first_docstring_line(node.module or "", alias.name)
                rows.append(f"| [`{alias.name}`][{target}] | {summary} (in [`{node.module}`]({node.module}.md)) |")
    return "\n".join(rows) + "\n"


def first_docstring_line(module: str, name: str) -> str:
    """The first line of ``module.name``'s docstring, read from the source (nothing is imported)."""
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    if not path.is_file():  # reason: a package's names are defined in its __init__.py
        path = ROOT / Path(*module.split(".")) / "__init__.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return _cell(plain_roles((ast.get_docstring(node) or "").split("\n")[0]))
    return ""


# ---------------------------------------------------------------------------------------------------- CLI page


def cli_page(parser: argparse.ArgumentParser) -> str:
    """The command-line reference: every command, its usage and a table of its options per group."""
    lines = ["# Command line", "",
             "Generated from `floatify.cli.build_parser()` when the docs are built: the same text as "
             "`floatify --help` and `floatify <command> --help`. Errors exit with code 2 and one line "
             "`floatify <command>: error: ...` saying what is wrong and how to fix it.", "",
             parser.description or "", ""]
    for name, help_text, sub in subcommands(parser):
        lines += command_section(name, help_text, sub)
    return "\n".join(lines) + "\n"


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every sub-command, in the parser's order."""
    found = []
    for action in parser._actions:  # reason: argparse has no public accessor for its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def command_section(name: str, help_text: str, sub: argparse.ArgumentParser) -> list[str]:
    sub.formatter_class = functools.partial(argparse.HelpFormatter, width=HELP_WIDTH)
    lines = [f"## `floatify {name}`", "", f"*{_cell(help_text)}*" if help_text else "", "",
             sub.description or "", "", "```text", sub.format_usage().strip(), "```", ""]
    formatter = sub._get_formatter()  # reason: argparse's own wording of each option (metavar, %(default)s)
    for group in sub._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        if not actions:
            continue
        lines += [f"### {group.title}", "", "| option | what it does |", "|---|---|"]
        for action in actions:
            invocation = formatter._format_action_invocation(action)
            lines.append(f"| `{invocation}` | {_cell(formatter._expand_help(action) if action.help else '')} |")
        lines.append("")
    return lines


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
