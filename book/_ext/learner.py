"""Learner notebooks: the chapters as plain Jupyter notebooks, written by the book build.

The web book renders MyST; JupyterLab and Colab show it raw. After every HTML build this
extension writes ``<html>/learner/NN_slug.ipynb`` for each chapter, from the notebook the
build executed (``_build/jupyter_execute``), so that a learner reads what a reader reads:

- the glue roles: the values of the build, formatted with their format spec; a note
  under the title says which build (date, commit, run mode) they come from;
- ``{numref}``, ``{ref}``, ``{eq}``, ``{doc}``, ``{cite:*}``: the words and numbers of the
  web page (Sphinx resolves them), plain text within the chapter, links to the web book
  elsewhere; labelled equations carry their number (``\\tag``);
- exercises, admonitions, figures, dropdowns, labels, comments: plain Markdown;
- a solution (``{solution}``, or ``{solution-start}`` ... ``{solution-end}`` with its code
  cells) becomes one collapsed ``<details>`` block holding its text, its code and that
  code's output from the build: read when opened, never run by "Run all", so a "Your
  turn" stub stays the learner's;
- cells tagged ``remove-cell``, ``remove-input`` or ``hide-input`` still run, with their
  code collapsed (JupyterLab: ``metadata.jupyter.source_hidden``; Colab: the form view
  and a ``# @title``); figures get their numbered caption below them; outputs stay.

The build warns (and the strict build of ``make test`` fails) when a chapter would not
read or run as a learner notebook: MyST left raw, a cell after a solution that needs a
name only the solution defines. It lists the outputs that show a folder of the build
machine (the Lab test fails on them).

The web page's Colab button opens the chapter's learner notebook on the repository's
``learner`` branch, which the book workflow fills from ``<html>/learner``; the download
menu offers it too. ``make lab`` copies the notebooks into ``lab/`` (``python
book/_ext/learner.py sync``), never replacing a copy the learner changed without asking.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import symtable
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

BRANCH = "learner"  # the branch the book workflow pushes the learner notebooks to
FOLDER = "learner"  # where they go in the HTML output
GLUE_PREFIX = "application/papermill.record/"
WIDGET = "application/vnd.jupyter.widget-view+json"
SETUP_POINTER = "# Learner notebook"  # the setup cell's line that points to this notebook

# the titles of the code a learner notebook folds, by tag (Colab shows the title)
FOLDED = {
    "remove-cell": "Bookkeeping: keeps the text's numbers in step with the run",
    "remove-input": "Code hidden on the web page, which shows its output",
    "hide-input": "Code folded on the web page",
}
ADMONITIONS = {"note", "tip", "hint", "important", "warning", "caution", "attention",
               "danger", "error", "seealso", "admonition", "margin", "sidebar", "topic"}
XREF_ROLES = {"ref", "numref", "doc", "eq", "any", "term", "download", "keyword", "option",
              "envvar", "token", "prf:ref"}
PY_ROLES = {"func", "class", "meth", "mod", "attr", "obj", "data", "exc", "const"}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}|:{3,})(?P<info>.*)$")
DIRECTIVE = re.compile(r"^\{(?P<name>[^{}\s]+)\}\s*(?P<arg>.*)$")
ROLE = re.compile(r"(?:\{(?P<name>[A-Za-z][\w:+.-]*)\}|(?<![`\\]))(?P<ticks>`+)(?P<body>.+?)"
                  r"(?<!`)(?P=ticks)(?!`)", re.S)
LABEL_LINE = re.compile(r"^[ \t]*\((?P<label>[^()\s]+)\)=[ \t]*$")
MATH_LABEL = re.compile(r"[ \t]*\((?P<label>[^()\s]+)\)")
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<url>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAW_DIRECTIVE = re.compile(r"^[ \t]*(`{3,}|~{3,}|:{3,})\s*\{[^}]+\}", re.M)


# ---------------------------------------------------------------------------------------
# What a conversion needs to know about the book


@dataclass
class Context:
    """The book, as one chapter's conversion sees it.

    ``resolve(role, content)`` returns ``(text, url)`` for a cross-reference role, as the
    web page shows it: ``url`` is ``None`` within this chapter, else a link to the web
    book; ``None`` when the target does not exist. ``glue`` maps a key glued by this
    chapter to its output (``{"data": {mime: value}, ...}``), ``glue_from(doc, key)`` looks
    up another chapter's. ``source_dir`` is the folder of the chapter's source (for
    images), ``web`` the web book's base URL, ``page`` this chapter's page on it.
    """

    docname: str
    resolve: Callable[[str, str], tuple[str, str | None] | None]
    glue: dict = field(default_factory=dict)
    glue_from: Callable[[str, str], dict | None] = lambda doc, key: None
    source_dir: Path | None = None
    web: str = ""
    page: str = ""
    note: str = ""
    exercise_titles: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def warn(self, message):
        self.warnings.append(f"{self.docname}: {message}")


def data_uri(mime, payload):
    """An image written into the Markdown (base64): JupyterLab and Colab both show it;
    Colab shows no cell attachments."""
    return f"data:{mime};base64,{payload}"


# ---------------------------------------------------------------------------------------
# MyST Markdown -> plain Markdown


def convert_markdown(text, ctx):
    """Plain Markdown (CommonMark, HTML and ``$`` math) for MyST ``text``."""
    out, prose = [], []

    def flush():
        if prose:
            out.append(_prose("\n".join(prose), ctx))
            prose.clear()

    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        info = m.group("info").strip() if m else ""
        if not m or (m.group("fence")[0] == ":" and not info.startswith("{")):
            prose.append(lines[i])
            i += 1
            continue
        end = _fence_end(lines, i, m.group("fence"))
        body = lines[i + 1:end]
        flush()
        d = DIRECTIVE.match(info)
        if d:
            indent = m.group("indent")
            body = [b[len(indent):] if b.startswith(indent) else b.lstrip() for b in body]
            options, body = _options(body)
            block = _directive(d.group("name"), d.group("arg").strip(), options,
                               "\n".join(body), ctx)
            out.append("\n" + "\n".join(indent + b if b else b for b in block.split("\n"))
                       + "\n")  # a block of its own, not the end of a paragraph
        else:  # a code block: verbatim
            out.append("\n".join(lines[i:end + 1]))
        i = end + 1
    flush()
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")


def _fence_end(lines, start, fence):
    """The index of the line that closes the fence opened at ``start`` (CommonMark: the
    same character, at least as long, nothing after it), or the last line."""
    close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
    for j in range(start + 1, len(lines)):
        if close.match(lines[j]):
            return j
    return len(lines)


def _options(body):
    """A directive's ``:key: value`` lines (or YAML block) and the rest of its body."""
    options = {}
    if body and body[0].strip() == "---":
        end = next((k for k in range(1, len(body)) if body[k].strip() == "---"), None)
        if end is not None:
            for line in body[1:end]:
                key, _, value = line.partition(":")
                options[key.strip()] = value.strip()
            return options, body[end + 1:]
    k = 0
    while k < len(body):
        m = re.match(r"^:([\w-]+):\s*(.*)$", body[k])
        if not m:
            break
        options[m.group(1)] = m.group(2).strip()
        k += 1
    return options, body[k:]


