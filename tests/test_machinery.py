"""Book machinery stays out of the reader's view (issue 27, section 1).

A code cell that the web page shows holds code a reader could type to learn something
about BN. The calls that only keep the text and the numbers in agreement, or format
them (``glue``, ``guard``, ``verdict``, ``glue_*`` helpers, ``train_or_load``,
``prefill``, ``bnutils.choose``), live in cells tagged ``remove-cell`` (code and output
hidden) or ``remove-input`` (code hidden, output shown). Those cells still run, so the
text still follows the numbers. Solutions count: their code is shown when opened.

``python tests/test_machinery.py`` prints, per chapter, the visible code lines, the
machinery lines among them (the lines the rule matches) and the lines of the statements
that call machinery (a ``glue(...)`` over five lines counts five), with their share.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
HIDDEN = {"remove-cell", "remove-input"}
MACHINERY = re.compile(r"\b(glue|guard|verdict|glue_\w+|train_or_load|prefill|choose)\(")


def visible_code(path):
    """(cell index, source) of every code cell whose code the web page shows."""
    cells = json.loads(path.read_text())["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells)
            if c["cell_type"] == "code" and not HIDDEN & set(c["metadata"].get("tags", []))]


def count(path):
    """(visible code lines, machinery lines among them, the machinery lines) of a
    chapter; blank lines do not count."""
    lines = [(i, line) for i, source in visible_code(path)
             for line in source.splitlines() if line.strip()]
    machinery = [(i, line.strip()) for i, line in lines if MACHINERY.search(line)]
    return len(lines), len(machinery), machinery


def statement_lines(path):
    """Lines of the visible statements that call machinery (a call spread over five lines
    counts five): what the reader scrolls past."""
    import ast

    n = 0
    for _, source in visible_code(path):
        try:
            tree = ast.parse(source)
        except SyntaxError:  # IPython magics
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt) and not isinstance(
                    node, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While, ast.If, ast.With)):
                text = ast.get_source_segment(source, node) or ""
                if MACHINERY.search(text):
                    n += node.end_lineno - node.lineno + 1
    return n


def test_the_rule_sees_machinery():
    assert MACHINERY.search('glue("ch01_x", x, display=False)')
    assert MACHINERY.search("steps = bnutils.choose(600, 50)")
    assert MACHINERY.search("_ = verdict('k', a < b, 'smaller', 'larger')")
    assert MACHINERY.search("glue_mean('k', values)")
    assert MACHINERY.search("run = train_or_load(config, train)")
    assert MACHINERY.search("guard(a < b, 'a is smaller');")
    assert not MACHINERY.search("idx = rng.choice(10, size=3)")
    assert not MACHINERY.search("glued = 1  # no call")


def test_hidden_cells_do_not_count(tmp_path):
    def cell(source, tags=()):
        return {"cell_type": "code", "source": source, "outputs": [], "execution_count": None,
                "metadata": {"tags": list(tags)}}

    nb = {"cells": [cell("x = 1\n\nglue('k', x)"), cell("guard(x > 0, 'x')", ["remove-cell"]),
                    cell("verdict('k', True, 'a', 'b')", ["remove-input"]),
                    cell("y = choose(1, 2)", ["hide-input"])],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert count(path)[:2] == (3, 2)  # hide-input code is one click away: it counts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_visible_machinery(path):
    lines, n, machinery = count(path)
    shown = "\n".join(f"  cell {i}: {line}" for i, line in machinery[:15])
    assert n == 0, (f"{path.name}: {n} of {lines} visible code lines are book machinery "
                    f"({n / lines:.0%}); move them to a cell tagged remove-cell or "
                    f"remove-input:\n{shown}")


if __name__ == "__main__":
    total = [0, 0, 0]
    print(f"{'chapter':<18}{'visible code lines':>19}{'machinery lines':>16}"
          f"{'in statements':>15}{'share':>7}")
    for path in NOTEBOOKS:
        lines, n, _ = count(path)
        spread = statement_lines(path)
        total = [total[0] + lines, total[1] + n, total[2] + spread]
        print(f"{path.stem:<18}{lines:>19}{n:>16}{spread:>15}{spread / max(lines, 1):>7.0%}")
    print(f"{'all':<18}{total[0]:>19}{total[1]:>16}{total[2]:>15}"
          f"{total[2] / max(total[0], 1):>7.0%}")
