"""book/build.py: the book's build, with the chapters executed side by side."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
build = runpy.run_path(str(ROOT / "book" / "build.py"))  # not as __main__: patches nothing

# Sphinx set up with the book's configuration, in a fresh interpreter (sphinx-external-toc
# walks every object of the process, and one of a test process's can be a dead weakref)
PARALLEL = """
import json, sys, tempfile
from pathlib import Path
from jupyter_book.config import get_final_config
from sphinx.application import Sphinx
from sphinx.util.docutils import docutils_namespace, patch_docutils
root, out = Path.cwd(), tempfile.mkdtemp()
sys.path.insert(0, str(root / "book" / "_ext"))
config, _ = get_final_config(user_yaml=root / "_config.yml", sourcedir=root,
                             cli_config={"latex_individualpages": False},
                             use_external_toc=True)
with patch_docutils(str(root)), docutils_namespace():
    app = Sphinx(srcdir=str(root), confdir=None, outdir=out + "/html",
                 doctreedir=out + "/doctrees", buildername="html", confoverrides=config,
                 status=None, warning=sys.stderr, parallel=2)
    print(json.dumps({
        "unsafe": [name for name, ext in app.extensions.items()
                   if not (ext.parallel_read_safe and ext.parallel_write_safe)],
        "allowed": app.is_parallel_allowed("read") and app.is_parallel_allowed("write")}))
"""


def test_one_page_per_task_the_last_first():
    pages = ["book/intro", "notebooks/00_setup", "notebooks/05_mnist", "notebooks/09_small"]
    assert build["one_page_each"](pages, 2) == [[p] for p in reversed(pages)]


def test_the_books_extensions_allow_reading_in_parallel():
    """Every extension the book loads may read pages in parallel (bookfixes declares
    the three that do not say): otherwise Sphinx reads serially, `make test` (-W)
    fails on its warning and `make book` is slow."""
    done = subprocess.run([sys.executable, "-c", PARALLEL], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"unsafe": [], "allowed": True}, (found, done.stderr)


def _run_with(monkeypatch, main):
    """``build.py``'s ``run`` with Jupyter Book's command line replaced by ``main``;
    what it patches is restored afterwards."""
    import jupyter_book.sphinx
    import sphinx.builders

    built = []
    monkeypatch.setattr(jupyter_book.sphinx, "build_sphinx",
                        lambda *args, **kwargs: built.append(kwargs))
    monkeypatch.setattr(sphinx.builders, "make_chunks", sphinx.builders.make_chunks)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setitem(build["run"].__globals__, "main", main)
    return build["run"](["build", "."]), built


def test_a_build_that_bypasses_the_workers_fails(monkeypatch, capsys):
    import jupyter_book.sphinx

    def through_build_sphinx(argv):  # as Jupyter Book 1.x does, at call time
        jupyter_book.sphinx.build_sphinx("src", "out")
        raise SystemExit(0)

    status, built = _run_with(monkeypatch, through_build_sphinx)
    assert status == 0 and built == [{"jobs": build["JOBS"]}]

    def bypassing(argv):  # a Jupyter Book that imported build_sphinx before the patch
        raise SystemExit(0)

    status, built = _run_with(monkeypatch, bypassing)
    assert status == 1 and built == []
    assert "one after another" in capsys.readouterr().err
