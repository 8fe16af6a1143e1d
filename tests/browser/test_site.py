"""The built book in a real browser (headless Chromium driven by Playwright).

Run after a build: ``BNBOOK_HTML=_build/store/_build/html pytest tests/browser``
(``make test`` does). Every page is loaded from a local HTTP server and checked for:
console errors, requests leaving the machine, math typeset by the bundled MathJax,
images loaded, internal links and anchors that resolve, and on notebook pages the
launch (Colab, opening the learner notebook) and download menus. A screenshot per page (light and dark) is saved in
``<build>/screenshots``.
"""

import functools
import http.server
import json
import os
import re
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

HTML = os.environ.get("BNBOOK_HTML")
CHROMIUM = os.environ.get("BNBOOK_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not HTML, reason="set BNBOOK_HTML to a built book")


def _pages():
    if not HTML:
        return []
    root = Path(HTML)
    skip = ("_static", "_sources", "_images", "_downloads")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html")
                  if p.relative_to(root).parts[0] not in skip)


@pytest.fixture(scope="module")
def site():
    root = Path(HTML).resolve()
    assert (root / "index.html").exists(), f"no built book in {root}"

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it (Debian: apt-get install "
                    f"chromium) or set BNBOOK_CHROMIUM to its path")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(site):
    results = {}
    yield results
    out = site[0].parent / "screenshots" / "report.json"
    out.write_text(json.dumps(results, indent=1, sort_keys=True))


def _ids_in(path):
    return set(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))


def _load(browser, base, page, mode):
    context = browser.new_context(viewport={"width": 1300, "height": 900},
                                  color_scheme=mode)
    context.add_init_script(f"localStorage.setItem('mode', '{mode}')")
    tab = context.new_page()
    problems, outside = [], []
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    tab.on("request", lambda r: outside.append(r.url)
           if not r.url.startswith((base, "data:", "blob:")) else None)
    tab.goto(base + page, wait_until="networkidle")
    return context, tab, problems, outside


@pytest.mark.parametrize("page", _pages())
def test_page(site, browser, report, page):
    root, base = site
    context, tab, problems, outside = _load(browser, base, page, "light")
    checks = {}

    n_math = tab.locator(".math").count()
    if n_math:
        tab.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
        tab.evaluate("() => MathJax.startup.promise")
        typeset = tab.locator("mjx-container").count()
        assert typeset >= n_math, f"{page}: {typeset} of {n_math} math elements typeset"
        assert tab.locator("mjx-merror").count() == 0, f"{page}: MathJax reports a TeX error"
    checks["math typeset"] = n_math

    images = tab.evaluate("""async () => {
        const imgs = Array.from(document.images);
        imgs.forEach(i => { i.loading = 'eager'; });
        await Promise.all(imgs.map(i => i.decode().catch(() => null)));
        return imgs.map(i => [i.getAttribute('src'), i.naturalWidth]);
    }""")
    broken = [src for src, width in images if width == 0]
    assert not broken, f"{page}: images not loaded: {broken}"
    checks["images loaded"] = len(images)

    hrefs = tab.evaluate("() => Array.from(document.querySelectorAll('a[href]'), a => a.href)")
    internal = {h for h in hrefs if h.startswith(base)}
    for href in sorted(internal):
        url, fragment = urldefrag(href)
        target = root / unquote(urlparse(url).path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        assert target.exists(), f"{page}: broken link {href}"
        if fragment and target.suffix == ".html":
            assert unquote(fragment) in _ids_in(target), f"{page}: no anchor for {href}"
    checks["internal links"] = len(internal)

    if page.startswith("notebooks/"):
        colab = [h for h in hrefs if "colab.research.google.com/github/" in h]
        stem = Path(page).stem
        assert any(h.endswith(f"/blob/learner/notebooks/{stem}.ipynb") for h in colab), \
            f"{page}: no Colab launch button for the learner notebook {stem}.ipynb: {colab}"
        assert any(h.startswith(base) and h.endswith(f"/learner/{stem}.ipynb") for h in hrefs), \
            f"{page}: no download link to the learner notebook"
        assert tab.locator(".dropdown-launch-buttons").count() == 1
        assert any(h.endswith(f"{stem}.ipynb") and h.startswith(base) for h in hrefs), \
            f"{page}: no .ipynb download link"
        checks["launch and download menus"] = True

    shots = root.parent / "screenshots"
    name = page.replace("/", "__").removesuffix(".html")
    tab.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    context.close()
    dark, dark_tab, dark_problems, _ = _load(browser, base, page, "dark")
    assert dark_tab.evaluate("() => document.documentElement.dataset.theme") == "dark"
    dark_tab.screenshot(path=str(shots / f"{name}.dark.png"))
    dark.close()

    assert not problems + dark_problems, f"{page}: console errors: {problems + dark_problems}"
    assert not outside, f"{page}: requests leaving the machine: {outside}"
    checks["console errors"] = 0
    report[page] = checks


def _gated_solutions_with_code(page):
    """How many gated solutions of the page's notebook run code (from the source)."""
    path = Path(__file__).resolve().parents[2] / Path(page).with_suffix(".ipynb")
    if not path.exists():
        return 0
    count, inside, has_code = 0, False, False
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and "{solution-start}" in source:
            inside, has_code = True, False
        elif cell["cell_type"] == "code" and inside:
            has_code = True
        if cell["cell_type"] == "markdown" and "{solution-end}" in source:
            count += has_code
            inside = False
    return count


@pytest.mark.parametrize("page", [p for p in _pages() if p.startswith("notebooks/")])
def test_solutions_stay_hidden_until_opened(site, browser, page):
    """A solution's text, code and output are hidden until its dropdown is opened."""
    _, base = site
    context, tab, _, _ = _load(browser, base, page, "light")
    solutions = tab.locator("div.solution.admonition")
    with_code = 0
    for i in range(solutions.count()):
        solution = solutions.nth(i)
        name = f"{page}, solution {i + 1}"
        assert "dropdown" in (solution.get_attribute("class") or ""), f"{name}: not a dropdown"
        body = solution.locator(":scope > :not(.admonition-title)")
        outputs = solution.locator(".cell_output")
        assert body.count() > 0, f"{name}: empty"
        hidden = [not body.nth(j).is_visible() for j in range(body.count())]
        assert all(hidden), f"{name}: content visible before the dropdown is opened"
        # the chevron a reader clicks (the title's text is a link to the exercise)
        solution.locator(":scope > .admonition-title button.toggle-button").click()
        for j in range(body.count()):
            body.nth(j).wait_for(state="visible", timeout=5000)
        for j in range(outputs.count()):
            assert outputs.nth(j).is_visible(), f"{name}: output {j + 1} not shown when opened"
        with_code += solution.locator(".cell").count() > 0
    escaped = tab.evaluate("""() => Array.from(document.querySelectorAll('div.solution'))
        .filter(s => s.nextElementSibling && s.nextElementSibling.classList.contains('cell'))
        .length""")
    assert escaped == 0, f"{page}: {escaped} code cell(s) right after a solution, outside it"
    assert with_code == _gated_solutions_with_code(page), \
        f"{page}: {with_code} solutions render code, the notebook has {_gated_solutions_with_code(page)}"
    context.close()
