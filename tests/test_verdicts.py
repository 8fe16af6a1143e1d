"""The text follows the numbers: prose and computed verdicts cannot silently disagree.

A sentence whose truth depends on a run either takes its deciding words from the
notebook (``bnutils.verdict.verdict``: glued, cited with {glue:text}`key`) or is typed
and guarded (``bnutils.verdict.guard(holds, "the typed claim")`` fails the full build
when the run contradicts it). These checks read every notebook (and the results page)
as files and fail when the two mechanisms are bypassed or come apart:

1. every verdict is shown: its key is cited in the notebook's markdown (or from a page);
2. no hand-made verdict: ``glue(key, "a" if ... else "b")`` must be a ``verdict`` call;
3. a verdict has two different alternatives, written out, and a computed ``holds``;
4. no paragraph that cites a verdict also types one of its alternatives (the glued
   word says "smaller" while the typed sentence beside it says "larger");
5. guards quote the text: a guard's claim appears in the markdown, so editing the
   sentence without its guard (or keeping a guard for a sentence that is gone) fails;
6. known typed verdicts (found in review, listed below) are gone or guarded;
7. every glue key the text cites is glued by the notebook it names;
8. a sentence says what its condition tests: words that claim each of several
   alternatives ("slowing either A or B alone lets it train") need a condition that
   requires each of them, not one that holds when any does (``a or b``, ``any(...)``);
9. glued words carry no Markdown (``{glue:text}`` shows backticks and asterisks as
   they are).

A verdict may have more than two outcomes: ``verdict(key, outcome, {outcome: words})``.

``test_checks_catch_planted_bugs`` plants each known bug once and sees it caught.
"""

import ast
import copy
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PAGES = sorted((ROOT / "book").glob("*.md"))

# Interpretive sentences that review found typed in the text. Each must be absent from
# its notebook's markdown, or guarded by a guard() whose claim contains it.
KNOWN_TYPED_VERDICTS = {
    "04_inference": ["serves as well as"],
    "05_mnist": ["higher test accuracy at every rate", "apart from unit 6"],
    "06_cnn": ["starts slower than the baseline", "mostly a little below it",
               "trains about as fast as the ReLU networks"],
    "08_why_bn_works": ["is not the one with the smaller ICS",
                        "reducing ICS is not what makes it fast",
                        "the noisy network is a little behind plain BN",
                        "Yet the noisy network trains almost as well"],
    "09_small_batches": ["falls fastest", "drops faster than that of the other"],
    "results": ["stable distributions are not what makes BN train fast"],
}

GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`]+)`")
ANY_ROLE = re.compile(r"\{[\w:-]+\}`[^`]*`")
VERDICT_NAMES = {"verdict"}
GUARD_NAMES = {"guard"}


def _library_words():
    """The dicts of words that notebooks import from ``bnutils.verdict`` (``LEDGER``):
    name -> its literal, read as the notebooks' own dicts are."""
    tree = ast.parse((ROOT / "bnutils" / "verdict.py").read_text())
    return {t.id: node.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
            for t in node.targets if isinstance(t, ast.Name)}


LIBRARY_WORDS = _library_words()


# --- reading a notebook ----------------------------------------------------------------

def _source(cell):
    return "".join(cell["source"])


def _markdown(nb):
    return [_source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]


def _code(nb):
    trees = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = [ln for ln in _source(cell).splitlines() if not ln.lstrip().startswith(("%", "!"))]
        trees.append(ast.parse("\n".join(lines)))
    return trees


def _cited_key(text):
    """The key of a glue role's content, ``key:fmt`` or ``doc::key:fmt``."""
    doc, _, rest = text.rpartition("::")
    return doc, rest.split(":")[0]


def _citations(markdown_cells):
    return [_cited_key(m) for cell in markdown_cells for m in GLUE_ROLE.findall(cell)]


def _paragraphs(markdown_cells):
    return [p for cell in markdown_cells for p in re.split(r"\n\s*\n", cell) if p.strip()]


