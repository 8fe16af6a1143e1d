"""Batch Normalization as PyTorch building blocks, written from scratch.

Each piece is derived in a chapter and checked against ``torch.nn`` in ``tests/``.
"""

import torch  # noqa: F401  (used by the layers below)
from torch import nn  # noqa: F401

# --- Chapter 3: a custom autograd Function with the compact backward pass -------------


# --- Chapter 4: modules with running statistics, and folding BN into a layer ----------
