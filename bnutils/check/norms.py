"""Checkers of chapter 9: ``layer_norm`` and ``group_norm``."""

import numpy as np
import torch

from .. import norms
from ._engine import _Case, _run
from ._pieces import _affine, _features, _large_mean, _norm_variants, _normalize, _params, _rng, _t

# --- Chapter 9: Layer Norm and Group Norm ---------------------------------------------


def _torch_layer(layer, gamma, beta, x):
    layer = layer.double()
    with torch.no_grad():
        layer.gamma.copy_(_t(gamma))
        layer.beta.copy_(_t(beta))
        return layer(_t(x)).numpy()


def _layer_norm_reference(x, gamma, beta, eps):
    return _torch_layer(norms.LayerNorm(x.shape[1], eps=eps), gamma, beta, x)


def _row_affine(x_hat, gamma, beta):
    return gamma * x_hat + beta


def layer_norm(fn):
    """Check ``fn(x, gamma, beta, eps) -> y``, Layer Norm for ``x: (N, D)``.

    Statistics per example over its D features; ``gamma, beta: (D,)``. The cases
    include a batch of one, a square batch, an epsilon that matters and a mean of 1e4
    in float32. Compared with ``bnutils.norms.LayerNorm``. Returns a ``Result``.
    """
    rng = _rng(9)
    cases = []
    for name, shape in [("N=4, D=6", (4, 6)), ("batch of one, D=8", (1, 8)),
                        ("square, N=D=5", (5, 5))]:
        x = rng.normal(0.0, 3.0, (shape[0], 1)) + rng.uniform(0.5, 3.0, (shape[0], 1)) \
            * rng.standard_normal(shape)
        cases.append(_Case(name, (x, *_params(rng, shape[1]), 1e-5)))
    x = rng.standard_normal((3, 6))
    x[0] = 2.0 + 1e-3 * rng.standard_normal(6)
    x[1] = -1.0
    cases.append(_Case("epsilon matters (eps=0.1, a constant example)",
                       (x, *_params(rng, 6), 0.1)))
    cases.append(_Case("mean 1e4 in float32, N=8, D=64",
                       (_large_mean(rng, (8, 64)), *_params(rng, 64, np.float32), 1e-5),
                       rtol=1e-2, precision=True))
    mistakes = [
        *_norm_variants(lambda x: (1,), affine=_row_affine),
        ("batch_axis", [
            lambda x, g, b, eps: g * _normalize(x, (0,), eps) + b,
            lambda x, g, b, eps: g * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + b,
        ]),
    ]
    return _run("layer_norm", fn, cases, _layer_norm_reference, mistakes, ("y",))


def _group_norm_reference(x, gamma, beta, num_groups, eps):
    return _torch_layer(norms.GroupNorm(num_groups, x.shape[1], eps=eps), gamma, beta, x)


def _grouped(axes=(2, 3, 4), interleaved=False, **kw):
    """Group Norm with statistics over ``axes`` of the grouped (N, G, C // G, H, W) view."""
    def forward(x, gamma, beta, num_groups, eps):
        n, c, h, w = x.shape
        if interleaved:
            g = x.reshape(n, c // num_groups, num_groups, h, w).swapaxes(1, 2)
        else:
            g = x.reshape(n, num_groups, c // num_groups, h, w)
        x_hat = _normalize(g, axes, eps, **kw)
        if interleaved:
            x_hat = x_hat.swapaxes(1, 2)
        return _affine(x_hat.reshape(x.shape), gamma, beta)
    return forward


def group_norm(fn):
    """Check ``fn(x, gamma, beta, num_groups, eps) -> y``, Group Norm.

    ``x: (N, C, H, W)``, statistics per example and group of ``C // num_groups``
    consecutive channels, over the group's channels and all positions;
    ``gamma, beta: (C,)``, one per channel. The cases: G = 1 (Layer Norm), G = C
    (Instance Norm), groups in between, a batch of one, C = W, an epsilon that matters
    and a mean of 1e4 in float32. Compared with ``bnutils.norms.GroupNorm``.
    Returns a ``Result``.
    """
    rng = _rng(10)
    cases = []
    for name, shape, groups in [("(4, 6, 3, 3), G=3", (4, 6, 3, 3), 3),
                                ("(2, 4, 5, 5), G=1", (2, 4, 5, 5), 1),
                                ("(3, 6, 2, 2), G=6", (3, 6, 2, 2), 6),
                                ("one image, (1, 8, 3, 3), G=2", (1, 8, 3, 3), 2),
                                ("C = W, (2, 4, 3, 4), G=2", (2, 4, 3, 4), 2)]:
        cases.append(_Case(name, (_features(rng, shape), *_params(rng, shape[1]), groups,
                                  1e-5)))
    x = _features(rng, (2, 4, 3, 3))
    x[0, :2] = 1.0 + 1e-3 * rng.standard_normal((2, 3, 3))
    x[1, 2:] = 3.0
    cases.append(_Case("epsilon matters (eps=0.1, constant groups)",
                       (x, *_params(rng, 4), 2, 0.1)))
    cases.append(_Case("mean 1e4 in float32, (4, 4, 4, 4), G=2",
                       (_large_mean(rng, (4, 4, 4, 4)), *_params(rng, 4, np.float32), 2,
                        1e-5), rtol=1e-2, precision=True))

    def channels(axes):
        return lambda x, g, b, groups, eps: _affine(_normalize(x, axes, eps), g, b)

    def strided(x, gamma, beta, num_groups, eps):  # x.reshape(N, -1, G): every G-th value
        g = x.reshape(x.shape[0], -1, num_groups)
        return _affine(_normalize(g, (1,), eps).reshape(x.shape), gamma, beta)

    def unreshaped(x, gamma, beta, num_groups, eps):
        g = x.reshape(x.shape[0], num_groups, -1)
        return gamma * _normalize(g, (2,), eps).reshape(x.shape) + beta

    mistakes = [
        ("unbiased_variance", [_grouped(ddof=1)]),
        ("eps_outside_sqrt", [_grouped(how="outside")]),
        ("eps_missing", [_grouped(how="missing")]),
        ("no_sqrt", [_grouped(how="no_sqrt")]),
        ("interleaved_groups", [_grouped(interleaved=True), strided]),
        ("instance_norm", [channels((2, 3))]),
        ("layer_norm", [channels((1, 2, 3))]),
        ("batch_axis", [_grouped(axes=(0, 2, 3, 4)), channels((0, 2, 3))]),
        ("broadcast_last_axis", [unreshaped]),
        ("affine_missing", [lambda x, g, b, groups, eps: _grouped()(x, np.ones(x.shape[1]),
                                                                   np.zeros(x.shape[1]),
                                                                   groups, eps)]),
    ]
    return _run("group_norm", fn, cases, _group_norm_reference, mistakes, ("y",))
