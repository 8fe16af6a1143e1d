"""Statistics for inference: Algorithm 2 of the paper, and moving averages to compare with it.

A BN layer here is ``torch.nn``'s or ``bnutils.layers``'s. Statistics are returned as
``{layer name: (mean, var)}`` with ``mean, var: (C,)``, and written back into a model's
``running_mean``/``running_var`` with ``set_statistics``. Derived in notebook 04.
"""

import copy
from contextlib import contextmanager

import torch

from .config import generator
from .layers import BATCHNORM_TYPES


def batchnorm_layers(model):
    """``{name: module}`` of the BN layers of ``model`` in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BATCHNORM_TYPES)}


def batch_statistics(x):
    """Per-channel mean and biased variance of one BN input ``x: (N, C, ...)``, and m."""
    axes = (0, *range(2, x.ndim))
    return x.mean(dim=axes), x.var(dim=axes, correction=0), x.numel() // x.shape[1]


@contextmanager
def record_inputs(model, callback):
    """Within the block, call ``callback(name, x)`` with the input of every BN layer."""
    def hook(name):
        def pre_hook(_module, args):
            callback(name, args[0].detach())  # returns None: the input is left unchanged
        return pre_hook

    handles = [m.register_forward_pre_hook(hook(name))
               for name, m in batchnorm_layers(model).items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def population_statistics(model, x, batch_size):
    """Algorithm 2, steps 8-10: the population statistics of every BN layer of ``model``.

    Passes the training inputs ``x`` through ``model`` in training mode (each BN layer
    normalizes with its batch statistics, as during training) in consecutive batches
    of ``batch_size`` (a last, smaller batch is dropped), and returns, per BN layer,
    E[x] = the mean of the batch means and Var[x] = m/(m-1) times the mean of the
    (biased) batch variances, m being the values per channel in a batch
    (``batch_size``, times H*W for a convolution), as float64 tensors. The model, its
    mode and its running statistics are left as they were.
    """
    if not 2 <= batch_size <= len(x):
        raise ValueError(f"batch_size must be between 2 and {len(x)}, got {batch_size}")
    sums, sizes = {}, {}

    def accumulate(name, inp):
        mean, var, m = batch_statistics(inp)
        mean_sum, var_sum, n = sums.get(name, (0.0, 0.0, 0))
        sums[name] = (mean_sum + mean.double(), var_sum + var.double(), n + 1)
        sizes[name] = m

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    try:
        with record_inputs(model, accumulate):
            for i in range(0, len(x) - batch_size + 1, batch_size):
                model(x[i : i + batch_size])
    finally:
        model.load_state_dict(saved)  # undo the running-statistics updates of the passes
        model.train(was_training)
    stats = {}
    for name, (mean_sum, var_sum, n) in sums.items():
        m = sizes[name]
        stats[name] = (mean_sum / n, m / (m - 1) * var_sum / n)
    return stats


@torch.no_grad()
def accuracy_with_batch_statistics(model, x, y, batch_size, seed=None):
    """Accuracy when each batch of ``batch_size`` examples is normalized by its own statistics.

    What a BN network does at test time when ``eval()`` is forgotten. ``x`` is shuffled
    first with ``seed`` (``None``: in order); a last, smaller batch is dropped. A copy
    of ``model`` runs, so its running statistics stay as they are. Derived in notebook 04.
    """
    net = copy.deepcopy(model).train()
    order = torch.arange(len(x)) if seed is None else torch.randperm(len(x), generator=generator(seed))
    order = order.to(x.device)
    stop = len(x) - len(x) % batch_size
    correct = sum((net(x[order[i : i + batch_size]]).argmax(1) == y[order[i : i + batch_size]])
                  .sum().item() for i in range(0, stop, batch_size))
    return correct / stop


@torch.no_grad()
def set_statistics(model, stats):
    """Write ``{name: (mean, var)}`` into the ``running_mean``/``running_var`` of ``model``."""
    layers = batchnorm_layers(model)
    for name, (mean, var) in stats.items():
        layers[name].running_mean.copy_(mean)
        layers[name].running_var.copy_(var)
    return model


class MovingAverages:
    """Running statistics of every BN layer for several momenta at once, while training.

    For each ``momentum`` (``None``: the cumulative average), keeps the estimate that a
    BN layer with that momentum would hold after the same training batches, with the
    same update as ``torch.nn``: ``running = (1 - momentum) running + momentum batch``,
    the variance unbiased, starting from mean 0 and variance 1. Use as a context
    manager around training; ``statistics(momentum)`` gives ``{name: (mean, var)}``.
    """

    def __init__(self, model, momenta):
        self.model, self.momenta = model, list(momenta)
        self.stats = {mom: {} for mom in self.momenta}
        self.count = {}
        self._paused = False

    @contextmanager
    def paused(self):
        """Within the block, training-mode passes (e.g. Algorithm 2's) are not tracked."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def _update(self, name, x):
        if not self.model.training or self._paused:
            return
        mean, var, m = batch_statistics(x)
        var = var * m / (m - 1)
        n = self.count[name] = self.count.get(name, 0) + 1
        for mom in self.momenta:
            factor = 1.0 / n if mom is None else mom
            run_mean, run_var = self.stats[mom].setdefault(
                name, (torch.zeros_like(mean), torch.ones_like(var)))
            run_mean.lerp_(mean, factor)
            run_var.lerp_(var, factor)

    def statistics(self, momentum):
        """``{name: (mean, var)}`` for one of the momenta."""
        return {name: (mean.clone(), var.clone()) for name, (mean, var) in self.stats[momentum].items()}

    def __enter__(self):
        self._ctx = record_inputs(self.model, self._update)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
