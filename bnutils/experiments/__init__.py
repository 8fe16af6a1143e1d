"""Experiments that reproduce the paper's figures; each is cached and returns NumPy arrays."""

from .figure1 import figure1
from .figure3 import figure3

__all__ = ["figure1", "figure3"]