def _typed(text):
    """The typed words of a text: roles (glue, refs, citations) and markup removed."""
    text = ANY_ROLE.sub(" \u2022 ", text)
    text = re.sub(r"[*`_]", "", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def _contains_phrase(text, phrase):
    return re.search(r"(?<!\w)" + re.escape(_typed(phrase)) + r"(?!\w)", text) is not None


def _call_name(call):
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _arg(call, index, name):
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == name), None)


def _const_str(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _key_pattern(node):
    """A regex for a glue key given as a literal or an f-string (its fields match anything)."""
    if _const_str(node) is not None:
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else r"[\w.-]+"
                       for v in node.values)
    return r"[\w.-]+"  # computed key: accept any


def _is_word_choice(node):
    """``"a" if cond else "b"`` (also inside ``Markdown(...)``): a verdict made by hand."""
    return any(isinstance(n, ast.IfExp) and _const_str(n.body) is not None
               and _const_str(n.orelse) is not None for n in ast.walk(node))


class Notebook:
    """What the checks need from one notebook (or a markdown page)."""

    def __init__(self, name, nb):
        self.name = name
        self.markdown = _markdown(nb)
        self.verdicts, self.guards, self.glued, self.hand_made = [], [], [], []
        self.strings = []  # the string literals glued as text
        self.assigned = {}  # name -> the expressions assigned to it
        choices = set()
        for tree in _code(nb):
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and _is_word_choice(node.value):
                    choices |= {t.id for t in node.targets if isinstance(t, ast.Name)}
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        if isinstance(t, ast.Name):
                            self.assigned.setdefault(t.id, []).append(node.value)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name, key = _call_name(node), _arg(node, 0, "key")
                if name in VERDICT_NAMES:
                    texts = (_arg(node, 2, "if_true"), _arg(node, 3, "if_false"))
                    words = texts[0]
                    if isinstance(words, ast.Name):  # a dict of words named once
                        named = self.assigned.get(words.id, [])
                        if len(named) == 1:
                            words = named[0]
                        elif not named and words.id in LIBRARY_WORDS:
                            words = LIBRARY_WORDS[words.id]
                    if isinstance(words, ast.Dict):  # one text per outcome
                        texts = tuple(words.values)
                    self.verdicts.append(dict(
                        key=_const_str(key), pattern=_key_pattern(key),
                        holds=_arg(node, 1, "holds"), texts=texts,
                        words=tuple(_const_str(t) for t in texts)))
                    self.glued.append(_key_pattern(key))
                elif name in GUARD_NAMES:
                    self.guards.append(_const_str(_arg(node, 1, "claim")))
                elif name == "glue" and key is not None:
                    self.glued.append(_key_pattern(key))
                    value = _arg(node, 1, "variable")
                    self.strings += [n.value for n in ast.walk(value or ast.Pass())
                                     if _const_str(n) is not None]
                    if value is not None and (_is_word_choice(value) or any(
                            isinstance(n, ast.Name) and n.id in choices
                            for n in ast.walk(value))):
                        self.hand_made.append(_const_str(key) or ast.unparse(key))

    def produces(self, key):
        return any(re.fullmatch(p, key) for p in self.glued)


def load(path):
    if path.suffix == ".md":
        return Notebook(path.stem, {"cells": [{"cell_type": "markdown",
                                               "source": path.read_text()}]})
    return Notebook(path.stem, json.loads(path.read_text()))


# --- the checks: each returns a list of problems ---------------------------------------

def check_verdicts_shown(nb, others=None):
    """Cited in the notebook itself, or from another page with ``doc::key``."""
    cited = {key for _, key in _citations(nb.markdown)}
    for other in (others or {}).values():
        cited |= {key for doc, key in _citations(other.markdown) if Path(doc).stem == nb.name}
    return [f"{nb.name}: verdict {v['key'] or v['pattern']!r} is computed but never cited "
            f"in the text" for v in nb.verdicts
            if not any(re.fullmatch(v["pattern"], key) for key in cited)]


