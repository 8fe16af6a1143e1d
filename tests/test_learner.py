"""The learner notebooks (book/_ext/learner.py): MyST in, plain Markdown out.

Small synthetic notebooks go through the converter with a stand-in for Sphinx's
cross-reference resolution; every chapter of the book goes through it too, to show that
no construct the chapters use is left raw. The JupyterLab side (rendering, "Run all")
is tests/browser/test_lab.py.
"""

import base64
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import learner as L  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WEB = "https://example.org/book/"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()

# what Sphinx would answer for the labels of the synthetic chapter "notebooks/02_x"
TARGETS = {
    ("numref", "fig-here"): ("Fig. 2.1", None),
    ("numref", "fig-there"): ("Fig. 3.4", WEB + "notebooks/03_y.html#fig-there"),
    ("numref", "ex-a"): ("Exercise 2.1", None),
    ("numref", "ex-b"): ("Exercise 2.2", None),
    ("eq", "eq-here"): ("(2.1)", None),
    ("eq", "eq-there"): ("(3.2)", WEB + "notebooks/03_y.html#equation-eq-there"),
    ("ref", "sec-there"): ("Small batches", WEB + "notebooks/09_z.html#sec-there"),
    ("doc", "../book/claims"): ("The claims ledger", WEB + "book/claims.html"),
    ("cite:p", "ioffe2015batch"): ("[Ioffe and Szegedy, 2015]", WEB + "book/references.html#id1"),
    ("cite:t", "ioffe2015batch"): ("Ioffe and Szegedy [2015]", WEB + "book/references.html#id1"),
}


def resolve(role, content):
    title, target = L._explicit(content)
    found = TARGETS.get((role, target.lower() if role in ("ref", "numref") else target))
    if found is None:
        return None
    text, url = found
    if title != target:  # an explicit title, as Sphinx uses it
        text = title.replace("%s", text.split()[-1]) if role == "numref" else title
    return text, url


GLUE = {
    "share": {"data": {"text/plain": "0.12345"}},
    "count": {"data": {"text/plain": "60000"}},
    "tiny": {"data": {"text/plain": "3.8080721775912707e-07"}},
    "word": {"data": {"text/plain": "'smaller'"}},
    "table": {"data": {"text/markdown": "| a | b |\n|---|---|\n| 1 | {eq}`eq-here` |",
                       "text/plain": "<table>"}},
    "plot": {"data": {"image/png": PNG, "text/plain": "<Figure>"}},
}
OTHER = {("03_y.ipynb", "acc"): {"data": {"text/plain": "0.9871"}}}


def context(**kwargs):
    args = dict(resolve=resolve, glue=GLUE, glue_from=lambda doc, key: OTHER.get((doc, key)),
                web=WEB, page=WEB + "notebooks/02_x.html", note="Numbers from the build.")
    args.update(kwargs)
    return L.Context("notebooks/02_x", **args)


def md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def code(text, tags=(), outputs=(), **meta):
    metadata = dict(meta, **({"tags": list(tags)} if tags else {}))
    return {"cell_type": "code", "metadata": metadata, "source": text,
            "outputs": list(outputs), "execution_count": 1}


def stream(text):
    return {"output_type": "stream", "name": "stdout", "text": text}


