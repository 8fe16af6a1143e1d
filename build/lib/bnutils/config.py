"""Run mode, seeds and device: the settings every notebook starts from."""

import os
import random

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
