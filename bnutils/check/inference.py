"""Checkers of chapter 4: ``running_stats_update``, ``batchnorm_eval``,
``batchnorm_module`` and ``fold_linear``."""

import numpy as np
import torch
from torch import nn

from .. import layers
from ._engine import _Case, _run
from ._pieces import _features, _normalize, _params, _rng, _t

# --- Chapter 4: running statistics, eval mode, folding --------------------------------


def _torch_bn(d, momentum=0.1, eps=1e-5, gamma=None, beta=None, mean=None, var=None):
    layer = layers.BatchNorm1d(d, eps=eps, momentum=momentum).double()
    with torch.no_grad():
        for param, value in ((layer.weight, gamma), (layer.bias, beta),
                             (layer.running_mean, mean), (layer.running_var, var)):
            if value is not None:
                param.copy_(_t(value))
    return layer


def _running_reference(x, running_mean, running_var, momentum):
    layer = _torch_bn(x.shape[1], momentum, mean=running_mean, var=running_var).train()
    with torch.no_grad():
        layer(_t(x))
    return layer.running_mean.numpy(), layer.running_var.numpy()


def _running(axis=0, ddof=1, keras=False, average=True):
    def update(x, running_mean, running_var, momentum):
        new = (x.mean(axis), x.var(axis, ddof=ddof))
        old = (running_mean, running_var)
        if not average:
            return new
        w_old = momentum if keras else 1.0 - momentum
        return tuple(w_old * o + (1.0 - w_old) * n for o, n in zip(old, new, strict=True))
    return update


def running_stats_update(fn):
    """Check ``fn(x, running_mean, running_var, momentum) -> (running_mean, running_var)``.

    One training step's update of BN's running statistics, PyTorch's convention:
    ``(1 - momentum) * running + momentum * batch``, the variance unbiased.
    ``x: (N, D)``, the statistics ``(D,)``. Compared with ``bnutils.layers.BatchNorm1d``;
    the cases start from other values than 0 and 1 and include ``momentum=1``.
    Returns a ``Result``.
    """
    rng = _rng(4)
    cases = []
    for name, shape, momentum in [("small batch, N=4, D=3, momentum=0.1", (4, 3), 0.1),
                                  ("N=64, D=5, momentum=0.01", (64, 5), 0.01),
                                  ("square, N=D=6, momentum=0.3", (6, 6), 0.3),
                                  ("N=8, D=4, momentum=1", (8, 4), 1.0)]:
        d = shape[1]
        mean, var = rng.normal(0.0, 1.0, d), rng.uniform(0.5, 2.0, d)
        cases.append(_Case(name, (_features(rng, shape), mean, var, momentum)))
    mistakes = [
        ("keras_momentum", [_running(keras=True), _running(keras=True, ddof=0)]),
        ("biased_running_var", [_running(ddof=0)]),
        ("running_replaced", [_running(average=False), _running(average=False, ddof=0)]),
        ("feature_axis", [_running(axis=1)]),
    ]
    return _run("running_stats_update", fn, cases, _running_reference, mistakes,
                ("running_mean", "running_var"))


def _eval_reference(x, gamma, beta, running_mean, running_var, eps):
    layer = _torch_bn(x.shape[1], eps=eps, gamma=gamma, beta=beta, mean=running_mean,
                      var=running_var).eval()
    with torch.no_grad():
        return layer(_t(x)).numpy()


def _eval_with(how="inside"):
    def forward(x, gamma, beta, running_mean, running_var, eps):
        spread = {"inside": lambda: np.sqrt(running_var + eps),
                  "outside": lambda: np.sqrt(running_var) + eps,
                  "missing": lambda: np.sqrt(running_var),
                  "no_sqrt": lambda: running_var + eps}[how]()
        return gamma * (x - running_mean) / spread + beta
    return forward


