"""The notebooks as files: stored without outputs, in the table of contents, well formed.

Executing them is nbval's job (``pytest --nbval-lax notebooks/``) and the book build's.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _repository_url():
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M)
    return match.group(1)


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_valid_nbformat_with_an_id_per_cell(path):
    """nbformat 4.5 gives every cell an id (a missing one is a warning today, an error in
    future nbformat): a cell added by a script without one is caught here."""
    import nbformat

    nbformat.validate(nbformat.read(path, as_version=nbformat.NO_CONVERT))
    ids = [cell.get("id") for cell in _cells(path)]  # as stored: read() fills them in
    assert None not in ids and len(set(ids)) == len(ids), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_listed_in_table_of_contents(path):
    toc = (ROOT / "_toc.yml").read_text()
    assert f"notebooks/{path.stem}" in toc


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_anatomy(path):
    cells = _cells(path)
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "".join(cells[0]["source"]).startswith("# "), "starts with a title"
    assert "## Overview" in text and "## Summary" in text
    if path.name != "00_setup.ipynb":
        assert "## Exercises" in text and "{solution" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solution_code_stays_in_its_dropdown(path):
    """A solution that runs code is gated (solution-start ... solution-end), so that the
    code's output is hidden with the solution; a plain {solution} keeps only its text."""
    cells = _cells(path)
    for cell, after in zip(cells, cells[1:], strict=False):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and "```{solution}" in source:
            assert after["cell_type"] == "markdown", f"{path.name}: code after {source[:60]!r}"
    opened = 0
    for cell in cells:
        source = "".join(cell["source"]) if cell["cell_type"] == "markdown" else ""
        opened += source.count("{solution-start}") - source.count("{solution-end}")
        assert opened in (0, 1), f"{path.name}: solution-start and -end do not pair"
    assert opened == 0, f"{path.name}: a solution-start is never closed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_installs_bnutils_from_the_repository(path):
    """Colab: the first code cell installs bnutils only when missing, from the one URL."""
    setup = next(c for c in _cells(path) if c["cell_type"] == "code")
    source = "".join(setup["source"])
    assert 'find_spec("bnutils") is None' in source
    assert f'"git+{_repository_url()}"' in source
    assert "BNUTILS_INSTALL_SOURCE" in source
    assert "hide-output" in setup["metadata"].get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_control_characters(path):
    """A "\\beta" written in a non-raw string ends up as a backspace and breaks MathJax."""
    for i, cell in enumerate(_cells(path)):
        bad = {hex(ord(ch)) for ch in "".join(cell["source"]) if ord(ch) < 32 and ch not in "\n\t"}
        assert not bad, f"{path.name}, cell {i}: control characters {sorted(bad)}"


# Functions called for what they check or glue, whose return value a page need not show.
_QUIET_CALLS = {"guard", "verdict", "glue_mean"}


def _shown_call(source):
    """The name of the function whose call ends the cell and whose result Jupyter
    would display (no trailing ';'), if it is one of ``_QUIET_CALLS``."""
    import ast

    try:
        body = ast.parse(source).body
    except SyntaxError:  # IPython magics: not our cells' style
        return None
    last = body[-1] if body else None
    if not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)):
        return None
    name = getattr(last.value.func, "id", None) or getattr(last.value.func, "attr", None)
    return name if name in _QUIET_CALLS and not source.rstrip().endswith(";") else None


def test_shown_call_detects_a_displayed_guard():
    assert _shown_call("x = 1\nguard(x > 0, 'x is positive')") == "guard"
    assert _shown_call("guard(\n    x > 0, 'x'\n);") is None
    assert _shown_call("_ = verdict('k', True, 'a', 'b')") is None
    assert _shown_call("print(1)") is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_shows_a_stray_check_result(path):
    """A cell that ends with ``guard(...)`` would print a bare ``True`` on the page
    (``verdict`` its chosen words): end it with ';'."""
    shown = [(i, name) for i, cell in enumerate(_cells(path))
             if cell["cell_type"] == "code" and (name := _shown_call("".join(cell["source"])))]
    assert shown == [], f"{path.name}: cells (index, call) whose result would be shown"