def _prose(text, ctx):
    """Markdown outside fences: labels, comments and block breaks go, labelled equations
    get their number, roles become text, relative links and images resolve."""
    kept = []
    for line in text.split("\n"):
        if LABEL_LINE.match(line) or line.startswith("%") or line.strip() == "+++":
            continue
        kept.append(line)
    text = _number_equations("\n".join(kept), ctx)
    pieces, last = [], 0
    for m in ROLE.finditer(text):
        pieces.append(_links(text[last:m.start()], ctx))
        last = m.end()
        if m.group("name"):
            pieces.append(_role(m.group("name"), m.group("body"), ctx))
        else:
            pieces.append(m.group(0))  # inline code: verbatim
    pieces.append(_links(text[last:], ctx))
    return "".join(pieces)


def _number_equations(text, ctx):
    """``$$ ... $$ (label)`` -> ``$$ ... \\tag{N} $$``, with the web page's number."""
    out, pos, opened = [], 0, None
    for m in re.finditer(r"\$\$", text):
        if opened is None:
            opened = m
            continue
        label = MATH_LABEL.match(text, m.end())
        if label:
            number = _eq_number(label.group("label"), ctx)
            before = text[pos:m.start()]
            tag = f"\\tag{{{number}}}" if number else ""
            out.append(before + tag + "\n$$" if before.endswith("\n")
                       else f"{before.rstrip()} {tag} $$")
            pos = label.end()
        else:
            out.append(text[pos:m.end()])
            pos = m.end()
        opened = None
    out.append(text[pos:])
    return "".join(out)


def _eq_number(label, ctx):
    found = ctx.resolve("eq", label)
    if not found:
        ctx.warn(f"no number for equation {label!r}")
        return ""
    return found[0].strip("()")


def _links(text, ctx):
    """Relative Markdown links to pages go to the web book (a sibling ``.ipynb`` stays:
    it is a learner notebook too); relative images are written in (base64)."""
    def fix(m):
        url = m.group("url")
        if re.match(r"^[a-z][\w+.-]*:|^#|^mailto:", url):
            return m.group(0)
        if m.group("bang"):
            return f"![{m.group('text')}]({_image(url, ctx) or url})"
        if re.match(r"^[^/]+\.ipynb(#.*)?$", url):
            return m.group(0)
        return f"[{m.group('text')}]({_web_url(url, ctx)})"
    return LINK.sub(fix, text)


def _web_url(url, ctx):
    path, _, anchor = url.partition("#")
    path = re.sub(r"\.(md|ipynb)$", ".html", path)
    return urljoin(ctx.page or ctx.web, path) + (f"#{anchor}" if anchor else "")