def batchnorm_eval(fn):
    """Check ``fn(x, gamma, beta, running_mean, running_var, eps) -> y``, BN in eval mode.

    ``x: (N, D)``; the rest ``(D,)``. The running statistics differ from the batch's,
    and one case is a batch of one example. Compared with ``bnutils.layers.BatchNorm1d``
    in eval mode. Returns a ``Result``.
    """
    rng = _rng(5)
    cases = []
    for name, shape, eps in [("small batch, N=4, D=3", (4, 3), 1e-5),
                             ("batch of one, D=5", (1, 5), 1e-5),
                             ("large batch, N=256, D=8", (256, 8), 1e-5),
                             ("epsilon matters (eps=0.1)", (8, 4), 0.1)]:
        d = shape[1]
        running = rng.normal(0.0, 2.0, d), rng.uniform(0.5, 3.0, d)
        if eps > 1e-3:
            running = running[0], np.full(d, 1e-3)
        cases.append(_Case(name, (_features(rng, shape), *_params(rng, d), *running, eps)))

    def batch_statistics(ddof):
        return lambda x, g, b, mean, var, eps: g * _normalize(x, (0,), eps, ddof) + b

    mistakes = [
        ("batch_statistics_in_eval", [batch_statistics(0), batch_statistics(1)]),
        ("eps_outside_sqrt", [_eval_with("outside")]),
        ("eps_missing", [_eval_with("missing")]),
        ("no_sqrt", [_eval_with("no_sqrt")]),
        ("affine_missing",
         [lambda x, g, b, mean, var, eps: _eval_with()(x, 1.0, 0.0, mean, var, eps)]),
    ]
    return _run("batchnorm_eval", fn, cases, _eval_reference, mistakes, ("y",))


def _module_run(make):
    """The function a module checker compares: build a layer with ``make(d, eps,
    momentum)``, set gamma and beta, run the training batches, then the eval batch.
    Returns (output of the last training batch, running_mean, running_var, eval output)."""
    def run(batches, x_eval, gamma, beta, eps, momentum):
        layer = make(gamma.shape[0], eps, momentum)
        if not isinstance(layer, nn.Module):
            raise TypeError(f"the class made a {type(layer).__name__}, not an nn.Module")
        for name in ("weight", "bias", "running_mean", "running_var"):
            if not isinstance(getattr(layer, name, None), torch.Tensor):
                raise TypeError(f"the layer has no tensor {name!r} (PyTorch's names: weight "
                                "for gamma, bias for beta, running_mean, running_var)")
        layer = layer.double()
        with torch.no_grad():
            layer.weight.copy_(_t(gamma))
            layer.bias.copy_(_t(beta))
        layer.train()
        for xb in batches:
            y_train = layer(_t(xb))
        layer.eval()
        y_eval = layer(_t(x_eval))
        return tuple(v.detach().numpy().copy() for v in
                     (y_train, layer.running_mean, layer.running_var, y_eval))
    return run


def _module_variant(normalize_ddof=0, update=None, eval_batch=False):
    """A mistaken layer, in NumPy: training-mode normalization with ``normalize_ddof``,
    running statistics updated by ``update`` (``_running`` variants; ``None``: never),
    eval mode with the batch's statistics when ``eval_batch``."""
    def run(batches, x_eval, gamma, beta, eps, momentum):
        mean, var = np.zeros(gamma.shape), np.ones(gamma.shape)
        for xb in batches:
            y_train = gamma * _normalize(xb, (0,), eps, normalize_ddof) + beta
            if update is not None:
                mean, var = update(xb, mean, var, momentum)
        if eval_batch:
            y_eval = gamma * _normalize(x_eval, (0,), eps) + beta
        else:
            y_eval = gamma * (x_eval - mean) / np.sqrt(var + eps) + beta
        return y_train, mean, var, y_eval
    return run


def batchnorm_module(cls):
    """Check a BN module class ``cls(num_features, eps=..., momentum=...)`` for ``x: (N, D)``.

    The layer must have PyTorch's names (``weight``, ``bias``, ``running_mean``,
    ``running_var``), normalize with the batch's statistics and update the running
    ones in training mode, and normalize with the running ones in eval mode. Each case
    runs a few training batches, then an eval batch (one has a single example), in
    float64, and compares the last training output, the running statistics and the
    eval output with ``bnutils.layers.BatchNorm1d`` (ch. 4). Returns a ``Result``.
    """
    if not isinstance(cls, type):
        raise TypeError(f"check.batchnorm_module expects your class, got {type(cls).__name__}")

    def make(d, eps, momentum):
        return cls(d, eps=eps, momentum=momentum)

    rng = _rng(8)
    cases = []
    for name, (n, d), steps, momentum, eps, n_eval in [
            ("N=8, D=3, 3 steps, momentum=0.1", (8, 3), 3, 0.1, 1e-5, 5),
            ("N=32, D=5, 5 steps, momentum=0.3", (32, 5), 5, 0.3, 1e-5, 8),
            ("N=4, D=2, 2 steps, momentum=0.5, eval batch of one", (4, 2), 2, 0.5, 1e-5, 1),
            ("epsilon matters (eps=0.5), N=6, D=4, 2 steps", (6, 4), 2, 0.1, 0.5, 6)]:
        batches = [_features(rng, (n, d)) for _ in range(steps)]
        cases.append(_Case(name, (batches, _features(rng, (n_eval, d)), *_params(rng, d),
                                  eps, momentum)))
    mistakes = [
        ("keras_momentum", [_module_variant(update=_running(keras=True))]),
        ("biased_running_var", [_module_variant(update=_running(ddof=0))]),
        ("running_replaced", [_module_variant(update=_running(average=False))]),
        ("running_not_updated", [_module_variant(update=None)]),
        ("batch_statistics_in_eval", [_module_variant(update=_running(), eval_batch=True),
                                      _module_variant(update=None, eval_batch=True)]),
        ("unbiased_variance", [_module_variant(normalize_ddof=1, update=_running())]),
    ]
    fn = _module_run(make)
    fn.__name__ = cls.__name__
    return _run("batchnorm_module", fn, cases,
                _module_run(lambda d, eps, momentum: layers.BatchNorm1d(
                    d, eps=eps, momentum=momentum)),
                mistakes, ("y (training)", "running_mean", "running_var", "y (eval)"))


