"""The claims ledger (book/claims.md): every row carries a verdict word and points to
what exists.

Each row's verdict is one of four words — reproduces, partly, does not reproduce, not
tested — pasted from the notebook that decides it: the cell is one glue role whose key
that notebook glues with ``verdict(...)``, every one of whose words is one of the four,
or the typed words "not tested" for a claim out of the book's reach. Its "tested in"
cell names chapters and labels that exist, and its deciding number is glued, not a
pointer to a table.
"""

import re
from pathlib import Path

import pytest
from test_verdicts import GLUE_ROLE, NOTEBOOKS, Notebook, _cited_key, _raw

ROOT = Path(__file__).resolve().parents[1]
LEDGER = ROOT / "book" / "claims.md"
FOUR = {"reproduces", "partly", "does not reproduce", "not tested"}

# Rows whose chapter does not glue a ledger word yet. Each is an expected failure that
# must fail: when the chapter glues its word, the test says so and the entry goes.
PENDING = {}

# A verdict decided by training runs is computed at half the length too, and one that
# changes between the two is length-dependent: the ledger says "not tested" (issue 26).
# So its word must be able to be "not tested", except where no run length decides it.
NO_LENGTH = {
    "ch07_ledger_scale": "an identity of the BN layer, checked on one network's weights",
}
# Trained verdicts whose chapter does not check them at half the length yet (expected
# failures that must fail, as PENDING).
NO_HALF_YET = {}


def table_rows(text):
    """``(claim, tested in, verdict, deciding number)`` of every table row."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 4 or cells[0] == "claim":
            continue
        rows.append(tuple(cells))
    return rows


def _notebooks():
    return {p.stem: Notebook(p.stem, _raw(p.stem)) for p in NOTEBOOKS}


def verdict_problems(row, notebooks):
    claim, tested, cell, deciding = row
    if cell == "not tested":
        return [] if deciding else [f"{claim!r}: 'not tested' needs its reason"]
    roles = GLUE_ROLE.findall(cell)
    if len(roles) != 1 or GLUE_ROLE.sub("", cell).strip():
        return [f"{claim!r}: the verdict cell must be one glued verdict word, got {cell!r}"]
    doc, key = _cited_key(roles[0])
    nb = notebooks.get(Path(doc).stem)
    if nb is None:
        return [f"{claim!r}: cites {doc!r}, not a notebook"]
    found = [v for v in nb.verdicts if re.fullmatch(v["pattern"], key)]
    if not found:
        return [f"{claim!r}: {key!r} is not a verdict of {nb.name}"]
    words = {w for v in found for w in v["words"]}
    if not words <= FOUR:
        return [f"{claim!r}: {key!r} can say {sorted(words - FOUR)}, not one of {sorted(FOUR)}"]
    return []


def length_problems(row, notebooks):
    """A row whose glued word, decided by a chapter that trains (5 to 9), cannot say
    "not tested": a length-dependent verdict would still claim a result."""
    doc, key = _cited(row)
    nb = notebooks.get(Path(doc).stem) if doc else None
    if nb is None or not "05" <= nb.name[:2] <= "09" or key in NO_LENGTH:
        return []
    words = {w for v in nb.verdicts if re.fullmatch(v["pattern"], key) for w in v["words"]}
    if "not tested" in words:
        return []
    return [f"{row[0]!r}: {key!r} never says 'not tested', so a verdict that changes "
            "between half the length and the end would still be claimed"]


def _cited(row):
    """``(notebook, key)`` of the row's glued verdict, ``(None, None)`` if typed."""
    roles = GLUE_ROLE.findall(row[2])
    return _cited_key(roles[0]) if roles else (None, None)


def _key(row):
    return _cited(row)[1]