def _image(path, ctx):
    if ctx.source_dir is None or not (ctx.source_dir / path).is_file():
        ctx.warn(f"image {path!r} not found")
        return None
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".gif": "image/gif", ".svg": "image/svg+xml"}.get(Path(path).suffix.lower())
    if mime is None:
        ctx.warn(f"image {path!r}: unknown type")
        return None
    data = base64.b64encode((ctx.source_dir / path).read_bytes()).decode()
    return data_uri(mime, data)


def _role(name, body, ctx):
    body = " ".join(body.split()) if name not in ("math",) else body
    if name.startswith("glue"):
        return _glue_role(name, body, ctx)
    if name == "math":
        return f"${body}$"
    if name in ("sub", "sup"):
        return f"<{name}>{body}</{name}>"
    if name == "kbd":
        return f"<kbd>{body}</kbd>"
    if name == "abbr":
        return re.sub(r"\s*\(.*\)$", "", body)
    if name in ("code", "literal", "samp", "file", "command", "program"):
        return f"`{body}`"
    if name in ("guilabel", "menuselection", "index", "dfn", "emphasis"):
        return body.replace("&", "")
    if name in ("strong",):
        return f"**{body}**"
    if name in PY_ROLES or name.startswith("py:"):
        found = ctx.resolve(name, body)
        if found:
            return _link(*found)
        return f"`{_explicit(body)[0].lstrip('~')}`"
    if name in XREF_ROLES or name == "cite" or name.startswith("cite:"):
        found = ctx.resolve(name, body)
        if found is None:
            ctx.warn(f"{{{name}}}`{body}` does not resolve")
            return _explicit(body)[0]
        return _link(*found)
    ctx.warn(f"role {{{name}}} has no plain-Markdown form: its text is shown")
    return _explicit(body)[0]


def _link(text, url):
    return f"[{text}]({url})" if url else text


def _explicit(body):
    """``title <target>`` -> (title, target); else (body, body)."""
    m = re.match(r"^(.*?)\s*<([^<>]+)>$", body, re.S)
    return (m.group(1), m.group(2)) if m and m.group(1) else (body, body)


def _glue_data(key, ctx):
    doc, sep, name = key.partition("::")
    data = ctx.glue_from(doc, name) if sep else ctx.glue.get(key)
    if data is None:
        ctx.warn(f"nothing glued under {key!r}")
    return data


def _glue_role(name, body, ctx):
    if name == "glue:text":
        key, sep, spec = body.rpartition(":")
        if not sep or key.endswith(":"):  # no format spec (``key`` or ``doc::key``)
            key, spec = body, "s"
        output = _glue_data(key, ctx)
        if output is None:
            return f"[{key}: not computed]"
        text = output["data"].get("text/plain")
        if text is None:
            ctx.warn(f"{key!r} has no text/plain value for {{glue:text}}")
            return f"[{key}]"
        return _format_plain(text, spec)
    key = body.rpartition(":")[0] if name == "glue:md" and ":" in body else body
    output = _glue_data(key, ctx)
    if output is None:
        return f"[{key}: not computed]"
    return _mime_markdown(output["data"], ctx, inline=True)


def _format_plain(text, spec):
    """The glue:text role's formatting: myst_nb's own (the build has myst_nb)."""
    from myst_nb.core.variables import format_plain_text

    return format_plain_text(text, spec)


def _directive(name, arg, options, body, ctx):
    """Plain Markdown for one directive."""
    inner = convert_markdown(body, ctx) if body.strip() else ""
    label = options.get("label") or options.get("name")
    if name == "exercise":
        title = _numbered("numref", label, "Exercise", ctx) if label else "Exercise"
        head = f"**{title}**" + (f" ({_inline(arg, ctx)})" if arg else "")
        if "dropdown" in options.get("class", ""):
            return _details(head, inner)
        return _quote(head + "\n\n" + inner)
    if name == "solution":
        return _details(solution_title(arg, ctx), inner)
    if name in ("solution-start", "solution-end"):
        ctx.warn(f"{{{name}}} inside a cell's text is not paired across cells")
        return ""
    if name in ADMONITIONS or name.startswith("admonition"):
        title = _inline(arg, ctx) if arg else name.capitalize().replace(
            "Seealso", "See also")
        if "dropdown" in options.get("class", ""):
            return _details(title, inner)
        return _quote(f"**{title}**\n\n{inner}")
    if name == "dropdown":
        return _details(_inline(arg, ctx) or "Details", inner)
    if name in ("figure", "image"):
        src = _image(arg, ctx) or arg
        alt = options.get("alt", "")
        image = f"![{alt}]({src})"
        if name == "image":
            return image
        return image + "\n\n" + _caption(label, inner, ctx)
    if name in ("math",):
        number = _eq_number(label, ctx) if label else ""
        return f"$$\n{body.strip()}" + (f" \\tag{{{number}}}" if number else "") + "\n$$"
    if name in ("code-block", "code", "sourcecode", "code-cell"):
        return f"```{arg.split()[0] if arg else ''}\n{body}\n```"
    if name == "table":
        title = _numbered("numref", label, "Table", ctx) if label else ""
        caption = _inline(arg, ctx)
        head = f"**{title}** {caption}".strip() if title else f"**{caption}**"
        return f"{head}\n\n{inner}" if caption or title else inner
    if name.startswith("glue"):
        output = _glue_data(arg, ctx)
        if output is None:
            return f"[{arg}: not computed]"
        pasted = _mime_markdown(output["data"], ctx)
        if name == "glue:figure":
            return pasted + "\n\n" + _caption(label, inner, ctx)
        return pasted
    if name in ("epigraph", "highlights", "pull-quote", "div", "only", "container",
                "rubric", "centered"):
        return (f"**{arg}**\n\n" if arg and name == "rubric" else "") + inner
    if name == "raw":
        return body if "html" in arg else ""
    ctx.warn(f"directive {{{name}}} has no plain-Markdown form: its text is shown")
    return (f"**{_inline(arg, ctx)}**\n\n" if arg else "") + inner


