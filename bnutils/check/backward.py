"""Checkers of the backward pass (chapter 3): ``batchnorm_backward_staged`` and
``batchnorm_backward``."""

import numpy as np
import torch

from .. import bn
from ._engine import _Case, _run
from ._pieces import _features, _params, _rng, _t

# --- Chapter 3: the backward pass ----------------------------------------------------

_NODES = {"dx_hat": "dl/dx_hat", "dvar": "dl/dsigma_B^2", "dmu": "dl/dmu_B",
          "dx": "dl/dx", "dgamma": "dl/dgamma", "dbeta": "dl/dbeta"}


def _staged(dy, x, gamma, eps, ddof=0, m_var=None, how="inside", drop=(), dgamma_of=None):
    """The paper's staged gradients as a dict of nodes, with optional mistakes.

    ``drop``: ``"gamma"`` (dl/dx_hat = dy), ``"dmu_direct"`` (dl/dmu_B without its direct
    term), ``"mu_path"`` / ``"var_path"`` (dl/dx without the term through mu_B /
    sigma_B^2). ``ddof``, ``how``: the variance and spread of the forward pass; ``m_var``:
    the m of the path through the variance.
    """
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    m = x.shape[0]
    m_var = m if m_var is None else m_var
    mu = x.mean(0)
    xmu = x - mu
    var = x.var(0, ddof=ddof)
    std = {"inside": np.sqrt(var + eps), "outside": np.sqrt(var) + eps}[how]
    x_hat = xmu / std
    dx_hat = dy if "gamma" in drop else dy * gamma
    dvar = (dx_hat * xmu).sum(0) * -0.5 * (var + eps) ** -1.5
    dmu = dvar * (-2.0 * xmu).sum(0) / m_var
    if "dmu_direct" not in drop:
        dmu = dmu + (dx_hat * -1.0 / std).sum(0)
    dx = dx_hat / std
    if "var_path" not in drop:
        dx = dx + dvar * 2.0 * xmu / m_var
    if "mu_path" not in drop:
        dx = dx + dmu / m
    dgamma = (dy * x_hat).sum(0) if dgamma_of is None else dgamma_of(dy, x, x_hat)
    return {"dx_hat": dx_hat, "dvar": dvar, "dmu": dmu, "dx": dx, "dgamma": dgamma,
            "dbeta": dy.sum(0)}


def _staged_reference(dy, x, gamma, eps):
    """The nodes of the paper's staged backward, from ``bnutils.bn``'s forward cache."""
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    _, cache = bn.batchnorm_forward(x, gamma, np.zeros_like(gamma, dtype=np.float64), eps)
    dx, dgamma, dbeta = bn.batchnorm_backward_staged(dy, cache)
    nodes = _staged(dy, x, gamma, eps)  # dx_hat, dvar, dmu: the same formulas
    nodes.update(dx=dx, dgamma=dgamma, dbeta=dbeta)
    return nodes


def _compact_reference(dy, x, gamma, eps):
    _, cache = bn.batchnorm_forward(np.asarray(x, dtype=np.float64), gamma,
                                    np.zeros_like(gamma, dtype=np.float64), eps)
    return bn.batchnorm_backward(np.asarray(dy, dtype=np.float64), cache)


def _autograd_of(forward):
    """(dx, dgamma, dbeta) of a (mistaken) torch forward ``(x, gamma, beta, eps) -> y``."""
    def backward(dy, x, gamma, eps):
        xt, gt = _t(x).requires_grad_(), _t(gamma).requires_grad_()
        bt = torch.zeros_like(gt, requires_grad=True)
        y = forward(xt, gt, bt, eps)
        grads = torch.autograd.grad((y * _t(dy)).sum(), (xt, gt, bt))
        return tuple(g.numpy() for g in grads)
    return backward


def _torch_norm(axes, ddof=0, how="inside"):
    def forward(x, gamma, beta, eps):
        mean = x.mean(axes, keepdim=True)
        var = x.var(axes, correction=ddof, keepdim=True)
        spread = torch.sqrt(var + eps) if how == "inside" else torch.sqrt(var) + eps
        return gamma * (x - mean) / spread + beta
    return forward


def _compact(dy, x, gamma, eps, ddof=0, how="inside", means=True):
    """The compact form, with the forward's mistakes or sums where means belong."""
    x, dy = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
    m = x.shape[0]
    var = x.var(0, ddof=ddof)
    std = np.sqrt(var + eps) if how == "inside" else np.sqrt(var) + eps
    x_hat = (x - x.mean(0)) / std
    dbeta, dgamma = dy.sum(0), (dy * x_hat).sum(0)
    k = m if means else 1
    return gamma / std * (dy - dbeta / k - x_hat * dgamma / k), dgamma, dbeta