def pointer_problems(row):
    claim, tested, _, deciding = row
    problems = []
    for label in re.findall(r"\{ref\}`[^`<]*<([^>]+)>`", tested):
        if not any(f"({label})=" in "".join(c["source"]) for p in NOTEBOOKS
                   for c in _raw(p.stem)["cells"] if c["cell_type"] == "markdown"):
            problems.append(f"{claim!r}: no label {label!r} in any chapter")
    for doc in re.findall(r"\{doc\}`[^`<]*<([^>]+)>`", tested):
        if not (LEDGER.parent / f"{doc}.ipynb").exists():
            problems.append(f"{claim!r}: no chapter {doc!r}")
    if re.search(r"\bsee\b|\btable\b", deciding, re.I) or (
            "not tested" not in row[2] and not GLUE_ROLE.search(deciding)):
        problems.append(f"{claim!r}: the deciding number must be glued numbers, "
                        f"not {deciding!r}")
    return problems


ROWS = table_rows(LEDGER.read_text())


def test_the_ledger_has_its_rows():
    assert len(ROWS) >= 18


@pytest.mark.parametrize("row", ROWS, ids=[r[0][:40] for r in ROWS])
def test_every_row_carries_one_of_the_four_words(row, request):
    if row[0] in PENDING:
        request.applymarker(pytest.mark.xfail(reason=PENDING[row[0]], strict=True))
    assert verdict_problems(row, _notebooks()) == []


@pytest.mark.parametrize("row", ROWS, ids=[r[0][:40] for r in ROWS])
def test_every_row_points_to_what_exists(row):
    assert pointer_problems(row) == []


@pytest.mark.parametrize("row", ROWS, ids=[r[0][:40] for r in ROWS])
def test_a_trained_verdict_can_be_called_length_dependent(row, request):
    if _key(row) in NO_HALF_YET:
        request.applymarker(pytest.mark.xfail(reason=NO_HALF_YET[_key(row)], strict=True))
    assert length_problems(row, _notebooks()) == []


def test_pending_rows_are_rows():
    assert set(PENDING) <= {r[0] for r in ROWS}
    assert set(NO_LENGTH) | set(NO_HALF_YET) <= {_key(r) for r in ROWS}


def test_a_verdict_without_not_tested_is_caught():
    """Chapter 5's Figure 1 (a) row before its ledger word consulted the half length."""
    notebooks = _notebooks()
    row = ("Figure 1 (a)", "", "{glue:text}`../notebooks/05_mnist.ipynb::ch05_ledger_fig1a:s`",
           "")
    assert length_problems(row, notebooks) == []
    nb = notebooks["05_mnist"]
    for v in nb.verdicts:
        if v["pattern"] == "ch05_ledger_fig1a":
            v["words"] = [w for w in v["words"] if w != "not tested"]
    assert "never says 'not tested'" in length_problems(row, notebooks)[0]


def test_the_old_rows_are_caught():
    """The Figure 1 row said "the verdict is in chapter 5", the ICS row pointed to "the
    chapter's ICS table", which does not exist, and the ghost-noise row pasted a
    sentence."""
    notebooks = _notebooks()
    old = [
        ("Figure 1", "{doc}`chapter 5 <../notebooks/05_mnist>`",
         "the verdict is in chapter 5", "{glue:text}`../notebooks/05_mnist.ipynb::ch05_lr:s`"),
        ("ICS", "{doc}`chapter 8 <../notebooks/08_why_bn_works>`",
         "{glue:text}`../notebooks/08_why_bn_works.ipynb::ch08_ics_rel_word:s`",
         "see the chapter's ICS table"),
        ("noise", "{ref}`chapter 7 <ch07-regularization>`",
         "{glue:text}`../notebooks/08_why_bn_works.ipynb::ch08_stable_word:s`",
         "{glue:text}`../notebooks/07_what_bn_buys.ipynb::ch07_reg_gap_bn:.2%`"),
        ("label", "{ref}`chapter 7 <ch07-nowhere>`", "not tested", "a reason"),
    ]
    assert "one glued verdict word" in verdict_problems(old[0], notebooks)[0]
    assert "can say" in verdict_problems(old[1], notebooks)[0]
    assert pointer_problems(old[1]) and "can say" in verdict_problems(old[2], notebooks)[0]
    assert "no label" in pointer_problems(old[3])[0]
