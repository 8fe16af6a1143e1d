"""No raw TeX in the built pages' text: math the Markdown parser broke shows as ``$J =
\\frac{...`` instead of being typeset (a continuation line read as a list item, an
unclosed ``$``). Reads the HTML files of a build (``BNBOOK_HTML``), no browser needed.
"""

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

HTML = os.environ.get("BNBOOK_HTML")
SKIP = {"script", "style", "pre", "code", "math", "textarea"}
TEX = re.compile(r"\\(frac|sqrt|mathcal|mathrm|hat|sum|partial|left|right|begin)\b|\$[A-Za-z\\{]")


class _Text(HTMLParser):
    """The text a reader sees outside code, scripts and typeset math."""

    def __init__(self):
        super().__init__()
        self.depth, self.chunks = 0, []

    def handle_starttag(self, tag, attrs):
        classes = dict(attrs).get("class") or ""
        if tag in SKIP or "math" in classes.split() or self.depth:
            self.depth += tag not in ("br", "img", "input", "meta", "link", "hr")

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.chunks.append(data)


def raw_tex(html):
    parser = _Text()
    parser.feed(html)
    text = " ".join(parser.chunks)
    return [text[max(0, m.start() - 30): m.end() + 30] for m in TEX.finditer(text)]


def test_raw_tex_is_found():
    assert raw_tex('<p>$J = \\frac{1}{m}</p>')
    assert raw_tex('<ul><li><p>\\frac{1}{m}\\hat{x}$</p></li></ul>')
    assert not raw_tex('<span class="math notranslate nohighlight">\\(\\frac{1}{m}\\)</span>')
    assert not raw_tex("<pre>x = '$a'</pre><p>costs $5 or 5 $</p>")


def _notebook_pages():
    if not HTML:
        return []
    return sorted((Path(HTML) / "notebooks").glob("*.html"))


@pytest.mark.skipif(not HTML, reason="set BNBOOK_HTML to a built book")
@pytest.mark.parametrize("page", _notebook_pages(), ids=lambda p: p.name)
def test_no_raw_tex_on_the_page(page):
    assert raw_tex(page.read_text()) == [], f"{page.name}: TeX shown as text"
