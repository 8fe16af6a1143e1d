"""Figure 1 of the paper: a sigmoid MLP on MNIST with and without BN (section 4.1),
and a study of the settings the paper leaves open.

Derived in notebook 05. ``figure1_runs`` trains a grid of settings (learning rate x
initial weight scale x seed) at once, as two stacks of networks (``bnutils.batched``):
one without BN and one with BN before every hidden sigmoid. Network ``i`` of both
stacks starts from the same weights and sees the same mini-batches in the same order,
so BN is their only difference. At step 0 and every ``log_every`` steps, every network
is probed:

- test accuracy, and validation accuracy when a validation split is held out, in eval
  mode (the BN network uses its running statistics);
- the 15th, 50th and 85th percentiles of the inputs to the first ``units`` sigmoids of
  the last hidden layer over ``pct_examples`` fixed held-out images, in training mode:
  a BN layer normalises with the statistics of those images, as it does while training
  (at step 0 no running statistics have been estimated yet); the running statistics
  are left as they were;
- for the BN network, that layer's gamma and beta and the percentiles of x_hat.

The learning rate is chosen on the validation split only (``choose_lr``); the test set
is measured for the figures and plays no part in any choice.
"""

import functools
import itertools
import time

import numpy as np
import torch

from .. import cache, data
from .. import drift as _drift
from ..batched import StackedMLP, train_stacked
from ..batched import accuracy as stacked_accuracy
from ..config import device as default_device
from ..config import generator as make_generator
from ..models import mlp

PERCENTILES = _drift.PERCENTILES
NETS = ("baseline", "bn")
INPUTS = ("standardized", "raw")
SPLIT_SEED = 0  # the validation split: one for every run, so all choose on the same images


def figure1(steps=50_000, seed=0, batch_size=60, log_every=500, lr=2.0, init_std=0.05,
            units=8, pct_examples=1000, inputs="standardized"):
    """Train the baseline and the BN network of Figure 1 and return their logs (cached).

    Both are ``784-100-100-100-10`` sigmoid MLPs (``bnutils.models.mlp``) with weights
    from N(0, ``init_std``^2), trained on all 60,000 training images by plain SGD at
    learning rate ``lr`` with cross-entropy on mini-batches of ``batch_size``; the BN net
    has BN before every hidden sigmoid and no bias in the layer before it. ``inputs``:
    ``"standardized"`` (pixels minus the training mean, over the training std) or
    ``"raw"`` (pixels in [0, 1]).

    Returns a dict of NumPy arrays, with ``n = n_logged`` (every ``log_every`` steps and
    after the last):

    - ``step: (n,)`` int64; ``acc_baseline``, ``acc_bn: (n,)`` float64, test accuracy;
    - ``pct_baseline``, ``pct_bn: (n, 3)``: 15th, 50th, 85th percentiles, over the first
      ``pct_examples`` test images, of the input to sigmoid 0 of the last hidden layer
      (for the BN net, the BN output, normalised with those images' statistics);
    - ``pct_units_baseline``, ``pct_units_bn: (n, units, 3)``: the same for sigmoids
      ``0 .. units-1`` of that layer (``pct_*`` is unit 0 of these);
    - ``loss_baseline``, ``loss_bn: (n,)``: mean training loss since the previous log;
    - ``gamma_bn``, ``beta_bn: (n, units)`` of that BN layer, and ``pct_xhat_bn:
      (n, units, 3)``, the percentiles of its x_hat (``pct_units_bn`` is gamma * these
      + beta);
    - the state before training: ``acc_<net>_init`` (floats) and
      ``pct_units_<net>_init: (units, 3)``;
    - ``seconds``: a dict with the wall-clock time of each network's run (not arrays).
    """
    runs = figure1_runs((lr,), (init_std,), (seed,), steps=steps, inputs=inputs, n_val=0,
                        batch_size=batch_size, log_every=log_every, units=units,
                        pct_examples=pct_examples)
    return one_run(runs)


def one_run(runs, i_lr=0, i_std=0, i_seed=0):
    """One setting of a ``figure1_runs`` result in the form ``figure1`` returns."""
    at = (i_lr, i_std, i_seed)
    out = {"step": runs["step"][1:]}
    for net in NETS:
        acc, pct = runs[f"acc_{net}"][at], runs[f"pct_{net}"][at]
        out.update({f"acc_{net}": acc[1:], f"pct_{net}": pct[1:, 0],
                    f"pct_units_{net}": pct[1:], f"loss_{net}": runs[f"loss_{net}"][at][1:],
                    f"acc_{net}_init": float(acc[0]), f"pct_units_{net}_init": pct[0]})
    for key in ("gamma", "beta", "pct_xhat"):
        out[f"{key}_bn"] = runs[f"{key}_bn"][at][1:]
    out["seconds"] = dict(runs["seconds"])
    return out


