"""Checkers of the forward transform: ``batchnorm_forward`` (chapter 2) and
``batchnorm_forward_conv`` (chapter 6)."""

import numpy as np

from ._engine import _run
from ._pieces import (
    _affine,
    _bn_reference,
    _conv_cases,
    _flattened,
    _forward_cases,
    _norm_variants,
    _normalize,
    _unreshaped,
    _unreshaped_affine,
)

# --- Chapter 2: the forward transform --------------------------------------------------


def batchnorm_forward(fn):
    """Check ``fn(x, gamma, beta, eps) -> y``, BN's training-mode forward for ``x: (N, D)``.

    ``gamma, beta: (D,)``; ``y: (N, D)``. The cases: N from 2 to 512, a square batch,
    an epsilon that decides a (nearly) constant feature, and a mean of 1e4 in float32.
    Returns a ``Result``.
    """
    mistakes = [
        *_norm_variants(lambda x: (0,)),
        ("feature_axis", [
            lambda x, g, b, eps: _affine(_normalize(x, (1,), eps), g, b),
            lambda x, g, b, eps: g * (x - x.mean(1)) / np.sqrt(x.var(1) + eps) + b,
        ]),
    ]
    return _run("batchnorm_forward", fn, _forward_cases(2), _bn_reference, mistakes, ("y",))


# --- Chapter 6: the convolutional forward ------------------------------------------


def batchnorm_forward_conv(fn):
    """Check ``fn(x, gamma, beta, eps) -> y``, BN's training-mode forward for images.

    ``x: (N, C, H, W)``, statistics per channel over N, H and W; ``gamma, beta: (C,)``.
    The cases include a single image, C = W (where a wrongly broadcast vector gives
    wrong values rather than an error), an epsilon that matters and a mean of 1e4.
    Returns a ``Result``.
    """
    mistakes = [
        *_norm_variants(lambda x: (0, 2, 3)),
        ("batch_only_axis", [lambda x, g, b, eps: _affine(_normalize(x, (0,), eps), g, b)]),
        ("per_example_axis", [
            lambda x, g, b, eps: _affine(_normalize(x, (2, 3), eps), g, b),
            lambda x, g, b, eps: _affine(_normalize(x, (1, 2, 3), eps), g, b),
        ]),
        ("reshape_without_transpose", [_flattened]),
        ("broadcast_last_axis", [_unreshaped, _unreshaped_affine]),
    ]
    return _run("batchnorm_forward_conv", fn, _conv_cases(6), _bn_reference, mistakes,
                ("y",))
