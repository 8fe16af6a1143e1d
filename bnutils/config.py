"""Run mode, seeds and device: the settings every notebook starts from."""

import contextlib
import importlib.util
import itertools
import os
import platform
import random
import sys
import time

import numpy as np
import torch

QUICK_ENV = "BNBOOK_QUICK"


def is_quick():
    """True when the quick mode (CI) is on: ``BNBOOK_QUICK`` set to 1/true/yes."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def run_mode():
    """``"quick"`` (fewer steps, smaller data, for CI) or ``"full"`` (the rendered book)."""
    return "quick" if is_quick() else "full"


def choose(full, quick):
    """Return ``quick`` in the quick mode and ``full`` otherwise.

    Notebooks size their experiments with this, so both modes run the same code:
    ``steps = bnutils.choose(full=50_000, quick=500)``.
    """
    return quick if is_quick() else full


def set_seed(seed):
    """Seed Python's, NumPy's and PyTorch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def generator(seed, device="cpu"):
    """A fresh ``torch.Generator`` seeded with ``seed``, for drawing data reproducibly."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def device():
    """CUDA when present, else the CPU; ``BNBOOK_DEVICE`` overrides (e.g. ``cpu``)."""
    name = os.environ.get("BNBOOK_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PROGRESS_ENV = "BNBOOK_PROGRESS"
PROGRESS_MODES = ("live", "summary", "off")


def progress_mode():
    """How ``progress`` reports: ``"live"`` (the default), ``"summary"`` or ``"off"``.

    ``BNBOOK_PROGRESS`` decides whether a person watches: unset or ``live`` where one
    does (JupyterLab, Colab, a terminal); ``summary`` where nobody does (the book build
    and the tests, set by the Makefile), so the executed pages keep one line per run;
    ``off`` where nothing may print (the worker processes of ``parallel.prefill``).
    Experiments read it when they run and take no ``progress`` argument: what a run
    shows is never part of what it computes, nor of its cache key.
    """
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower() or "live"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r}: expected one of "
                         f"{', '.join(PROGRESS_MODES)} (or unset for live)")
    return mode


def progress(iterable, desc=None, total=None, disable=False, **kwargs):
    """Iterate over ``iterable`` with a progress bar, with its rate and time left.

    In the ``live`` mode (see ``progress_mode``) a widget in a Jupyter kernel (JupyterLab,
    Colab) where ipywidgets is installed, else a text bar (a terminal, or a kernel without
    ipywidgets). In the ``summary`` mode, one line when the loop ends (or stops early):
    iterations, seconds and rate. ``kwargs`` go to ``tqdm``.
    """
    if _STEP_LIMIT is not None:  # a replay of a run's first steps (bnutils.store)
        iterable = itertools.islice(iterable, _STEP_LIMIT)
    if disable or progress_mode() == "off":
        return iterable
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if progress_mode() == "summary":
        return _summary(iterable, desc or "progress", total)
    if _in_kernel() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(iterable, desc=desc, total=total, **kwargs)


# --- training allowed or not, and replays: for bnutils.store -------------------------

TRAIN_ENV = "BNBOOK_TRAIN"
TRAIN_MODES = ("allow", "forbid", "store")


def train_mode():
    """What ``train_or_load`` may do with a run that no stored result covers.

    ``BNBOOK_TRAIN``, read at each call: ``allow`` (unset; JupyterLab, Colab): train it
    and cache it locally; ``forbid`` (``make book``, CI): stop with the command that
    computes it; ``store`` (``make results``): train it into the committed store.
    """
    mode = os.environ.get(TRAIN_ENV, "").strip().lower() or "allow"
    if mode not in TRAIN_MODES:
        raise ValueError(f"{TRAIN_ENV}={os.environ[TRAIN_ENV]!r}: expected one of "
                         f"{', '.join(TRAIN_MODES)} (or unset for allow)")
    return mode


def notebook():
    """The notebook this process executes (``05_mnist``), or None when unknown.

    The book build and ``make results`` set ``BNBOOK_NOTEBOOK``; JupyterLab tells its
    kernels through ``JPY_SESSION_NAME``.
    """
    path = os.environ.get("BNBOOK_NOTEBOOK") or os.environ.get("JPY_SESSION_NAME")
    if not path:
        return None
    name = os.path.basename(path)
    return name[:-len(".ipynb")] if name.endswith(".ipynb") else name


_STEP_LIMIT = None  # while a replay runs: the iterations each ``progress`` loop may take


@contextlib.contextmanager
def step_limit(steps):
    """Stop every loop over ``progress`` after ``steps`` iterations, within the block.

    Training loops iterate over ``progress(range(1, steps + 1))``, so a run made inside
    the block trains for its first ``steps`` steps with its settings unchanged (the same
    schedule): ``bnutils.store`` replays stored runs this way.
    """
    global _STEP_LIMIT
    before, _STEP_LIMIT = _STEP_LIMIT, int(steps)
    try:
        yield
    finally:
        _STEP_LIMIT = before


def _in_kernel():
    """True inside a Jupyter kernel (JupyterLab, Colab, nbclient), not a terminal IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def _summary(iterable, desc, total):
    start, n, done = time.perf_counter(), 0, False
    try:
        for n, item in enumerate(iterable, 1):  # noqa: B007 (n is the count after the loop)
            yield item
        done = True
    finally:  # also when the loop stops early (break, an error): the generator closes
        seconds = time.perf_counter() - start
        rate = f", {n / seconds:,.0f} it/s" if seconds > 0 else ""
        count = f"{n:,}" if done or total is None else f"stopped after {n:,} of {total:,}"
        print(f"{desc}: {count} iterations in {seconds:.1f} s{rate}")


# The Python and PyTorch releases the book is tested with, in one place (the setup
# notebook prints them). The floors are pyproject.toml's minimums; CI runs Python 3.11
# with the Makefile's torch==2.13.0; the Python ceiling admits Colab's 3.12. A test keeps
# pyproject.toml, requirements.txt and the Makefile's torch pin in agreement with these.
TESTED_VERSIONS = {"python": ">=3.10,<3.13", "torch": ">=2.2,<2.14"}


def version_check(versions=None):
    """Whether each running version lies in ``TESTED_VERSIONS``: name -> (version, ok).

    ``versions`` (name -> version string) replaces running ones, for testing.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    running = {"python": platform.python_version(), "torch": torch.__version__}
    running.update(versions or {})
    return {name: (v, SpecifierSet(TESTED_VERSIONS[name]).contains(Version(v),
                                                                   prereleases=True))
            for name, v in running.items()}


def version_report(versions=None):
    """Lines for the setup notebook: each version against its tested range, and what to
    do when one lies outside it."""
    checks = version_check(versions)
    lines = [f"{name} {v}: {'within' if ok else 'OUTSIDE'} the tested range "
             f"{TESTED_VERSIONS[name]}" for name, (v, ok) in checks.items()]
    if not all(ok for _, ok in checks.values()):
        lines.append("The book may still run. If a cell fails:")
    if not checks["python"][1]:
        lines += ["- Python: locally, rebuild .venv with a Python in the range",
                  "  (rm -r .venv; python3.X -m venv .venv; make lab); on Colab,",
                  "  report it with the issues button atop the book's pages."]
    if not checks["torch"][1]:
        lines += [f"- torch: pip install 'torch{TESTED_VERSIONS['torch']}', then restart the",
                  "  kernel (Colab: Runtime > Restart session)."]
    return "\n".join(lines)