def figure1_runs(lrs, init_stds=(0.05,), seeds=(0,), steps=50_000, inputs="standardized",
                 n_val=5_000, batch_size=60, log_every=1_000, units=8, pct_examples=1_000,
                 n_test=None):
    """Figure 1's two networks for every setting of a grid, trained in two stacks (cached).

    The grid is ``lrs x init_stds x seeds`` (each a sequence); ``seeds`` seed both the
    initial weights and the order of the mini-batches. With ``n_val > 0`` the networks
    train on the training set less ``n_val`` images held out for validation
    (``bnutils.data.train_val_split``, the same split for every call), and the
    percentiles are taken over the first ``pct_examples`` validation images; with
    ``n_val=0`` they train on all 60,000 and the percentiles use test images. Test
    accuracy is measured on all 10,000 test images, or the first ``n_test`` (a quick
    look).

    Returns a dict; ``(L, S, R)`` are the grid's sizes, ``n`` the number of logs:

    - ``step: (n,)``: 0, then every ``log_every`` steps and the last;
    - ``lr (L,)``, ``init_std (S,)``, ``seed (R,)``: the grid;
    - for ``net`` in ``baseline``, ``bn``: ``acc_<net>: (L, S, R, n)`` test accuracy;
      ``val_<net>: (L, S, R, n)`` validation accuracy (with ``n_val > 0``), measured at
      the last log only (NaN before: choices are made at the end, and it saves time);
      ``loss_<net>: (L, S, R, n)``, the mean training loss since the previous log (NaN
      at step 0); ``pct_<net>: (L, S, R, n, units, 3)``, the sigmoid-input percentiles;
      ``diverged_<net>: (L, S, R)``, a non-finite loss froze the network;
    - ``gamma_bn``, ``beta_bn: (L, S, R, n, units)``, ``pct_xhat_bn: (L, S, R, n, units,
      3)``: the last BN layer's parameters and the percentiles of its x_hat;
    - ``seconds``: wall-clock seconds of each stack; ``probe_set``: "validation" or "test".
    """
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    lrs, init_stds = [float(v) for v in lrs], [float(v) for v in init_stds]
    seeds = [int(s) for s in seeds]
    if not (lrs and init_stds and seeds):
        raise ValueError("lrs, init_stds and seeds must each hold at least one value")
    if min(lrs) <= 0 or min(init_stds) <= 0:
        raise ValueError(f"learning rates and initial scales must be > 0, got {lrs}, "
                         f"{init_stds}")
    if steps < 1 or log_every < 1:
        raise ValueError(f"steps and log_every must be >= 1, got {steps}, {log_every}")
    config = dict(lrs=lrs, init_stds=init_stds, seeds=seeds, steps=steps, inputs=inputs,
                  n_val=n_val, batch_size=batch_size, log_every=log_every, units=units,
                  pct_examples=pct_examples, n_test=n_test)
    return cache.train_or_load("figure1-runs", config,
                               _runs, verbose=False)


def figure1_sensitivity(lrs, init_stds, inputs=INPUTS, steps=5_000, seeds=(0,), **kwargs):
    """The sensitivity study: ``figure1_runs`` over ``lrs x init_stds`` for each input scaling.

    Each ``(inputs, init_std)`` setting is one cached run, its learning rates and seeds
    trained as one stack. Returns ``{inputs: runs}``, each with the ``(L, S, R)`` grid
    axes of ``figure1_runs`` (the settings joined along the ``init_std`` axis).
    ``kwargs`` go to ``figure1_runs`` (``n_val``, ``log_every``, ...).
    """
    return {
        kind: join([figure1_runs(lrs, (s,), seeds, steps=steps, inputs=kind, **kwargs)
                    for s in init_stds], "init_std")
        for kind in inputs
    }


GRID_AXES = ("lr", "init_std", "seed")


