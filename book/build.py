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


if __name__ == "__main__":
    assert hasattr(sphinx.builders, "make_chunks"), "Sphinx no longer splits pages there"
    sphinx.builders.make_chunks = one_page_each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    jupyter_book.sphinx.build_sphinx = functools.partial(jupyter_book.sphinx.build_sphinx,
                                                         jobs=JOBS)
    sys.exit(main())
