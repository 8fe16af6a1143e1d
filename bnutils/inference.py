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
    """Within the block, call ``callback(name, x)`` with the input of every BN layer.

    Only ``model``'s own layers report: ``copy.deepcopy(model)`` copies the hooks with
    the layers, and a copy evaluated within the block (say, on test data with other
    statistics) must not feed the callback.
    """
    def hook(name, layer):
        def pre_hook(module, args):
            if module is layer:
                callback(name, args[0].detach())  # returns None: the input is unchanged
        return pre_hook

    handles = [m.register_forward_pre_hook(hook(name, m))
               for name, m in batchnorm_layers(model).items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _batches(n, batch_size, seed):
    """Index tensors of the full batches of ``batch_size`` among ``n`` examples, shuffled
    with ``seed`` (``None``: consecutive, in order); a last, smaller batch is dropped."""
    order = torch.arange(n) if seed is None else torch.randperm(n, generator=generator(seed))
    return order[: n - n % batch_size].split(batch_size)


@torch.no_grad()
def population_statistics(model, x, batch_size, seed=0):
    """Algorithm 2, steps 8-10: the population statistics of every BN layer of ``model``.

    Passes the training inputs ``x`` through ``model`` in training mode (each BN layer
    normalizes with its batch statistics, as during training) in random mini-batches
    of ``batch_size``: ``x`` is shuffled with ``seed`` and cut into full batches (a last,
    smaller batch is dropped). ``seed=None`` keeps the order of ``x``, which is only
    right when ``x`` is already shuffled: MNIST's files are not, and batches cut from
    them in order vary more than random ones, so their within-batch variances are too
    small (notebook 04 measures it). Returns, per BN layer, E[x] = the mean of the
    batch means and Var[x] = m/(m-1) times the mean of the (biased) batch variances,
    m being the values per channel in a batch (``batch_size``, times H*W for a
    convolution), as float64 tensors. The model, its mode and its running statistics
    are left as they were.
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
            for index in _batches(len(x), batch_size, seed):
                model(x[index.to(x.device)])
    finally:
        model.load_state_dict(saved)  # undo the running-statistics updates of the passes
        model.train(was_training)
    stats = {}
    for name, (mean_sum, var_sum, n) in sums.items():
        m = sizes[name]
        stats[name] = (mean_sum / n, m / (m - 1) * var_sum / n)
    return stats


def mcnemar(right_a, right_b):
    """McNemar's test of two classifiers on the same examples: are they equally accurate?

    ``right_a, right_b``: boolean arrays or tensors, ``(n,)``, whether each classifier
    got each example right. Only the examples they disagree on count: ``only_a`` right
    only with a, ``only_b`` only with b. If both were equally good, each of those would
    be a fair coin's toss, and ``z = (only_a - only_b) / sqrt(only_a + only_b)`` about
    standard normal; ``|z| > 2`` is a difference that chance gives in under 5% of runs.
    Returns ``{"only_a", "only_b", "z"}`` (``z`` is 0 when they never disagree).
    Derived in notebook 04.
    """
    a, b = (torch.as_tensor(r).bool().flatten().cpu() for r in (right_a, right_b))
    if a.shape != b.shape:
        raise ValueError(f"right_a and right_b must have one entry per example, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    disagree = only_a + only_b
    z = (only_a - only_b) / disagree**0.5 if disagree else 0.0
    return {"only_a": only_a, "only_b": only_b, "z": float(z)}


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