def select(runs, lr=None, init_std=None, seed=None):
    """The part of a ``figure1_runs`` result at one value of some grid axes.

    Each given value keeps its axis with length 1, so the result has the same form:
    ``select(runs, lr=0.5)`` holds the runs at learning rate 0.5 for every scale and seed.
    """
    out = dict(runs)
    for axis, value in zip(GRID_AXES, (lr, init_std, seed), strict=True):
        if value is None:
            continue
        found = np.flatnonzero(np.isclose(out[axis], value))
        if len(found) != 1:
            raise ValueError(f"{axis}={value} is not in the grid {out[axis].tolist()}")
        i, before = GRID_AXES.index(axis), out
        out = {key: v[found] if key == axis else _take(v, i, found[0], before)
               for key, v in before.items()}
    return out


def join(parts, axis):
    """Join ``figure1_runs`` results (same steps and settings) along one grid ``axis``.

    E.g. ``join([select(grid, lr=0.5), more_seeds], "seed")``. ``seconds`` are summed.
    """
    if axis not in GRID_AXES:
        raise ValueError(f"axis must be one of {GRID_AXES}, got {axis!r}")
    first, i = parts[0], GRID_AXES.index(axis)
    for p in parts[1:]:
        if not np.array_equal(p["step"], first["step"]):
            raise ValueError("the runs to join were logged at different steps")
    out = {}
    for key, value in first.items():
        if key == axis:
            out[key] = np.concatenate([p[key] for p in parts])
        elif _on_grid(key, value, first):
            out[key] = np.concatenate([p[key] for p in parts], axis=i)
        elif key == "seconds":
            out[key] = {net: sum(p[key][net] for p in parts) for net in value}
        else:
            out[key] = value
    return out


def _on_grid(key, value, runs):
    return (isinstance(value, np.ndarray) and key not in GRID_AXES + ("step",)
            and value.shape[:3] == runs["diverged_bn"].shape)


def _take(value, i, index, runs):
    if not _on_grid(None, value, runs):
        return value
    return np.take(value, [index], axis=i)


def make_net(norm, init_std, seed):
    """The Figure 1 network, ``norm=None`` (baseline) or ``nn.BatchNorm1d`` (BN).

    The same ``seed`` gives both the same weights, so BN is their only difference; net
    ``i`` of a ``figure1_runs`` stack starts from exactly these weights.
    """
    return mlp(784, (100, 100, 100), 10, activation="sigmoid", norm=norm,
               init_std=init_std, generator=make_generator(seed))


# --- choosing from the grid ---------------------------------------------------------------