def check_no_hand_made_verdicts(nb):
    return [f"{nb.name}: glue {k!r} picks its words with an if/else: use verdict() so the "
            f"checks can see both alternatives" for k in nb.hand_made]


def check_verdict_form(nb):
    problems = []
    for v in nb.verdicts:
        where = f"{nb.name}: verdict {v['key'] or v['pattern']}"
        written = all(isinstance(t, (ast.Constant, ast.JoinedStr)) for t in v["texts"])
        if not written or (None not in v["words"] and len(set(v["words"])) < 2):
            problems.append(f"{where}: needs two different alternatives written out "
                            f"(string literals or f-strings)")
        if isinstance(v["holds"], ast.Constant):
            problems.append(f"{where}: `holds` is a constant, not a computed fact")
    return problems


def check_no_typed_alternative(nb):
    problems = []
    for v in nb.verdicts:
        if None in v["words"]:
            continue
        for para in _paragraphs(nb.markdown):
            if not any(re.fullmatch(v["pattern"], key) for _, key in _citations([para])):
                continue
            typed = _typed(para)
            for word in v["words"]:
                if word.strip() and _contains_phrase(typed, word):
                    problems.append(
                        f"{nb.name}: the paragraph citing verdict {v['key'] or v['pattern']!r} "
                        f"also types "
                        f"{word!r}, one of its alternatives: {typed[:80]!r}...")
    return problems


def _quoted(claim, paragraphs):
    """True when the claim's fragments (split at "...") appear in order in one paragraph."""
    parts = [_typed(p) for p in re.split(r"\.\.\.|\u2026", claim) if p.strip()]
    for para in paragraphs:
        text, at = _typed(para), 0
        for part in parts:
            found = text.find(part, at)
            if found < 0:
                break
            at = found + len(part)
        else:
            return True
    return False


def check_guards_quote_the_text(nb):
    problems, paragraphs = [], _paragraphs(nb.markdown)
    for claim in nb.guards:
        if claim is None:
            problems.append(f"{nb.name}: a guard's claim must be a string literal")
        elif not _quoted(claim, paragraphs):
            problems.append(f"{nb.name}: guard claim {claim!r} is not in the text (quote "
                            f"the sentence it protects, '...' between fragments)")
    return problems


def check_known_typed_verdicts(nb):
    problems = []
    text = " ".join(_typed(p) for p in _paragraphs(nb.markdown))
    claims = [_typed(c) for c in nb.guards if c]
    for phrase in KNOWN_TYPED_VERDICTS.get(nb.name, []):
        if _contains_phrase(text, phrase) and not any(
                _contains_phrase(c, phrase) for c in claims):
            problems.append(f"{nb.name}: typed verdict {phrase!r} is neither computed nor "
                            f"guarded")
    return problems


def check_cited_keys_exist(nb, others):
    problems = []
    for doc, key in _citations(nb.markdown):
        source = others.get(Path(doc).stem) if doc else nb
        if source is None:
            problems.append(f"{nb.name}: cites {doc}::{key}, an unknown notebook")
        elif not source.produces(key):
            problems.append(f"{nb.name}: cites glue key {key!r}, which {source.name} never glues")
    return problems


EACH_OF = re.compile(r"\beither\b[^.;:]*\bor\b", re.I)


def _any_of(node, nb, depth=0):
    """Does the condition ``node`` hold when any one of several things does: an ``or``,
    or ``any(...)``, in it or in what a name in it was assigned (followed 3 deep)?"""
    for n in ast.walk(node):
        if isinstance(n, ast.BoolOp) and isinstance(n.op, ast.Or):
            return True
        if isinstance(n, ast.Call) and _call_name(n) == "any":
            return True
        if isinstance(n, ast.Name) and depth < 3 and any(
                _any_of(v, nb, depth + 1) for v in nb.assigned.get(n.id, [])):
            return True
    return False


