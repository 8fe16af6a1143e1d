"""Reference pieces, mistaken variants and the cases the forward checkers share."""

import numpy as np
import torch

from .. import bn
from ._engine import _Case

# --- Reference pieces and mistaken variants ----------------------------------------


def _t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _normalize(x, axes, eps, ddof=0, how="inside"):
    """(x - mean) / spread over ``axes`` (kept), with a choice of (mistaken) spreads."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, ddof=ddof, keepdims=True)
    spread = {"inside": lambda: np.sqrt(var + eps), "outside": lambda: np.sqrt(var) + eps,
              "missing": lambda: np.sqrt(var), "no_sqrt": lambda: var + eps}[how]()
    return (x - mean) / spread


def _per_channel(v, x):
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))


def _affine(x_hat, gamma, beta):
    return _per_channel(gamma, x_hat) * x_hat + _per_channel(beta, x_hat)


def _stat_axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _norm_variants(axes_of, affine=_affine):
    """The mistakes of a normalizing forward ``(x, gamma, beta, eps) -> y`` whose
    statistics are taken over ``axes_of(x)``: the spread, the affine part."""
    def spread(**kw):
        return lambda x, g, b, eps: affine(_normalize(x, axes_of(x), eps, **kw), g, b)

    return [
        ("unbiased_variance", [spread(ddof=1)]),
        ("eps_outside_sqrt", [spread(how="outside")]),
        ("eps_missing", [spread(how="missing")]),
        ("no_sqrt", [spread(how="no_sqrt")]),
        ("affine_missing", [lambda x, g, b, eps: _normalize(x, axes_of(x), eps)]),
        ("gamma_beta_swapped",
         [lambda x, g, b, eps: affine(_normalize(x, axes_of(x), eps), b, g)]),
    ]


def _bn_reference(x, gamma, beta, eps):
    return bn.batchnorm_forward(np.asarray(x, dtype=np.float64), gamma, beta, eps)[0]


def _unreshaped(x, gamma, beta, eps):
    """Per-channel vectors of shape (C,) used as they are: they align with W."""
    axes = (0, 2, 3)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    return gamma * ((x - mean) / np.sqrt(var + eps)) + beta


def _unreshaped_affine(x, gamma, beta, eps):
    return gamma * _normalize(x, (0, 2, 3), eps) + beta


def _flattened(x, gamma, beta, eps):
    n, c, h, w = x.shape
    return _bn_reference(x.reshape(-1, c), gamma, beta, eps).reshape(n, c, h, w)


# --- The cases -----------------------------------------------------------------------


def _rng(seed):
    return np.random.default_rng(seed)


def _params(rng, d, dtype=np.float64):
    gamma = rng.uniform(0.5, 2.0, d) * rng.choice([-1.0, 1.0], d)
    return gamma.astype(dtype), rng.normal(0.0, 1.0, d).astype(dtype)


def _features(rng, shape, dtype=np.float64):
    """Values with a non-zero mean and a scale that differs per feature (axis 1)."""
    scale_shape = (1, shape[1]) + (1,) * (len(shape) - 2)
    loc = rng.normal(0.0, 3.0, scale_shape)
    scale = rng.uniform(0.5, 3.0, scale_shape)
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def _with_tiny_spread(x):
    """The first feature nearly constant, the second constant: epsilon decides them."""
    x = x.copy()
    x[:, 0] = 1.0 + 1e-3 * (x[:, 0] - x[:, 0].mean()) / x[:, 0].std()
    x[:, 1] = 2.5
    return x


def _large_mean(rng, shape):
    """A mean of 1e4 and a spread of about 1, in float32."""
    return (1e4 + rng.standard_normal(shape)).astype(np.float32)


def _forward_cases(seed):
    rng = _rng(seed)
    cases = []
    for name, shape, eps in [("small batch, N=4, D=3", (4, 3), 1e-5),
                             ("large batch, N=512, D=10", (512, 10), 1e-5),
                             ("square, N=D=6", (6, 6), 1e-5),
                             ("batch of 2", (2, 5), 1e-5)]:
        cases.append(_Case(name, (_features(rng, shape), *_params(rng, shape[1]), eps)))
    x = _with_tiny_spread(_features(rng, (16, 4)))
    cases.append(_Case("epsilon matters (eps=0.1, a constant feature)",
                       (x, *_params(rng, 4), 0.1)))
    cases.append(_Case("mean 1e4 in float32, N=64", (_large_mean(rng, (64, 5)),
                       *_params(rng, 5, np.float32), 1e-5), rtol=1e-2, precision=True))
    return cases


def _conv_cases(seed):
    rng = _rng(seed)
    cases = []
    for name, shape in [("small, (2, 3, 2, 2)", (2, 3, 2, 2)),
                        ("(8, 4, 5, 5)", (8, 4, 5, 5)),
                        ("one image, (1, 3, 4, 4)", (1, 3, 4, 4)),
                        ("C = W, (4, 3, 3, 3)", (4, 3, 3, 3))]:
        cases.append(_Case(name, (_features(rng, shape), *_params(rng, shape[1]), 1e-5)))
    x = _features(rng, (4, 3, 3, 2))
    x[:, 0] = 1.0 + 1e-3 * rng.standard_normal((4, 3, 2))
    x[:, 1] = -2.0
    cases.append(_Case("epsilon matters (eps=0.1, a constant channel)",
                       (x, *_params(rng, 3), 0.1)))
    cases.append(_Case("mean 1e4 in float32, (16, 3, 4, 4)",
                       (_large_mean(rng, (16, 3, 4, 4)), *_params(rng, 3, np.float32),
                        1e-5), rtol=1e-2, precision=True))
    return cases