def _inline(text, ctx):
    return _prose(text, ctx).strip()


def _numbered(role, label, fallback, ctx):
    found = ctx.resolve(role, label)
    if not found:
        ctx.warn(f"no number for {label!r}")
        return fallback
    return found[0]


def _caption(label, caption, ctx):
    number = _numbered("numref", label, "Figure", ctx) if label else ""
    return f"**{number}.** {caption}".strip() if number else caption


def _quote(text):
    """A blockquote. Display math goes on one line: JupyterLab and Colab take math out
    of the text before Markdown sees it, so a ``>`` inside ``$$ ... $$`` would show."""
    text = re.sub(r"\$\$(.+?)\$\$", lambda m: "$$" + " ".join(m.group(1).split()) + "$$",
                  text, flags=re.S)
    return "\n".join(">" + (" " + line if line else "") for line in text.split("\n"))


def _details(summary, body):
    """A collapsed block: the summary shows, the body on a click. Blank lines around the
    body let JupyterLab and Colab render its Markdown."""
    return f"<details>\n<summary>{summary}</summary>\n\n{body.strip()}\n\n</details>"


def solution_title(target, ctx):
    if not target:
        return "Solution"
    found = ctx.resolve("numref", target)
    exercise = found[0] if found else "the exercise"
    if not found:
        ctx.warn(f"solution to {target!r}: no such exercise")
    title = ctx.exercise_titles.get(target, "")
    return f"Solution to {exercise}" + (f" ({title})" if title else "")


# ---------------------------------------------------------------------------------------
# Outputs in Markdown (inside a solution, and pasted glue)


def _mime_markdown(data, ctx, inline=False):
    if WIDGET in data and "text/plain" in data and len(data) == 2:
        return ""
    for mime in ("image/png", "image/jpeg", "image/gif"):
        if mime in data:
            payload = data[mime] if isinstance(data[mime], str) else "".join(data[mime])
            return f"![output]({data_uri(mime, payload.strip())})"
    if "image/svg+xml" in data:
        svg = _text(data["image/svg+xml"])
        return f"![output]({data_uri('image/svg+xml', base64.b64encode(svg.encode()).decode())})"
    if "text/markdown" in data:
        return convert_markdown(_text(data["text/markdown"]), ctx)
    if "text/html" in data:
        return _text(data["text/html"]).strip()
    if "text/latex" in data:
        latex = _text(data["text/latex"]).strip()
        return latex if latex.startswith("$") else f"$${latex}$$"
    if "text/plain" in data:
        text = _text(data["text/plain"])
        return text if inline else _text_block(text)
    return ""


def _text(value):
    return value if isinstance(value, str) else "".join(value)


def _text_block(text):
    text = ANSI.sub("", text).rstrip("\n")
    fence = "```" if "```" not in text else "~~~~"
    return f"{fence}text\n{text}\n{fence}" if text.strip() else ""


def _outputs_markdown(outputs, ctx):
    parts, stream = [], []
    for output in outputs:
        if output["output_type"] == "stream":
            stream.append(_text(output["text"]))
            continue
        if stream:
            parts.append(_text_block("".join(stream)))
            stream = []
        if output["output_type"] == "error":
            parts.append(_text_block("\n".join(output.get("traceback", []))
                                     or f"{output['ename']}: {output['evalue']}"))
        elif not is_glue_output(output):
            parts.append(_mime_markdown(output.get("data", {}), ctx))
    if stream:
        parts.append(_text_block("".join(stream)))
    return "\n\n".join(p for p in parts if p)


def is_glue_output(output):
    """An output that only stores a glued value (``display=False``): nothing to see."""
    data = output.get("data", {})
    return bool(data) and all(k.startswith(GLUE_PREFIX) for k in data)