def check_either_or_matches_its_condition(nb):
    """Chapter 7 said "slowing either γ and β or the last layer alone lets `bn_x30`
    train" when *one* of the two fixes worked, while its table showed the other fail."""
    problems = []
    for v in nb.verdicts:
        holds = v["holds"]
        if holds is None or not _any_of(holds, nb):
            continue
        for word in v["words"]:
            if word and EACH_OF.search(word):
                problems.append(
                    f"{nb.name}: verdict {v['key'] or v['pattern']!r} says {word[:60]!r}... "
                    f"(each alternative) but holds when any one does: decide it from the "
                    f"same per-alternative condition its table shows")
    return problems


def check_no_markup_in_glued_words(nb):
    """``{glue:text}`` shows glued text as it is: backticks and ``**`` appear raw."""
    words = [w for v in nb.verdicts for w in v["words"] if w] + nb.strings
    return [f"{nb.name}: glued text {w[:50]!r} contains Markdown that the page shows raw"
            for w in words if "`" in w or "**" in w]


CHECKS = [check_no_hand_made_verdicts, check_verdict_form, check_no_typed_alternative,
          check_guards_quote_the_text, check_known_typed_verdicts,
          check_either_or_matches_its_condition, check_no_markup_in_glued_words]


def problems_of(nb, others):
    return ([p for check in CHECKS for p in check(nb)] + check_verdicts_shown(nb, others)
            + check_cited_keys_exist(nb, others))


@pytest.fixture(scope="module")
def books():
    return {p.stem: load(p) for p in NOTEBOOKS + PAGES}


# --- the tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=lambda p: p.name)
def test_text_follows_the_numbers(path, books):
    assert problems_of(load(path), books) == []


def test_known_verdicts_name_real_notebooks():
    names = {p.stem for p in NOTEBOOKS + PAGES} | {"07_what_bn_buys"}
    assert set(KNOWN_TYPED_VERDICTS) <= names


# --- planting the known bugs: each must be caught ------------------------------------------

def _raw(name):
    return json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())


def _edit_markdown(nb, find, change):
    """Apply ``change`` to the first markdown cell containing ``find``."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown" and find in _source(cell):
            cell["source"] = change(_source(cell))
            return nb
    raise AssertionError(f"no markdown cell contains {find!r}")


def _first_verdict(name):
    # a verdict whose words are both visible ("at least " / "" cannot be typed back)
    v = next(v for v in Notebook(name, _raw(name)).verdicts
             if v["key"] and all(w.strip() for w in v["words"]))
    return v, "{glue:text}`" + v["key"] + "`"


def _planted(name, plant):
    nb = plant(copy.deepcopy(_raw(name)))
    return problems_of(Notebook(name, nb), {})


def test_planted_hand_made_word_choice_is_caught():
    """Chapter 8 glued ``"smaller" if ... else "larger"`` next to prose that disagreed."""
    def plant(nb):
        nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [],
                            "execution_count": None, "source":
                            'glue("ch08_x_word", "smaller" if a < b else "larger")\n'
                            'w = "meets" if a else "does not meet"\nglue("ch03_y", Markdown(w))'})
        return nb
    found = _planted("08_why_bn_works", plant)
    assert sum("if/else" in p for p in found) == 2, found


@pytest.mark.parametrize("name", [p.stem for p in NOTEBOOKS
                                  if Notebook(p.stem, _raw(p.stem)).verdicts])
def test_planted_typed_alternative_is_caught(name):
    """Type a verdict's other word into the paragraph that cites it."""
    v, role = _first_verdict(name)
    plant = lambda nb: _edit_markdown(  # noqa: E731
        nb, role, lambda s: s.replace(role, role + f" (typed: {v['words'][1]})", 1))
    assert any("also types" in p for p in _planted(name, plant))


@pytest.mark.parametrize("name", [p.stem for p in NOTEBOOKS
                                  if Notebook(p.stem, _raw(p.stem)).verdicts])
