"""bnutils: the code shared by the chapters of the Batch Normalization book."""

from .config import choose, device, generator, is_quick, progress, run_mode, set_seed

__version__ = "0.1.0"

__all__ = ["choose", "device", "generator", "is_quick", "progress", "run_mode", "set_seed",
           "__version__"]