# ---------------------------------------------------------------------------------------
# Notebook -> learner notebook


def glued(nb, stored=None):
    """key -> output, for every value the notebook glued: ``stored`` (myst_nb keeps the
    values glued with ``display=False`` in ``<notebook>.glue.json`` beside the executed
    notebook, not in its outputs) and the outputs that carry myst_nb's mark."""
    found = {key: {"data": output.get("data", {})} for key, output in (stored or {}).items()}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            mark = output.get("metadata", {}).get("scrapbook")
            if mark and "name" in mark:
                prefix = mark.get("mime_prefix", "")
                data = {k[len(prefix):]: v for k, v in output.get("data", {}).items()
                        if k.startswith(prefix)}
                found[mark["name"]] = {"data": data}
    return found


def _split_solutions(nb):
    """The notebook as a list of items: ("md", text), ("code", cell), ("start", arg,
    options), ("end",). Markdown cells split where a solution starts or ends."""
    items = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            items.append(("code", cell) if cell["cell_type"] == "code" else ("raw", cell))
            continue
        lines, text = _text(cell["source"]).split("\n"), []
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            d = DIRECTIVE.match(m.group("info").strip()) if m else None
            if d and d.group("name") in ("solution-start", "solution-end"):
                end = _fence_end(lines, i, m.group("fence"))
                if text:
                    items.append(("md", "\n".join(text), cell))
                    text = []
                if d.group("name") == "solution-start":
                    options, _ = _options(lines[i + 1:end])
                    items.append(("start", d.group("arg").strip(), options))
                else:
                    items.append(("end",))
                i = end + 1
                continue
            text.append(lines[i])
            i += 1
        if "\n".join(text).strip():
            items.append(("md", "\n".join(text), cell))
    return items


def exercise_titles(nb):
    """label -> title of every ``{exercise}`` of the notebook."""
    titles = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for m in re.finditer(r"^[ \t]*(`{3,}|:{3,})\{exercise\}[ \t]*(?P<title>.*)\n"
                             r"(?P<options>(?:[ \t]*:[\w-]+:.*\n)*)", _text(cell["source"]), re.M):
            label = re.search(r":label:\s*(\S+)", m.group("options"))
            if label:
                titles[label.group(1)] = m.group("title").strip()
    return titles


def learner_notebook(nb, ctx):
    """The learner notebook of the executed notebook ``nb`` (not changed)."""
    ctx.exercise_titles = {k: _inline(v, ctx) for k, v in exercise_titles(nb).items()}
    cells, solution = [], None
    for item in _split_solutions(nb):
        kind = item[0]
        if kind == "start":
            if solution is not None:
                ctx.warn("a solution starts inside another")
            solution = {"title": solution_title(item[1], ctx), "parts": []}
        elif kind == "end":
            if solution is None:
                ctx.warn("a solution ends that never started")
                continue
            cells.append(_markdown_cell(_details(solution["title"], "\n\n".join(
                p for p in solution["parts"] if p))))
            solution = None
        elif solution is not None:
            solution["parts"].append(_solution_part(item, ctx))
        elif kind == "md":
            cells.append(_markdown_cell(convert_markdown(item[1], ctx)))
        elif kind == "code":
            cells.extend(_code_cells(item[1], ctx))
        else:
            cells.append(copy.deepcopy(item[1]))
    if solution is not None:
        ctx.warn("a solution is never closed")
    cells = [c for c in cells if c["cell_type"] != "markdown" or _text(c["source"]).strip()]
    _add_note(cells, ctx)
    _point_setup_cell(cells, ctx)
    out = {"cells": cells, "metadata": copy.deepcopy(nb.get("metadata", {})),
           "nbformat": 4, "nbformat_minor": max(nb.get("nbformat_minor", 5), 5)}
    out["metadata"]["kernelspec"] = {"display_name": "Python 3 (ipykernel)",
                                     "language": "python", "name": "python3"}
    out["metadata"].pop("widgets", None)
    for i, cell in enumerate(out["cells"]):
        cell["id"] = f"cell-{i}"
    check_learner(out, ctx)
    solution_dependencies(nb, ctx)
    return out