def notebook(*cells):
    return {"cells": list(cells), "metadata": {"kernelspec": {"name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def convert(text, **kwargs):
    ctx = context(**kwargs)
    out = L.convert_markdown(text, ctx)
    return out, ctx.warnings


# ------------------------------------------------------------------ glue


@pytest.mark.parametrize("role, expected", [
    ("{glue:text}`share:.2%`", "12.35%"),
    ("{glue:text}`share:.3f`", "0.123"),
    ("{glue:text}`count:,`", "60,000"),
    ("{glue:text}`count:,.0f`", "60,000"),
    ("{glue:text}`tiny:.1e`", "3.8e-07"),
    ("{glue:text}`word`", "smaller"),  # a string: its quotes go, as on the web page
    ("{glue:text}`share`", "0.12345"),
    ("{glue:text}`03_y.ipynb::acc:.1%`", "98.7%"),  # glued by another chapter
    ("{glue}`share`", "0.12345"),
    ("{glue:}`word`", "'smaller'"),  # the any-role pastes the repr, as myst_nb does
])
def test_glue_roles_become_the_build_values(role, expected):
    out, warnings = convert(f"Accuracy: {role}, as measured.")
    assert out == f"Accuracy: {expected}, as measured." and warnings == []


def test_missing_glue_is_flagged_not_hidden():
    out, warnings = convert("{glue:text}`nothing:.2f` here")
    assert "nothing" in out and "not computed" in out
    assert any("nothing glued under 'nothing'" in w for w in warnings)


def test_glued_markdown_and_figures():
    ctx = context()
    out = L.convert_markdown("{glue:md}`table`\n\n```{glue:figure} plot\n:name: fig-here\n"
                             "The plot.\n```", ctx)
    assert "| 1 | (2.1) |" in out  # MyST inside a glued table is converted too
    assert f"![output](data:image/png;base64,{PNG})" in out
    assert "**Fig. 2.1.** The plot." in out
    assert ctx.warnings == []


def test_glue_values_come_from_the_store_and_the_outputs():
    nb = notebook(code("glue('shown', 1)", outputs=[{
        "output_type": "display_data", "data": {"text/plain": "1"},
        "metadata": {"scrapbook": {"name": "shown", "mime_prefix": ""}}}]))
    found = L.glued(nb, {"hidden": {"data": {"text/plain": "2"}, "metadata": {}}})
    assert found == {"hidden": {"data": {"text/plain": "2"}},
                     "shown": {"data": {"text/plain": "1"}}}


# ------------------------------------------------------------------ references


def test_references_are_text_here_and_links_elsewhere():
    out, warnings = convert(
        "See {numref}`fig-here` and {numref}`fig-there`, {eq}`eq-here` and {eq}`eq-there`, "
        "{ref}`the section <sec-there>`, {doc}`ledger <../book/claims>`, "
        "{numref}`Figure %s <fig-here>` and {cite:p}`ioffe2015batch`; "
        "{cite:t}`ioffe2015batch` said so.")
    assert out == (
        "See Fig. 2.1 and [Fig. 3.4](https://example.org/book/notebooks/03_y.html#fig-there), "
        "(2.1) and [(3.2)](https://example.org/book/notebooks/03_y.html#equation-eq-there), "
        "[the section](https://example.org/book/notebooks/09_z.html#sec-there), "
        "[ledger](https://example.org/book/book/claims.html), Figure 2.1 and "
        "[[Ioffe and Szegedy, 2015]](https://example.org/book/book/references.html#id1); "
        "[Ioffe and Szegedy [2015]](https://example.org/book/book/references.html#id1) said so.")
    assert warnings == []


def test_a_role_split_over_two_lines():
    out, _ = convert("the {ref}`small\nbatches <sec-there>` chapter")
    assert out == "the [small batches](https://example.org/book/notebooks/09_z.html#sec-there) chapter"


def test_unresolved_reference_warns():
    out, warnings = convert("{numref}`fig-nowhere`")
    assert out == "fig-nowhere" and "does not resolve" in warnings[0]


def test_links_to_pages_go_to_the_web_book_and_chapters_stay_notebooks():
    out, _ = convert("[notation](../book/notation.md), [chapter 3](03_backprop.ipynb), "
                     "[PyTorch](https://pytorch.org), [above](#sec)")
    assert out == ("[notation](https://example.org/book/book/notation.html), "
                   "[chapter 3](03_backprop.ipynb), [PyTorch](https://pytorch.org), "
                   "[above](#sec)")


def test_labelled_equations_carry_their_number():
    out, _ = convert("$$\nx = 1\n$$ (eq-here)\n\nand $$ y $$ (eq-there), but $$z$$ (not a label")
    assert out.startswith("$$\nx = 1\n\\tag{2.1}\n$$\n\nand $$ y \\tag{3.2} $$, but $$z$$ (not")


def test_code_is_left_alone():
    text = "```python\nglue('k', 1)  # {glue:text}`k`\n```\n\nInline `{eq}` stays: ``{eq}`x` ``."
    out, warnings = convert(text)
    assert out == text and warnings == []


# ------------------------------------------------------------------ directives


def test_exercise_admonitions_dropdowns_labels_comments():
    out, warnings = convert(
        "(sec-a)=\n## A\n% a comment\n+++\n"
        "```{exercise} Your turn: $\\hat{x}$\n:label: ex-a\nWrite it; see {eq}`eq-here`.\n"
        "$$\na = b\n$$\n```\n\n"
        ":::{note}\nBN is {glue:text}`word`.\n:::\n\n"
        "````{admonition} Why it matters\n:class: dropdown\n```python\nx = 1\n```\n````\n\n"
        "```{warning}\nCareful.\n```\n\n```{dropdown} More\nHidden text.\n```")
    assert warnings == []
    assert out.startswith("## A\n\n> **Exercise")
    assert "(sec-a)=" not in out and "comment" not in out and "+++" not in out
    assert "> **Exercise 2.1** (Your turn: $\\hat{x}$)\n>\n> Write it; see (2.1).\n> $$a = b$$" in out
    assert "> **Note**\n>\n> BN is smaller." in out
    assert "<details>\n<summary>Why it matters</summary>\n\n```python\nx = 1\n```\n\n</details>" in out
    assert "> **Warning**\n>\n> Careful." in out
    assert "<details>\n<summary>More</summary>\n\nHidden text.\n\n</details>" in out
    assert L.raw_myst(out) == []


def test_figure_directive_embeds_the_image(tmp_path):
    (tmp_path / "img.png").write_bytes(b"\x89PNG fake")
    ctx = context(source_dir=tmp_path)
    out = L.convert_markdown("```{figure} img.png\n:name: fig-here\n:alt: digits\n"
                             "The first digits, {glue:text}`count:,` of them.\n```", ctx)
    image = base64.b64encode(b"\x89PNG fake").decode()
    assert out == (f"![digits](data:image/png;base64,{image})\n\n"
                   "**Fig. 2.1.** The first digits, 60,000 of them.")
    assert ctx.warnings == []


def test_an_unknown_directive_is_shown_as_text_and_warned():
    out, warnings = convert("```{tab-set}\ncontent\n```")
    assert out == "content" and "tab-set" in warnings[0]


def test_raw_myst_finds_what_is_left():
    assert L.raw_myst("a {numref}`x` b") == ["{numref}`x`"]
    assert L.raw_myst("```{note}\nx\n```") == ["```{note}"]
    assert L.raw_myst("(label)=\n# T") == ["(label)="]
    assert L.raw_myst("```python\n{numref}`x`\n```\nand `code`") == []


# ------------------------------------------------------------------ notebooks


STUB = 'def my_bn(x):\n    raise NotImplementedError("your code here")'
CHECK = "checked = check.bn(my_bn)"


def chapter():
    return notebook(
        md("# Chapter\n\n## Overview\nText."),
        code("# Learner notebook (readable in JupyterLab; locally: make lab), in Colab:\n"
             "# https://colab.research.google.com/github/o/r/blob/\n"
             "#   learner/notebooks/02_x.ipynb\n"
             "import importlib.util", tags=["hide-output"]),
        code("import numpy as np"),
        code("x = np.ones(3)\nglue('share', x.mean(), display=False)", outputs=[
            {"output_type": "display_data", "metadata": {"scrapbook": {
                "name": "share", "mime_prefix": L.GLUE_PREFIX}},
             "data": {L.GLUE_PREFIX + "text/plain": "0.12345"}}]),
        code("guard(True, 'x')", tags=["remove-cell"]),
        code("print(steps)", tags=["remove-input"], outputs=[stream("steps: 600\n")]),
        code("plot(x)", tags=["hide-input"], mystnb={"figure": {
            "name": "fig-here", "caption": "Curves ({glue:text}`share:.1%`)."}},
            outputs=[{"output_type": "display_data", "metadata": {},
                      "data": {"image/png": PNG, "text/plain": "<Figure>"}}]),
        md("```{exercise} Your turn\n:label: ex-a\nWrite `my_bn`.\n```"),
        code(STUB),
        code(CHECK, outputs=[stream("bn: not implemented yet.\n")]),
        md("```{solution-start} ex-a\n:class: dropdown\n```\nSubtract the mean."),
        code("def my_bn(x):\n    return x - x.mean()\n\n\n" + CHECK,
             outputs=[stream("bn: passed\n")]),
        code("glue('hidden', 1)", tags=["remove-cell"]),
        code("plot(x)", mystnb={"figure": {"name": "fig-there", "caption": "Solved."}},
             outputs=[{"output_type": "display_data", "metadata": {},
                       "data": {"image/png": PNG, "text/plain": "<Figure>"}}]),
        md("```{solution-end}\n```\nAfter the solution, {numref}`fig-here`."),
        md("```{exercise} Another\n:label: ex-b\nThink.\n```\n\n"
           "```{solution} ex-b\n:class: dropdown\nBecause {glue:text}`word`.\n```"),
    )


def test_learner_notebook_of_a_chapter():
    ctx = context()
    nb = L.learner_notebook(chapter(), ctx)
    assert ctx.warnings == []
    cells = nb["cells"]
    text = [L._text(c["source"]) for c in cells]
    codes = [L._text(c["source"]) for c in cells if c["cell_type"] == "code"]

    # the note under the title; the setup cell points to the web page
    assert text[0].startswith(f"# Chapter\n\n> Numbers from the build. {L.SOLUTIONS_NOTE}\n\n"
                              "## Overview")
    assert codes[0].startswith("# This chapter on the web: https://example.org/book/notebooks/"
                               "02_x.html\nimport importlib.util")
    # the stub and its checker stay runnable, the solution's code does not run
    assert STUB in codes and CHECK in codes
    assert not any("return x - x.mean()" in c for c in codes)
    solution = next(t for t in text if "<summary>Solution to Exercise 2.1 (Your turn)" in t)
    assert solution.startswith("<details>\n<summary>") and solution.endswith("</details>")
    assert "Subtract the mean." in solution and "return x - x.mean()" in solution
    assert "*Output (the book's run):*\n\n```text\nbn: passed\n```" in solution
    assert f"![output](data:image/png;base64,{PNG})" in solution  # Colab shows no attachments
    assert "**Fig. 3.4.** Solved." in solution
    assert "glue('hidden'" not in solution  # bookkeeping inside a solution is dropped
    assert "After the solution, Fig. 2.1." in text
    assert any("<summary>Solution to Exercise 2.2 (Another)</summary>\n\nBecause smaller." in t
               for t in text)

    by_source = {L._text(c["source"]).split("\n")[-1]: c for c in cells if c["cell_type"] == "code"}
    removed, shown_output, plot = (by_source["guard(True, 'x')"], by_source["print(steps)"],
                                   by_source["plot(x)"])
    for cell in (removed, shown_output, plot):
        assert cell["metadata"]["jupyter"]["source_hidden"] is True
        assert cell["metadata"]["cellView"] == "form"
        assert L._text(cell["source"]).startswith("# @title ")
    assert removed["metadata"]["jupyter"]["outputs_hidden"] is True
    assert "outputs_hidden" not in shown_output["metadata"]["jupyter"]
    # a glue output (nothing to see) goes; other outputs stay
    assert by_source["glue('share', x.mean(), display=False)"]["outputs"] == []
    assert shown_output["outputs"] == [stream("steps: 600\n")]
    i = cells.index(plot)
    assert L._text(cells[i + 1]["source"]) == "**Fig. 2.1.** Curves (12.3%)."
    assert all(L.raw_myst(t) == [] for t in text)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    import nbformat

    nbformat.validate(nbformat.from_dict(nb))


def test_a_cell_that_needs_a_solution_is_flagged():
    nb = chapter()
    nb["cells"].append(code("print(my_bn(x))"))
    ctx = context()
    L.learner_notebook(nb, ctx)
    assert any("my_bn" in w and "only in a solution" in w for w in ctx.warnings)


def test_unpaired_solutions_are_flagged():
    ctx = context()
    L.learner_notebook(notebook(md("# T"), md("```{solution-start} ex-a\n```\nText")), ctx)
    assert any("never closed" in w for w in ctx.warnings)


def test_an_output_with_a_path_of_the_build_machine_is_flagged():
    nb = notebook(md("# T"), code("print(root)", outputs=[
        stream(f"folder: {Path.home() / 'data'}\nfolder: ~/data\n")]),
        code("print(cache)", outputs=[stream(f"loaded from {ROOT / '_cache'}\n")]))
    assert L.machine_paths(nb) == [(1, f"folder: {Path.home() / 'data'}"),
                                   (2, f"loaded from {ROOT / '_cache'}")]
    beside = ROOT.parent / "shared" / "mnist"  # a data folder next to the repository
    assert L.machine_paths(notebook(code("", outputs=[stream(f"{beside}\n../x\n")]))) \
        == [(0, str(beside))]


# ------------------------------------------------------------------ the book's chapters


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_construct_of_the_chapters_converts(path):
    """The sources (no outputs, so no glued values): nothing MyST is left, no directive
    or role lacks a plain form, and no cell after a solution needs the solution."""
    def anything(role, content):
        title, target = L._explicit(content)
        return (title if title != target else f"[{target}]"), None

    ctx = context(resolve=anything, glue={})
    nb = L.learner_notebook(json.loads(path.read_text()), ctx)
    problems = [w for w in ctx.warnings if "nothing glued" not in w]
    assert problems == []
    for cell in nb["cells"]:
        assert L.raw_myst(L._text(cell["source"])) == [], L._text(cell["source"])[:300]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_points_to_the_learner_notebook(path):
    url = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(),
                    re.M).group(1)
    cells = json.loads(path.read_text())["cells"]
    setup = L._text(next(c for c in cells if c["cell_type"] == "code")["source"])
    assert setup.startswith(L.SETUP_POINTER)
    # the address may continue on the next comment line (the column is 88 wide)
    assert f"# {L.colab_url(url, path.stem)}\n" in setup.replace("\n#   ", "")
    assert max(map(len, setup.split("\n"))) <= 88


# ------------------------------------------------------------------ make lab


def test_sync_never_replaces_an_edited_copy_without_asking(tmp_path):
    built, mine = tmp_path / "built", tmp_path / "lab"
    built.mkdir()
    (built / "01_a.ipynb").write_text("v1")
    said = []
    L.sync(built, mine, ask=lambda q: pytest.fail("nothing to ask"), say=said.append)
    assert (mine / "01_a.ipynb").read_text() == "v1"

    (built / "01_a.ipynb").write_text("v2")  # a new build; the copy is untouched
    L.sync(built, mine, ask=lambda q: pytest.fail("nothing to ask"), say=said.append)
    assert (mine / "01_a.ipynb").read_text() == "v2"

    (mine / "01_a.ipynb").write_text("my work")  # the learner edits it
    L.sync(built, mine, ask=lambda q: pytest.fail("nothing new to ask about"), say=said.append)
    assert (mine / "01_a.ipynb").read_text() == "my work"

    (built / "01_a.ipynb").write_text("v3")
    questions = []
    L.sync(built, mine, ask=lambda q: questions.append(q) or False, say=said.append)
    assert len(questions) == 1 and "you changed it" in questions[0]
    assert (mine / "01_a.ipynb").read_text() == "my work"
    L.sync(built, mine, ask=None, say=said.append)  # no terminal to ask: keep theirs
    assert (mine / "01_a.ipynb").read_text() == "my work"

    L.sync(built, mine, ask=lambda q: True, say=said.append)
    assert (mine / "01_a.ipynb").read_text() == "v3"
    assert (mine / "01_a.mine.ipynb").read_text() == "my work"


def test_adjacent_roles():
    out, _ = convert("×{glue:text}`count:,`{glue:text}`word`")
    assert out == "×60,000smaller"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_needs_myst_nb(path):
    """Colab has no myst_nb: a chapter glues through ``bnutils.verdict.glue``, which uses
    myst_nb where it is installed (the build, make lab) and is harmless elsewhere."""
    cells = json.loads(path.read_text())["cells"]
    imports = [line for c in cells if c["cell_type"] == "code"
               for line in L._text(c["source"]).split("\n")
               if re.match(r"\s*(from myst_nb\b|import myst_nb\b)", line)]
    assert imports == [], f"{path.name}: use `from bnutils.verdict import glue` instead"