def choose_lr(lrs, val_acc):
    """The learning rate with the highest mean validation accuracy; is it inside the grid?

    ``lrs: (L,)`` increasing; ``val_acc: (L, ...)``: the validation accuracy after the
    full run of each rate (for several seeds, averaged). Only validation numbers go in:
    the test set plays no part. Returns ``(lr, interior)``: ``interior`` is False when
    the best rate is the smallest or the largest tried, i.e. the grid must be extended.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    acc = np.asarray(val_acc, dtype=np.float64)
    if lrs.ndim != 1 or len(lrs) < 1 or np.any(np.diff(lrs) <= 0):
        raise ValueError(f"lrs must be one increasing sequence, got {lrs}")
    if len(acc) != len(lrs) or not np.all(np.isfinite(acc)):
        raise ValueError(f"val_acc needs one row of finite accuracies per rate, "
                         f"got shape {acc.shape} for {len(lrs)} rates")
    mean = acc.reshape(len(lrs), -1).mean(1)
    best = int(np.argmax(mean))
    return float(lrs[best]), 0 < best < len(lrs) - 1


def choose_setting(lrs, init_stds, val_acc):
    """The learning rate and initial scale with the highest validation accuracy.

    ``val_acc: (L, S)`` (or ``(L, S, R)``, averaged over the seeds): the validation
    accuracy after the full run of each setting of ``lrs x init_stds`` (both
    increasing). Only validation numbers go in. Returns ``(lr, init_std, interior)``;
    ``interior`` is False when the best rate or the best scale lies at an edge of its
    grid (extend the grid).
    """
    acc = np.asarray(val_acc, dtype=np.float64)
    acc = acc.reshape(len(lrs), len(init_stds), -1).mean(-1)
    if not np.all(np.isfinite(acc)):
        raise ValueError("val_acc must be finite: one validation accuracy per setting")
    i, j = np.unravel_index(int(np.argmax(acc)), acc.shape)
    interior = 0 < i < len(lrs) - 1 and 0 < j < len(init_stds) - 1
    return float(lrs[i]), float(init_stds[j]), bool(interior)


def drift_summary(runs, start=0, end=None):
    """The drift of every setting of a ``figure1_runs`` result between two logged steps.

    ``start``, ``end``: steps (``end=None``: the last). Returns a dict of arrays
    ``(L, S, R)``: ``move_<net>`` and ``widen_<net>``, the medians over the recorded
    units (``bnutils.drift``), ``ratio_seed``, each seed's ratio of the two (baseline
    over BN), and ``ratio: (L, S)``, how many times farther the baseline's typical unit
    moved than the BN network's (medians over units and seeds pooled). Settings where
    either network diverged get NaN.
    """
    steps = list(runs["step"])
    end = steps[-1] if end is None else end
    for s in (start, end):
        if s not in steps:
            raise ValueError(f"step {s} was not logged; logged steps: {steps}")
    a, b = steps.index(start), steps.index(end)
    out, moves = {}, {}
    bad = runs["diverged_baseline"] | runs["diverged_bn"]
    for net in NETS:
        pct = np.moveaxis(runs[f"pct_{net}"], 3, 0)[[a, b]]  # (2, L, S, R, units, 3)
        pct = np.where(bad[None, ..., None, None], 0.0, pct)  # diverged: NaN below
        d = _drift.drift(pct)
        moves[net] = np.where(bad[..., None], np.nan, d.move)  # (L, S, R, units)
        out[f"move_{net}"] = np.median(moves[net], axis=-1)
        out[f"widen_{net}"] = np.where(bad, np.nan, np.median(d.widen, axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        base, bn = out["move_baseline"], out["move_bn"]
        out["ratio_seed"] = np.where(bn > 0, base / bn, np.where(base > 0, np.inf, 1.0))
        out["ratio_seed"] = np.where(bad, np.nan, out["ratio_seed"])
    shape = moves["bn"].shape
    pooled = {net: moves[net].reshape(*shape[:2], -1) for net in NETS}
    base, bn = (np.median(pooled[net], axis=-1) for net in NETS)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = np.where(bn > 0, base / bn, np.where(base > 0, np.inf, 1.0))
    return out


def nearest_lr(lrs, ratio, chosen, picture="paper", factor=2.0):
    """The rate of ``lrs`` nearest to ``chosen`` (on a log scale) that shows ``picture``.

    ``ratio: (L,)``: baseline-to-BN drift ratios (``drift_summary``); ``picture``:
    ``"paper"`` (the baseline drifts at least ``factor`` times farther), ``"reversed"``
    or ``"neither"``, as ``bnutils.drift.picture`` classifies them. Returns ``None`` when
    no rate shows it; ties go to the smaller rate.
    """
    lrs, ratio = np.asarray(lrs, dtype=np.float64), np.asarray(ratio, dtype=np.float64)
    if len(lrs) != len(ratio):
        raise ValueError(f"one ratio per rate: {len(lrs)} rates, {len(ratio)} ratios")
    ok = [i for i, r in enumerate(ratio)
          if not np.isnan(r) and _drift.picture(r, factor) == picture]
    if not ok:
        return None
    return float(lrs[min(ok, key=lambda i: (abs(np.log(lrs[i] / chosen)), lrs[i]))])


# --- training and probing -------------------------------------------------------------------


def _runs(lrs, init_stds, seeds, steps, inputs, n_val, batch_size, log_every, units,
          pct_examples, n_test):
    dev = default_device()
    train_set, val_set, test_set = held_out_data(inputs, n_val, dev)
    test_set = tuple(t[:n_test] for t in test_set)
    grid = list(itertools.product(lrs, init_stds, seeds))
    shape = (len(lrs), len(init_stds), len(seeds))
    lr_k, std_k, seed_k = (list(v) for v in zip(*grid, strict=True))
    x_pct = (val_set if val_set is not None else test_set)[0][:pct_examples]
    out, seconds = {}, {}
    for net in NETS:
        model = StackedMLP(len(grid), norm=net == "bn", init_std=std_k, seeds=seed_k).to(dev)
        probe = Probe(test_set, val_set, x_pct, units, last=steps)
        start = time.perf_counter()
        first = {key: _numpy(v) for key, v in probe(0, model).items()}
        logs = train_stacked(model, *train_set, steps, lr_k, batch_size=batch_size,
                             data_seeds=seed_k, log_every=log_every, callback=probe,
                             desc=f"{net} x {len(grid)}")
        seconds[net] = time.perf_counter() - start
        out["step"] = np.concatenate([[0], logs["step"]]).astype(np.int64)
        logs["loss"] = np.concatenate([np.full((1, len(grid)), np.nan), logs["loss"]])
        for key, value in first.items():
            logs[key] = np.concatenate([value[None], logs[key]])
        for key in ("acc", "val", "loss", "pct", "gamma", "beta", "pct_xhat"):
            if key in logs:
                out[f"{key}_{net}"] = _grid_first(logs[key], shape)
        out[f"diverged_{net}"] = logs["diverged"].reshape(shape)
    out.update(lr=np.array(lrs), init_std=np.array(init_stds), seed=np.array(seeds),
               seconds=seconds, probe_set="test" if val_set is None else "validation")
    return out


def _grid_first(logged, shape):
    """``(n_logs, k, ...)`` -> ``(*shape, n_logs, ...)``, ``k`` the flattened grid."""
    a = np.moveaxis(np.asarray(logged), 0, 1)
    return a.reshape(*shape, *a.shape[1:])


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class Probe:
    """``callback`` for ``train_stacked``: what Figure 1 plots, for every net of a stack.

    ``test``, ``val``: ``(x, y)`` pairs (``val`` may be None); ``x_pct``: the images
    whose sigmoid inputs are summarised; ``last``: the step at which the validation
    accuracy is measured (NaN at the others). Returns a dict of tensors with the nets
    first: ``acc (k,)``, ``val (k,)`` and what ``sigmoid_inputs`` returns.
    """

    def __init__(self, test, val, x_pct, units, last=None):
        self.test, self.val, self.x_pct, self.units = test, val, x_pct, units
        self.last = last

    def __call__(self, step, model):
        out = {"acc": stacked_accuracy(model, *self.test)}
        if self.val is not None:
            out["val"] = (stacked_accuracy(model, *self.val)
                          if self.last is None or step == self.last
                          else np.full_like(out["acc"], np.nan))
        out.update(sigmoid_inputs(model, self.x_pct, self.units))
        return out


@torch.no_grad()
def sigmoid_inputs(model, x, units):
    """Percentiles of the inputs to the last hidden layer's first ``units`` sigmoids.

    ``model``: a ``StackedMLP`` with sigmoids; ``x: (N, 784)``. The forward pass runs in
    training mode, so a BN layer normalises with the statistics of ``x``; the running
    statistics are restored afterwards, and the model's mode. Returns ``pct: (k, units,
    3)`` (the ``PERCENTILES`` over the ``N`` images) and, with BN, that layer's ``gamma``,
    ``beta: (k, units)`` and ``pct_xhat: (k, units, 3)``, the percentiles of
    x_hat = (y - beta) / gamma, where y is the sigmoid's input.
    """
    saved = [b.clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        _, hidden = model(x, return_hidden=True)
    finally:
        for b, old in zip(model.buffers(), saved, strict=True):
            b.copy_(old)
        model.train(was_training)
    y = hidden[-1][:, :, :units]  # (k, N, units)
    q = torch.tensor(PERCENTILES, dtype=y.dtype, device=y.device)
    out = {"pct": _quantiles(y, q)}
    if model.norm:
        gamma, beta = model.gamma[-1][:, :units], model.beta[-1][:, :units]
        x_hat = (y - beta[:, None]) / gamma[:, None]
        out.update(gamma=gamma.detach().clone(), beta=beta.detach().clone(),
                   pct_xhat=_quantiles(x_hat, q))
    return out


def _quantiles(v, q):
    """``v: (k, N, u)`` -> ``(k, u, len(q))``."""
    return torch.quantile(v, q, dim=1).permute(1, 2, 0)


@functools.lru_cache(maxsize=2)
def held_out_data(inputs, n_val, device):
    """``(train, val, test)``, each ``(x, y)`` on ``device``; ``val`` is None for ``n_val=0``.

    ``val`` holds ``n_val`` of the 60,000 training images, chosen at random
    (``data.train_val_split``, seed ``SPLIT_SEED``), ``train`` the rest; offline, the
    same share of the bundled subset.
    """
    x, y = _tensors("train", inputs, device)
    test = _tensors("test", inputs, device)
    if n_val == 0:
        return (x, y), None, test
    share = n_val * len(x) // 60_000  # n_val on the full data
    train_set, val_set = data.train_val_split(x, y, share, seed=SPLIT_SEED)
    return train_set, val_set, test


def _tensors(split, inputs, device):
    """MNIST ``split`` as ``(x: (N, 784), y: (N,))``, standardised or raw pixels in [0, 1]."""
    if inputs == "standardized":
        return data.mnist_tensors(split, device=device)
    images, labels = data.load_mnist(split)
    x = torch.as_tensor(images, dtype=torch.float32).div_(255.0).reshape(len(images), -1)
    return x.to(device), torch.as_tensor(labels, dtype=torch.int64).to(device)