def _markdown_cell(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _solution_part(item, ctx):
    if item[0] == "md":
        return convert_markdown(item[1], ctx)
    if item[0] != "code":
        return ""
    cell = item[1]
    tags = set(cell.get("metadata", {}).get("tags", []))
    if "remove-cell" in tags:
        return ""
    parts = []
    source = _text(cell["source"]).strip("\n")
    if "remove-input" not in tags and source:
        parts.append(f"```python\n{source}\n```")
    shown = _outputs_markdown(cell.get("outputs", []), ctx) if "remove-output" not in tags else ""
    if shown:
        parts.append("*Output (the book's run):*\n\n" + shown)
    figure = cell.get("metadata", {}).get("mystnb", {}).get("figure")
    if figure and figure.get("name"):
        parts.append(_caption(figure["name"], convert_markdown(figure.get("caption", ""), ctx), ctx))
    return "\n\n".join(p for p in parts if p)


def _code_cells(cell, ctx):
    cell = copy.deepcopy(cell)
    meta = cell.setdefault("metadata", {})
    tags = set(meta.get("tags", []))
    cell["outputs"] = [o for o in cell.get("outputs", []) if not is_glue_output(o)]
    for output in cell["outputs"]:
        data = output.get("data", {})
        if "text/markdown" in data:
            data["text/markdown"] = convert_markdown(_text(data["text/markdown"]), ctx)
    folded = next((t for t in FOLDED if t in tags), None)
    if folded:
        meta.setdefault("jupyter", {})["source_hidden"] = True
        meta["cellView"] = "form"  # Colab: the code folds under its title
        source = _text(cell["source"])
        if not re.match(r"^#\s?@title", source):
            cell["source"] = f"# @title {FOLDED[folded]}\n{source}"
    if tags & {"remove-cell", "remove-output", "hide-output"}:
        meta.setdefault("jupyter", {})["outputs_hidden"] = True
    cells = [cell]
    figure = meta.get("mystnb", {}).get("figure")
    if figure and figure.get("name") and "remove-cell" not in tags:
        caption = convert_markdown(figure.get("caption", ""), ctx)
        cells.append(_markdown_cell(_caption(figure["name"], caption, ctx)))
    return cells


def _add_note(cells, ctx):
    """The note under the title: where the numbers in the text come from."""
    if not ctx.note:
        return
    note = ctx.note
    if any("<summary>Solution" in _text(c["source"]) for c in cells):
        note += " " + SOLUTIONS_NOTE
    for cell in cells:
        if cell["cell_type"] == "markdown":
            title, _, rest = _text(cell["source"]).partition("\n")
            cell["source"] = f"{title}\n\n{_quote(note)}\n{rest}".rstrip("\n")
            return


def _point_setup_cell(cells, ctx):
    """The setup cell's lines that point the source to its learner notebook (from
    ``# Learner notebook`` to the end of the Colab address) point the learner notebook to its web
    page instead."""
    setup = next((c for c in cells if c["cell_type"] == "code"), None)
    if setup is None:
        return
    lines = _text(setup["source"]).split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(SETUP_POINTER)), None)
    if start is None:
        return
    # the Colab address, on one line or continued on the next (the column is 88 wide)
    end = next((i for i in range(start, min(start + 4, len(lines)))
                if lines[i].rstrip().endswith(".ipynb")), start)
    web = [f"# This chapter on the web: {ctx.page}"] if ctx.page else []
    setup["source"] = "\n".join(lines[:start] + web + lines[end + 1:])


# ---------------------------------------------------------------------------------------
# Checks: what would not read or run in JupyterLab


def raw_myst(markdown):
    """The MyST roles and directives left in ``markdown`` (outside code)."""
    without_code = re.sub(r"^([ \t]*)(`{3,}|~{3,})(?![ \t]*\{).*?^\1\2[ \t]*$", "",
                          markdown, flags=re.M | re.S)
    found = [m.group(0).strip() for m in RAW_DIRECTIVE.finditer(without_code)]
    found += [m.group(0) for m in ROLE.finditer(without_code) if m.group("name")]
    found += [m.group(0) for m in re.finditer(r"^\([^()\s]+\)=[ \t]*$", without_code, re.M)]
    return found


def check_learner(nb, ctx):
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            for raw in raw_myst(_text(cell["source"])):
                ctx.warn(f"cell {i}: MyST left raw: {raw[:60]!r}")