def test_planted_uncited_verdict_is_caught(name):
    v, role = _first_verdict(name)

    def plant(nb):
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = _source(cell).replace(role, "a word")
        return nb
    assert any("never cited" in p for p in _planted(name, plant))


@pytest.mark.parametrize(("name", "sentence"), [
    ("08_why_bn_works", "Either way, the network that trains fast is not the one with "
                        "the smaller ICS."),
    ("08_why_bn_works", "ICS is larger with BN, while BN trains much faster: reducing ICS "
                        "is not what makes it fast."),
    ("09_small_batches", "BN (and ghost BN, the same function up to 16 examples) falls "
                         "fastest."),
    ("04_inference", "For this network, PyTorch's default serves as well as Algorithm 2 "
                     "after training too."),
])
def test_planted_known_typed_verdict_is_caught(name, sentence):
    plant = lambda nb: _edit_markdown(nb, "## Summary", lambda s: sentence + "\n\n" + s)  # noqa: E731
    assert any("neither computed nor guarded" in p for p in _planted(name, plant))


def test_planted_edit_of_a_guarded_sentence_is_caught():
    name = next(p.stem for p in NOTEBOOKS if any(Notebook(p.stem, _raw(p.stem)).guards))
    claim = next(c for c in Notebook(name, _raw(name)).guards if c)
    first = _typed(re.split(r"\.\.\.|\u2026", claim)[0]).split()[0]

    def plant(nb):  # reword the quoted sentence everywhere, leave the guard as it is
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = re.sub(rf"(?i)\b{re.escape(first)}\b", "REWORDED",
                                        _source(cell))
        return nb
    assert any("is not in the text" in p for p in _planted(name, plant))


def test_planted_citation_of_a_missing_key_is_caught():
    plant = lambda nb: _edit_markdown(  # noqa: E731
        nb, "## Summary", lambda s: "{glue:text}`no_such_key`\n\n" + s)
    assert any("never glues" in p for p in _planted("09_small_batches", plant))


def test_clean_notebooks_have_no_problems(books):
    """The plants above fail on an otherwise clean notebook, not on a dirty one."""
    for name in ("04_inference", "08_why_bn_works", "09_small_batches"):
        assert problems_of(books[name], books) == [], name


def test_planted_either_or_with_an_any_condition_is_caught():
    """Chapter 7's old cell: the sentence claims each fix works, the condition any."""
    def plant(nb):
        nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [],
                            "execution_count": None, "source":
                            'unprotected = works["slow_affine"] or works["slow_head"]\n'
                            'verdict("ch07_mechanism", unprotected and not works["bn_x30"],\n'
                            '        "slowing either γ and β or the last layer alone lets it '
                            'train", "the runs do not single them out")'})
        nb["cells"].append({"cell_type": "markdown", "metadata": {},
                            "source": "{glue:text}`ch07_mechanism`."})
        return nb
    found = _planted("09_small_batches", plant)
    assert [p for p in found if "holds when any one does" in p], found


def test_planted_markup_in_glued_text_is_caught():
    """Chapter 7 glued "**warmup**", which the page showed with its asterisks."""
    def plant(nb):
        nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [],
                            "execution_count": None, "source":
                            'glue("ch07_fixes", ", ".join(f"**{k}**" for k in fixed))\n'
                            'glue("ch06_fastest", f"`{fastest}`", display=False)'})
        return nb
    found = _planted("09_small_batches", plant)
    assert {p.split("'")[1] for p in found if "contains Markdown" in p} == {"**", "`"}, found


def test_many_outcome_verdicts_are_read():
    nb = Notebook("x", {"cells": [{"cell_type": "code", "source":
                                   'verdict("k", pic, {"paper": "a", "reversed": "b", '
                                   '"neither": "c"})'}]})
    assert nb.verdicts[0]["words"] == ("a", "b", "c")
    assert check_verdict_form(nb) == []
    same = Notebook("x", {"cells": [{"cell_type": "code", "source":
                                     'verdict("k", pic, {"a": "same", "b": "same"})'}]})
    assert check_verdict_form(same)