def _fold_reference(W, b, gamma, beta, running_mean, running_var, eps):
    # new layers draw random initial weights: leave the reader's random state as it was
    with torch.random.fork_rng(devices=[]):
        linear = nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(_t(W))
            linear.bias.copy_(_t(b))
        bn_layer = _torch_bn(W.shape[0], eps=eps, gamma=gamma, beta=beta,
                             mean=running_mean, var=running_var).eval()
        folded = layers.fold_batchnorm(linear, bn_layer)
    return folded.weight.detach().numpy(), folded.bias.detach().numpy()


def _fold(how="inside", columns=False, bias="scaled"):
    def fold(W, b, gamma, beta, running_mean, running_var, eps):
        s = gamma / {"inside": lambda: np.sqrt(running_var + eps),
                     "outside": lambda: np.sqrt(running_var) + eps,
                     "missing": lambda: np.sqrt(running_var),
                     "no_sqrt": lambda: running_var + eps}[how]()
        W_new = W * s if columns else s[:, None] * W
        b_new = {"scaled": lambda: s * (b - running_mean) + beta,
                 "dropped": lambda: beta - s * running_mean,
                 "unscaled": lambda: b + beta - s * running_mean}[bias]()
        return W_new, b_new
    return fold


def fold_linear(fn):
    """Check ``fn(W, b, gamma, beta, running_mean, running_var, eps) -> (W_folded, b_folded)``.

    Folding an eval-mode BN into the linear layer before it, ``u -> W u + b`` with
    ``W: (D_out, D_in)``, ``b: (D_out,)`` as in ``nn.Linear``, the BN parameters and
    statistics ``(D_out,)``. Compared with ``bnutils.layers.fold_batchnorm``.
    Returns a ``Result``.
    """
    rng = _rng(7)
    cases = []
    for name, (d_out, d_in), eps, zero_bias in [("D_out=4, D_in=6", (4, 6), 1e-5, False),
                                                 ("square, D_out=D_in=5", (5, 5), 1e-5,
                                                  False),
                                                 ("no bias, D_out=3, D_in=7", (3, 7), 1e-5,
                                                  True),
                                                 ("epsilon matters (eps=0.1)", (4, 4), 0.1,
                                                  False)]:
        W, b = rng.standard_normal((d_out, d_in)), rng.normal(0.0, 2.0, d_out)
        if zero_bias:
            b = np.zeros(d_out)
        mean, var = rng.normal(0.0, 2.0, d_out), rng.uniform(0.5, 3.0, d_out)
        if eps > 1e-3:
            var = np.full(d_out, 1e-3)
        cases.append(_Case(name, (W, b, *_params(rng, d_out), mean, var, eps)))
    mistakes = [
        ("fold_scaled_columns", [_fold(columns=True)]),
        ("fold_bias_dropped", [_fold(bias="dropped")]),
        ("fold_bias_unscaled", [_fold(bias="unscaled")]),
        ("eps_outside_sqrt", [_fold("outside")]),
        ("eps_missing", [_fold("missing")]),
        ("no_sqrt", [_fold("no_sqrt")]),
    ]
    return _run("fold_linear", fn, cases, _fold_reference, mistakes,
                ("W_folded", "b_folded"))
