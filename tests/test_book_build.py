"""book/build.py: the book's build, with the chapters executed side by side."""

import runpy
import sys
from pathlib import Path

from jupyter_book.config import get_final_config
from sphinx.application import Sphinx
from sphinx.util.docutils import docutils_namespace, patch_docutils

ROOT = Path(__file__).resolve().parents[1]
build = runpy.run_path(str(ROOT / "book" / "build.py"))  # not as __main__: patches nothing


def test_one_page_per_task_the_last_first():
    pages = ["book/intro", "notebooks/00_setup", "notebooks/05_mnist", "notebooks/09_small"]
    assert build["one_page_each"](pages, 2) == [[p] for p in reversed(pages)]


def test_the_books_extensions_allow_reading_in_parallel(tmp_path, monkeypatch):
    """Every extension the book loads may read pages in parallel (bookfixes declares
    the three that do not say): otherwise Sphinx reads serially, `make test` (-W)
    fails on its warning and `make book` is slow."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "book" / "_ext"))
    config, _ = get_final_config(user_yaml=ROOT / "_config.yml", sourcedir=ROOT,
                                 cli_config={"latex_individualpages": False},
                                 use_external_toc=True)
    with patch_docutils(str(ROOT)), docutils_namespace():
        app = Sphinx(srcdir=str(ROOT), confdir=None, outdir=str(tmp_path / "html"),
                     doctreedir=str(tmp_path / "doctrees"), buildername="html",
                     confoverrides=config, status=None, warning=sys.stderr, parallel=2)
        unsafe = [name for name, ext in app.extensions.items()
                  if ext.parallel_read_safe is not True or ext.parallel_write_safe is not True]
        assert not unsafe, unsafe
        assert app.is_parallel_allowed("read") and app.is_parallel_allowed("write")
