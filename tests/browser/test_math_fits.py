"""Numbered display equations fit beside their number at common window widths.

MathJax draws an equation and, floated to the right, its number: an equation wider
than the column slides under its number (chapter 4's moving-average update hid its
sigma_B^2 at 1280 pixels). Run with the other browser checks on a built book
(``BNBOOK_HTML``).
"""

import pytest
from test_site import HTML, _pages, browser, site  # noqa: F401  (fixtures)

WIDTHS = (1280, 1024)

OVERLAPS = """() => {
  const out = [];
  for (const eq of document.querySelectorAll('div.math')) {
    const no = eq.querySelector('.eqno');
    const math = eq.querySelector('mjx-container mjx-math');
    if (!no || !math) continue;
    const a = math.getBoundingClientRect(), b = no.getBoundingClientRect();
    const overlap = a.right > b.left + 1 && b.right > a.left && a.bottom > b.top
      && b.bottom > a.top;
    const clipped = math.getBoundingClientRect().right > eq.getBoundingClientRect().right + 1;
    if (overlap || clipped) out.push(no.textContent.trim());
  }
  return out;
}"""

pytestmark = pytest.mark.skipif(not HTML, reason="set BNBOOK_HTML to a built book")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", [p for p in _pages() if p.startswith("notebooks/")])
def test_numbered_equations_do_not_run_under_their_number(site, browser, page, width):  # noqa: F811
    _, base = site
    context = browser.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    tab.goto(base + page, wait_until="networkidle")
    if tab.locator(".math").count():
        tab.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
        tab.evaluate("() => MathJax.startup.promise")
    bad = tab.evaluate(OVERLAPS)
    context.close()
    assert bad == [], f"{page} at {width} px: equations under their number: {bad}"
