"""Math in the notebooks' Markdown survives the Markdown parser.

Inline math may wrap over several source lines, but a continuation line that starts
like a block (``- \\frac{1}{m}`` is a list item, ``# `` a heading, ``> `` a quote,
``1. `` a numbered list) ends the paragraph: the page then shows raw ``$J = \\frac{...``
and a list. The rendered pages are checked for raw TeX in ``tests/browser``.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BLOCK_START = re.compile(r"^\s{0,3}([-+*>#]\s|\d+[.)]\s)")


def broken_math_lines(markdown):
    """Lines that start a Markdown block while an inline ``$...$`` is still open."""
    problems, open_inline, in_display, fences = [], False, False, []
    for number, line in enumerate(markdown.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            info = stripped.strip("`").strip()
            if fences and not info:
                fences.pop()
            else:  # a directive's body ({exercise}, {solution-start}) is Markdown
                fences.append("markdown" if info.startswith("{") and not
                              info.startswith(("{code", "{literalinclude")) else "code")
            open_inline = False
            continue
        if "code" in fences:
            continue
        if stripped.startswith("$$"):
            in_display = not in_display if stripped.count("$$") == 1 else in_display
            continue
        if in_display:
            continue
        if open_inline and BLOCK_START.match(line):
            problems.append((number, line))
        if not stripped:
            open_inline = False  # a blank line ends the paragraph, and any math
            continue
        text = re.sub(r"`[^`]*`", "", line.replace(r"\$", ""))
        if text.count("$") % 2:
            open_inline = not open_inline
    return problems


def test_a_list_item_inside_inline_math_is_found():
    source = "the Jacobian is $J = \\frac{1}{s}\\left(I\n- \\frac{1}{m}\\hat{x}\\right)$. Run it."
    assert broken_math_lines(source) == [(2, "- \\frac{1}{m}\\hat{x}\\right)$. Run it.")]
    assert broken_math_lines("a list:\n- $x$ one\n- $y$ two") == []
    assert broken_math_lines("$$\nJ = A\n- B\n$$ (eq-x)") == []
    assert broken_math_lines("cost `$` sign\n- item") == []
    assert broken_math_lines("```python\nx = '$'\n- 1\n```") == []
    directive = "```{exercise} T\n:label: e\nis $J = A\n- B$.\n```"
    assert broken_math_lines(directive) == [(4, "- B$.")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_block_starts_inside_inline_math(path):
    cells = json.loads(path.read_text())["cells"]
    found = [(i, n, line) for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"
             for n, line in broken_math_lines("".join(cell["source"]))]
    assert found == [], f"{path.name}: (cell, line, text) that break inline math"
