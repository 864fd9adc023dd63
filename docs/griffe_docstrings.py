"""A griffe extension (mkdocs.yml, mkdocstrings ``extensions``): floatify's docstrings as Markdown.

The docstrings are written for ``help()`` and Sphinx-style readers; two things in them would render wrongly:

* doctests (CI runs them with ``--doctest-modules``), under an ``Example:`` heading or on their own: Markdown reads a
  ``>>>`` line as a nested quote, so each doctest block (its ``>>>`` and ``...`` lines and the expected output up to
  the next blank line) is fenced as a ``pycon`` code block, indented as it was;
* Sphinx roles (``:func:`save```, ``:class:`Report```, ``:mod:`floatify.heap```): shown as inline code;
* an ``Attributes:``/``Args:`` item that documents several names at once (``epochs, lr: the schedule``), which the
  Google-style parser would split into a name and a type: written ``epochs/lr``.

The docstrings in the source are not touched.

Example:
    >>> fence_doctests("Text.\\n\\n  >>> 1 + 1\\n  2").splitlines()
    ['Text.', '', '  ```pycon', '  >>> 1 + 1', '  2', '  ```']
    >>> plain_roles("see :func:`floatify.save` and :class:`~floatify.report.Report`")
    'see `floatify.save` and `Report`'
    >>> joined_names("Attributes:\\n    epochs, lr: the schedule, in epochs.\\nMore text, here: as is.").splitlines()
    ['Attributes:', '    epochs/lr: the schedule, in epochs.', 'More text, here: as is.']
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ITEM_SECTION = re.compile(r"^(\s*)(?:Attributes|Args|Arguments|Parameters):\s*$")
SEVERAL_NAMES = re.compile(r"^(\s+)(\w+(?:, \w+)+):(\s)")
SPHINX_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")


def fence_doctests(text: str) -> str:
    """``text`` with every doctest block wrapped in a ``pycon`` fence at the block's indentation."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if not stripped.startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(stripped)]
        end = i
        while end < len(lines) and lines[end].strip():  # reason: a doctest's output runs to the next blank line
            end += 1
        out += [f"{indent}```pycon", *lines[i:end], f"{indent}```"]
        i = end
    return "\n".join(out)


def plain_roles(text: str) -> str:
    """Sphinx roles as inline code; ``~a.b.c`` shows ``c``, as Sphinx does."""
    return SPHINX_ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


def joined_names(text: str) -> str:
    """In ``Attributes:``/``Args:`` sections, ``a, b: text`` items become ``a/b: text``."""
    out, section_indent = [], None
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip())
        if line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None  # reason: a line back at the heading's indentation ends the section
        header = ITEM_SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
        elif section_indent is not None:
            line = SEVERAL_NAMES.sub(lambda m: m.group(1) + m.group(2).replace(", ", "/") + ":" + m.group(3), line)
        out.append(line)
    return "\n".join(out)


class MarkdownDocstrings(griffe.Extension):
    """Every docstring griffe reads, made Markdown as the module docstring says."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = joined_names(plain_roles(fence_doctests(obj.docstring.value)))