def machine_paths(nb, folders=None):
    """(cell index, line) of the outputs that show a folder of the machine that ran the
    notebook: one under the top folder that holds the repository (``/work/``,
    ``/home/``), or the home folder. The page and the learner should see ``~/...`` or a
    path relative to the repository."""
    root = Path(__file__).resolve().parents[2]
    folders = folders or [f"/{root.parts[1]}/" if len(root.parts) > 1 else str(root),
                          str(Path.home())]
    found = []
    for i, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            text = _text(output.get("text", "")) + "".join(
                _text(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
            found += [(i, line.strip()) for line in text.splitlines()
                      if any(f and f != "/" and f in line for f in folders)]
    return found


def _names(source):
    """(names a cell binds at top level, names it reads from the top level)."""
    source = "\n".join(line for line in source.split("\n")
                       if not line.lstrip().startswith(("%", "!")))
    try:
        table = symtable.symtable(source, "cell", "exec")
    except SyntaxError:
        return set(), set()
    binds = {s.get_name() for s in table.get_symbols()
             if s.is_assigned() or s.is_imported() or s.is_namespace()}
    reads = {s.get_name() for s in table.get_symbols() if s.is_referenced()}

    def free(t):
        for child in t.get_children():
            reads.update(s.get_name() for s in child.get_symbols()
                         if s.is_referenced() and s.is_global())
            free(child)
    free(table)
    return binds, reads


def solution_dependencies(nb, ctx):
    """Warn when a cell after a solution reads a name that the solution (re)bound: "Run
    all" does not run solutions in the learner notebook, so that cell would fail or
    read the stub's value."""
    bound = {}
    inside = False
    for item in _split_solutions(nb):
        if item[0] in ("start", "end"):
            inside = item[0] == "start"
            continue
        if item[0] != "code":
            continue
        binds, reads = _names(_text(item[1]["source"]))
        if inside:
            bound.update(dict.fromkeys(binds, item[1]))
            continue
        needs = sorted(n for n in reads - binds if n in bound)
        if needs:
            ctx.warn(f"a cell reads {', '.join(needs)}, (re)defined only in a solution: "
                     f"it fails or differs when a learner runs all cells "
                     f"({_text(item[1]['source'])[:60]!r})")
        for name in binds:
            bound.pop(name, None)


# ---------------------------------------------------------------------------------------
# Sphinx: resolve references, write the notebooks, point the launch buttons at them


def web_base(app):
    """The web book's address: ``html_baseurl``, else GitHub Pages of the repository."""
    base = app.config.html_baseurl
    if not base:
        m = re.match(r"https://github\.com/([^/]+)/([^/]+?)(\.git)?/?$", _repository(app))
        base = f"https://{m.group(1)}.github.io/{m.group(2)}/" if m else ""
    return base if base.endswith("/") or not base else base + "/"


def _repository(app):
    opts = app.config.html_theme_options or {}
    return (opts.get("repository_url") or "").rstrip("/")


def colab_url(repository_url, stem):
    """The Colab address of a chapter's learner notebook on the ``learner`` branch."""
    m = re.match(r"https://github\.com/([^/]+)/([^/]+?)(\.git)?/?$", repository_url)
    return (f"https://colab.research.google.com/github/{m.group(1)}/{m.group(2)}/blob/"
            f"{BRANCH}/notebooks/{stem}.ipynb")


class SphinxResolver:
    """Cross-references resolved by the domains that resolve them on the web page."""

    def __init__(self, app, docname, web):
        self.app, self.docname, self.web = app, docname, web

    def __call__(self, role, content):
        from docutils import nodes
        from sphinx import addnodes
        from sphinx.util.nodes import split_explicit_title

        env = self.app.env
        domain_name, _, typ = role.rpartition(":") if ":" in role else ("std", "", role)
        if role == "eq":
            domain_name, typ = "math", "eq"
        elif role in PY_ROLES or role.startswith("py:"):
            domain_name, typ = "py", role.split(":")[-1]
        elif role == "prf:ref":
            domain_name, typ = "prf", "ref"
        explicit, title, target = split_explicit_title(content)
        if role in ("ref", "numref"):
            target = target.lower()  # as Sphinx's roles do
        try:
            domain = env.get_domain(domain_name)
        except Exception:
            return None
        node = addnodes.pending_xref(content, refdomain=domain_name, reftype=typ,
                                     reftarget=target, refexplicit=explicit,
                                     refdoc=self.docname, refwarn=True)
        node.source, node.line = env.doc2path(self.docname), 0
        contnode = nodes.inline(title, title)
        node += contnode  # an explicit title is read from the node's text
        try:
            ref = domain.resolve_xref(env, self.docname, self.app.builder, typ, target,
                                      node, contnode)
        except Exception:  # an extension's resolver that needs more of a doctree
            ref = None
        if ref is None:
            return None
        text = ref.astext()
        refs = [r for r in ref.findall(nodes.reference)] if not isinstance(
            ref, nodes.reference) else [ref]
        uri = refs[0].get("refuri", "") if refs else ""
        if not uri or uri.startswith("#"):
            return text, None
        return text, urljoin(self.web + self.docname + ".html", uri)


def _provenance(app):
    root = Path(app.srcdir)
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "notebooks", "bnutils"], capture_output=True, text=True,
                               check=True).stdout.strip()
        commit += " with local changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    quick = os.environ.get("BNBOOK_QUICK", "").lower() in ("1", "true", "yes")
    mode = "quick mode: shorter runs than the web book's" if quick else "full mode"
    return datetime.date.today().isoformat(), commit, mode


def note(date, commit, mode, page):
    return (f"**Learner notebook.** The numbers in the text and the outputs below come "
            f"from the book's build of {date} (commit {commit}, {mode}). Running a cell "
            f"replaces its output with yours; the text keeps the book's numbers, which your "
            f"run may not match to the last digit."
            + (f" [This chapter on the web]({page})." if page else ""))


SOLUTIONS_NOTE = ("Solutions are folded under their exercises: open one to read it, copy "
                  "its code into a cell to run it.")


