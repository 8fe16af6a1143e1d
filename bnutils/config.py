"""Run mode, seeds and device: the settings every notebook starts from."""

import importlib.util
import os
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


def progress(iterable, desc=None, total=None, disable=False, **kwargs):
    """Iterate over ``iterable`` with a progress bar that suits where the code runs.

    A widget in Jupyter or Colab (with ipywidgets), a text bar in a terminal, and, in a
    kernel that cannot redraw a bar (the book build), one summary line at the end
    instead of a line per update.
    """
    if disable:
        return iterable
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is None:
        return _summary(iterable, desc or "progress")
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, **kwargs)


def _summary(iterable, desc):
    start, n = time.perf_counter(), 0
    for n, item in enumerate(iterable, 1):  # noqa: B007 (n is the count after the loop)
        yield item
    seconds = time.perf_counter() - start
    rate = f", {n / seconds:,.0f} it/s" if seconds > 0 else ""
    print(f"{desc}: {n:,} iterations in {seconds:.1f} s{rate}")
