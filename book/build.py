"""``jupyter-book build``, with the chapters executed side by side, one per core.

Jupyter Book 1.x builds with one Sphinx process, so the notebooks execute one after
another while the other cores wait. Sphinx can read (here: execute) pages in worker
processes, but Jupyter Book's command line does not pass its ``-j``, and Sphinx would
hand each worker ``pages // workers`` pages in a row (all the long chapters to one).
This runs that command line with a worker per core, one page at a time, the last
pages first: the later chapters replay the longest runs, and one of them started
last would finish alone. Each notebook's kernel runs on one OpenMP thread unless
``OMP_NUM_THREADS`` says otherwise (two kernels with two spinning OpenMP threads each
on two cores run many times slower); a replay still runs on as many threads as its
entry records (``bnutils.store``), so the stored numbers on the pages do not change,
and ``OMP_WAIT_POLICY=PASSIVE`` keeps its idle threads asleep.

Usage, as ``jupyter-book``: ``python book/build.py build . --all``.
"""

import functools
import os
import sys

import jupyter_book.sphinx
import sphinx.builders
from jupyter_book.cli.main import main

JOBS = os.cpu_count() or 1


def one_page_each(docnames, nproc, maxbatch=None):
    """Sphinx's ``make_chunks``, replaced: one page per task, the last pages first."""
    return [[name] for name in reversed(docnames)]


def with_jobs(build_sphinx, calls):
    """``build_sphinx`` with a worker per core; each call is counted in ``calls``."""

    @functools.wraps(build_sphinx)
    def build(*args, **kwargs):
        calls.append(kwargs)
        return build_sphinx(*args, **{"jobs": JOBS, **kwargs})

    return build


def run(argv):
    """Jupyter Book's command line on ``argv``, its Sphinx build with a worker per core.

    Returns the exit status. A build that did not go through the patched
    ``build_sphinx`` fails here (it would have read the pages one after another)."""
    assert hasattr(sphinx.builders, "make_chunks"), "Sphinx no longer splits pages there"
    sphinx.builders.make_chunks = one_page_each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    calls = []
    jupyter_book.sphinx.build_sphinx = with_jobs(jupyter_book.sphinx.build_sphinx, calls)
    try:
        main(argv)
    except SystemExit as done:
        status = done.code
    else:
        status = 0
    if status in (0, None) and argv[:1] == ["build"] and "--help" not in argv and not calls:
        print("book/build.py: Jupyter Book no longer builds through "
              "jupyter_book.sphinx.build_sphinx, so the pages were read one after "
              "another: update book/build.py", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