def _node_mistakes():
    """The mistakes of the staged backward, each as a function returning the nodes."""
    def nodes(**kw):
        return lambda dy, x, g, eps: _staged(dy, x, g, eps, **kw)

    def with_params(dgamma=None, dbeta=None):
        def variant(dy, x, g, eps):
            out = _staged(dy, x, g, eps)
            x_hat = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
            if dgamma is not None:
                out["dgamma"] = dgamma(dy, x_hat)
            if dbeta is not None:
                out["dbeta"] = dbeta(dy)
            return out
        return variant

    def final_only(backward):  # a forward mistake: only the outputs are compared
        def variant(dy, x, g, eps):
            dx, dgamma, dbeta = backward(dy, x, g, eps)
            return {"dx_hat": None, "dvar": None, "dmu": None, "dx": dx,
                    "dgamma": dgamma, "dbeta": dbeta}
        return variant

    return [
        ("statistics_constant", [nodes(drop=("mu_path", "var_path"))]),
        ("missing_dmu_term", [nodes(drop=("dmu_direct",)), nodes(drop=("mu_path",))]),
        ("missing_dvar_term", [nodes(drop=("var_path",))]),
        ("missing_gamma", [nodes(drop=("gamma",))]),
        ("dgamma_not_summed", [with_params(dgamma=lambda dy, xh: dy * xh),
                               with_params(dgamma=lambda dy, xh: dy * xh,
                                           dbeta=lambda dy: dy)]),
        ("dbeta_not_summed", [with_params(dbeta=lambda dy: dy)]),
        ("averaged_not_summed", [with_params(dgamma=lambda dy, xh: (dy * xh).mean(0),
                                             dbeta=lambda dy: dy.mean(0)),
                                 with_params(dgamma=lambda dy, xh: (dy * xh).mean(0)),
                                 with_params(dbeta=lambda dy: dy.mean(0))]),
        ("dgamma_uses_x", [nodes(dgamma_of=lambda dy, x, xh: (dy * x).sum(0))]),
        ("unbiased_variance", [nodes(ddof=1),
                               lambda dy, x, g, eps: _staged(dy, x, g, eps, ddof=1,
                                                             m_var=len(x) - 1),
                               final_only(_autograd_of(_torch_norm((0,), ddof=1))),
                               final_only(lambda *a: _compact(*a, ddof=1))]),
        ("eps_outside_sqrt", [nodes(how="outside"),
                              final_only(_autograd_of(_torch_norm((0,), how="outside"))),
                              final_only(lambda *a: _compact(*a, how="outside"))]),
        ("feature_axis", [final_only(_autograd_of(_torch_norm((1,))))]),
        ("sums_for_means", [final_only(lambda *a: _compact(*a, means=False))]),
    ]


def _backward_cases(seed):
    rng = _rng(seed)
    cases = []
    for name, shape, eps, loc in [("small batch, N=4, D=3", (4, 3), 1e-5, 0.0),
                                  ("large batch, N=512, D=8", (512, 8), 1e-5, 0.0),
                                  ("square, N=D=5", (5, 5), 1e-5, 0.0),
                                  ("epsilon matters (eps=0.5)", (16, 4), 0.5, 0.0),
                                  ("mean 1e4, N=64", (64, 3), 1e-5, 1e4)]:
        x = loc + _features(rng, shape)
        dy = rng.normal(0.5, 1.0, shape)  # a non-zero mean: dbeta and the mean path matter
        cases.append(_Case(name, (dy, x, _params(rng, shape[1])[0], eps)))
    return cases


def batchnorm_backward_staged(fn):
    """Check the paper's staged backward, node by node, for ``x: (N, D)``.

    ``fn(dy, x, gamma, eps)`` recomputes what it needs from ``x`` and returns a dict
    with ``dx_hat: (N, D)``, ``dvar: (D,)``, ``dmu: (D,)``, ``dx: (N, D)``,
    ``dgamma: (D,)`` and ``dbeta: (D,)``: dl/dx_hat, dl/dsigma_B^2, dl/dmu_B, dl/dx,
    dl/dgamma, dl/dbeta. The verdict names the first wrong node, in the order of the
    graph. Returns a ``Result``.
    """
    return _run("batchnorm_backward_staged", fn, _backward_cases(3), _staged_reference,
                _node_mistakes(), dict(_NODES))


def batchnorm_backward(fn):
    """Check ``fn(dy, x, gamma, eps) -> (dx, dgamma, dbeta)``, BN's backward pass.

    ``dy, x: (N, D)``, ``gamma: (D,)``; the function recomputes what it needs (the
    statistics, x_hat) from ``x``. Any correct form passes; chapter 3 asks for the
    compact one. The cases: N from 4 to 512, a square batch, an epsilon that matters,
    a mean of 1e4, gamma != 1 and a ``dy`` with a non-zero mean. Returns a ``Result``.
    """
    outputs = ("dx", "dgamma", "dbeta")

    def as_tuple(variant):
        return lambda *a: tuple(variant(*a)[k] for k in outputs)

    mistakes = [(key, [as_tuple(v) for v in variants])
                for key, variants in _node_mistakes()]
    return _run("batchnorm_backward", fn, _backward_cases(3), _compact_reference, mistakes,
                outputs)