def write_learner_notebooks(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    import nbformat
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    executed = Path(app.outdir).parent / "jupyter_execute"
    out = Path(app.outdir) / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    web = web_base(app)
    date, commit, mode = _provenance(app)
    cache = {}

    def load(docname):
        """The executed notebook and what it glued, or (None, {})."""
        if docname not in cache:
            path = executed / f"{docname}.ipynb"
            stored = path.with_suffix(".glue.json")
            nb = json.loads(path.read_text()) if path.exists() else None
            glue = json.loads(stored.read_text()) if stored.exists() else {}
            cache[docname] = (nb, glued(nb, glue) if nb else {})
        return cache[docname]

    chapters = sorted(d for d in app.env.found_docs
                      if str(app.env.doc2path(d)).endswith(".ipynb"))
    for docname in chapters:
        nb, glue = load(docname)
        if nb is None:
            logger.warning(f"learner notebook: no executed notebook for {docname} in "
                           f"{executed}", type="learner")
            continue

        def glue_from(doc, key, here=docname):
            other = os.path.normpath(os.path.join(os.path.dirname(here),
                                                  doc.removesuffix(".ipynb")))
            return load(other)[1].get(key)

        page = web + docname + ".html"
        ctx = Context(docname, SphinxResolver(app, docname, web), glue, glue_from,
                      Path(app.env.doc2path(docname)).parent, web, page,
                      note(date, commit, mode, page))
        learner = learner_notebook(nb, ctx)
        for message in ctx.warnings:
            logger.warning(f"learner notebook: {message}", type="learner")
        for i, line in machine_paths(learner):  # tests/browser/test_lab.py fails on these
            logger.info(f"learner notebook {docname}, cell {i}: an output shows a folder "
                        f"of this machine: {line[:120]}")
        try:
            nbformat.validate(nbformat.from_dict(learner))
        except nbformat.ValidationError as error:
            logger.warning(f"learner notebook {docname}: not a valid notebook: {error}",
                           type="learner")
        nbformat.write(nbformat.from_dict(learner), out / f"{Path(docname).name}.ipynb")
    logger.info(f"learner notebooks: {len(chapters)} in {out}")


def point_buttons(app, pagename, templatename, context, doctree):
    """The Colab button opens the learner notebook; the download menu offers it."""
    if pagename not in app.env.found_docs or \
            not str(app.env.doc2path(pagename)).endswith(".ipynb"):
        return
    stem = Path(pagename).name
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []):
            if button.get("text") == "Colab" and _repository(app):
                button["url"] = colab_url(_repository(app), stem)
                button["tooltip"] = "Launch the learner notebook on Colab"
        if group.get("label") == "download-buttons":
            depth = pagename.count("/")
            group["buttons"].insert(0, {
                "type": "link", "url": "../" * depth + f"{FOLDER}/{stem}.ipynb",
                "text": ".ipynb (learner)", "tooltip": "Download the learner notebook",
                "icon": "fas fa-code", "label": "download-learner-button"})


def setup(app):
    app.connect("build-finished", write_learner_notebooks)
    app.connect("html-page-context", point_buttons, priority=510)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ---------------------------------------------------------------------------------------
# make lab: the learner's own copies


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sync(source, target, ask=None, say=print):
    """Copy the learner notebooks of ``source`` into ``target``, where the learner edits
    them. A copy the learner never changed follows the book; a changed one is replaced
    only when ``ask`` (a yes/no question) says so, and then kept beside the new one."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    state_file = target / ".book-versions.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    for new in sorted(source.glob("*.ipynb")):
        mine, digest = target / new.name, _digest(new)
        if mine.exists() and state.get(new.name) == digest:
            continue  # the book's version is the one copied last time
        done = f"{mine}: copied from the book's build"
        if mine.exists() and _digest(mine) != state.get(new.name):
            if _digest(mine) == digest:
                state[new.name] = digest
                continue
            kept = mine.with_name(f"{mine.stem}.mine.ipynb")
            question = (f"{mine}: you changed it, and the book's build has a new version. "
                        f"Replace yours (it is kept as {kept.name})? [y/N] ")
            if ask is None or not ask(question):
                say(f"{mine}: kept yours (the book's new version: {new})")
                continue
            shutil.copy2(mine, kept)
            done = f"{mine}: the book's new version (yours is {kept})"
        elif mine.exists():
            done = f"{mine}: the book's new version (you had not changed it)"
        shutil.copy2(new, mine)
        state[new.name] = digest
        say(done)
    state_file.write_text(json.dumps(state, indent=1) + "\n")


def _ask_terminal(question):
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Copy the learner notebooks where the "
                                     "learner edits them (make lab).")
    parser.add_argument("command", choices=["sync"])
    parser.add_argument("source", help="the built learner notebooks, e.g. _build/html/learner")
    parser.add_argument("target", help="the learner's folder, e.g. lab")
    args = parser.parse_args()
    if not any(Path(args.source).glob("*.ipynb")):
        sys.exit(f"no learner notebooks in {args.source}: build the book first (make book)")
    sync(args.source, args.target, ask=_ask_terminal)
