"""Every table and figure the text refers to is on the page.

Chapter 5 once cited "10 of the 12 comparisons above" under a table that never
rendered: the call that built it was not the last line of its cell, so Jupyter showed
nothing. These checks read the notebooks as files (every build and CI run), and the
executed notebooks where the full build left them (``make book``:
``_build/jupyter_execute``, or the folder in ``BNBOOK_EXECUTED``); a quick build's pages
(``make test``, ``_build/quick``) show quick mode's expected warnings, so they are not read:

1. a code cell that builds a table (``markdown_table(...)``) shows it: the call is the
   cell's last expression, not a statement whose value is dropped;
2. every ``{numref}`` names a figure (``mystnb: figure: name:``) of some chapter;
3. executed: every cell that builds a table has a Markdown output, every figure cell an
   image; no output shows cache chatter ("loaded cached result") or an absolute path
   of the machine that ran it.
"""

import ast
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TABLE_CALLS = {"markdown_table"}


def _source(cell):
    return "".join(cell["source"])


def _cells(path):
    return json.loads(Path(path).read_text())["cells"]


def _calls(node, names):
    return [n for n in ast.walk(node) if isinstance(n, ast.Call) and (
        getattr(n.func, "attr", None) in names or getattr(n.func, "id", None) in names)]


def dropped_tables(cells):
    """Indices of code cells that build a table and do not show it."""
    bad = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or "markdown_table" not in _source(cell):
            continue
        body = ast.parse(_source(cell)).body
        last = body[-1] if body else None
        shown = isinstance(last, ast.Expr) and bool(_calls(last, TABLE_CALLS))
        if not shown or _source(cell).rstrip().endswith(";") or any(
                _calls(stmt, TABLE_CALLS) for stmt in body[:-1]):
            bad.append(i)
    return bad


def _figure_names():
    names = set()
    for path in NOTEBOOKS:
        for cell in _cells(path):
            figure = cell.get("metadata", {}).get("mystnb", {}).get("figure", {})
            if "name" in figure:
                names.add(figure["name"])
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_table_a_cell_builds_is_shown(path):
    assert dropped_tables(_cells(path)) == []


def test_a_dropped_table_is_caught():
    """Chapter 5's old cell: the table, then the glue that made it vanish."""
    cell = {"cell_type": "code", "source":
            "rows = []\nplot.markdown_table(['a'], rows)\nagree = 1\nglue('k', agree)"}
    shown = {"cell_type": "code", "source": "rows = []\nplot.markdown_table(['a'], rows)"}
    hushed = {"cell_type": "code", "source": "plot.markdown_table(['a'], rows);"}
    assert dropped_tables([cell, shown, hushed]) == [0, 2]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_numref_names_a_figure(path):
    names = _figure_names()
    text = "\n".join(_source(c) for c in _cells(path) if c["cell_type"] == "markdown")
    missing = {m for m in re.findall(r"\{numref\}`(?:[^`<]*<)?([\w-]+)>?`", text)
               if m.startswith("fig") and m not in names}
    assert missing == set()


# --- executed notebooks, where a build left them -------------------------------------------

def _executed():
    roots = [Path(os.environ["BNBOOK_EXECUTED"])] if os.environ.get("BNBOOK_EXECUTED") \
        else [ROOT / "_build" / "jupyter_execute" / "notebooks"]
    return sorted(p for r in roots for p in r.glob("*.ipynb"))


def output_problems(cells):
    problems = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        outputs = cell.get("outputs", [])
        data = [o.get("data", {}) for o in outputs]
        texts = ["".join(o.get("text", "")) for o in outputs] + [
            "".join(d.get("text/plain", "")) + "".join(d.get("text/markdown", ""))
            for d in data]
        if "markdown_table" in _source(cell) and i not in dropped_tables(cells) and \
                not any("text/markdown" in d for d in data):
            problems.append(f"cell {i}: builds a table that the page does not show")
        if cell.get("metadata", {}).get("mystnb", {}).get("figure") and \
                not any("image/png" in d or "image/svg+xml" in d for d in data):
            problems.append(f"cell {i}: a figure cell without an image")
        for text in texts:
            if "loaded cached result" in text or "computing " in text and "again:" in text:
                problems.append(f"cell {i}: cache chatter {text[:60]!r}")
            if re.search(r"(?<![\w.])/(?:work|home|tmp|root|Users)/", text):
                problems.append(f"cell {i}: an absolute path in {text[:80]!r}")
    return problems


def test_output_problems_are_found():
    cells = [{"cell_type": "code", "source": "plot.markdown_table(h, rows)", "outputs": []},
             {"cell_type": "code", "source": "fig = f()", "outputs": [],
              "metadata": {"mystnb": {"figure": {"name": "fig-x"}}}},
             {"cell_type": "code", "source": "r = run()", "outputs": [{"text": [
                 "loaded cached result figure1-runs-1 from /work/x/_cache/results\n"]}]}]
    found = output_problems(cells)
    assert len(found) == 4, found


@pytest.mark.parametrize("path", _executed() or [None], ids=lambda p: p.name if p else "none")
def test_executed_pages_show_what_they_build(path):
    if path is None:
        pytest.skip("no executed notebooks here (the book build leaves them)")
    assert output_problems(_cells(path)) == []
