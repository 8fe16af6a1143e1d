"""Initialization, depth and saturation: a deep sigmoid MLP with and without BN.

Derived in notebook 07. The paper claims that BN makes training less sensitive to the
initial weights and lets saturating nonlinearities train (abstract, sections 1 and
3.3). Both show where they should matter most, in a deep sigmoid network: dozens of
copies of one ``bnutils.models.mlp`` of ``DEPTH`` hidden layers, started from weights
of every scale of a log grid, are trained side by side (``bnutils.batched``) on MNIST,
with and without BN, and their final accuracy, their saturation over training and
per-layer statistics at two scales are recorded.
"""

from functools import lru_cache

import numpy as np
import torch

from .. import diagnostics
from ..batched import StackedMLP, accuracy, train_stacked
from ..cache import train_or_load
from ..data import mnist_tensors, train_val_split

DEPTH, WIDTH = 8, 32
VAL_SIZE = 5000


@lru_cache(maxsize=1)
def _tensors(n_train, n_test):
    """MNIST ``(N, 784)``: training (minus a fixed validation split), validation, test."""
    x, y = mnist_tensors("train")
    n_val = VAL_SIZE * len(x) // 60_000  # offline: the same share of the subset
    (x, y), (x_val, y_val) = train_val_split(x, y, n_val, seed=0)
    x_test, y_test = mnist_tensors("test")
    return x[:n_train], y[:n_train], x_val, y_val, x_test[:n_test], y_test[:n_test]


def _stack_stats(model, nets, x, y, lr):
    """``diagnostics.layer_statistics`` of the nets ``nets`` of a stack: arrays
    ``(len(nets), DEPTH)`` per statistic."""
    rows = [diagnostics.layer_statistics(model.net(i), x, y, lr=lr[i]) for i in nets]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def run_scales(steps, norm, scales, seeds, lr, depth=DEPTH, width=WIDTH,
               activation="sigmoid", batch_size=60, evals=10, n_probe=1000,
               detail=(), n_train=None, n_val=None, n_test=None):
    """Train one MLP per (scale, seed) pair, side by side; no caching.

    ``depth`` hidden layers of ``width`` units (BN before every hidden activation when
    ``norm``), weights from N(0, scale^2), plain SGD at rate ``lr`` (one number, or one
    per scale) on mini-batches of ``batch_size``; net ``(scale, seed)`` is seeded with
    ``seed`` (weights and batch order). Every ``steps / evals`` steps the share of
    saturated values per layer (``diagnostics.saturation`` on the first ``n_probe``
    validation images, in train mode: BN with their statistics, as in training) and
    the validation accuracy are logged.
    ``detail``: indices into ``scales`` whose nets also get ``layer_statistics`` on
    those images at the start and at the end.

    Returns arrays indexed ``[scale, seed, ...]``: ``acc`` and ``val_acc`` (final),
    ``diverged``; ``step (n,)``, ``saturated (n, scales, seeds, depth)`` and
    ``val_curve (n, scales, seeds)``; with ``detail``, ``start`` and ``end``: dicts of
    ``(len(detail), seeds, depth)`` arrays, one per statistic of ``layer_statistics``.
    """
    x, y, x_val, y_val, x_test, y_test = _tensors(n_train, n_test)
    x_val, y_val = x_val[:n_val], y_val[:n_val]
    scales, seeds = list(scales), list(seeds)
    n_s, n_r = len(scales), len(seeds)
    init_std = np.repeat(scales, n_r)
    rates = np.repeat(np.broadcast_to(np.asarray(lr, dtype=float), (n_s,)), n_r)
    model = StackedMLP(n_s * n_r, 784, (width,) * depth, 10, activation, norm=norm,
                       init_std=init_std, seeds=seeds * n_s)
    probe_x, probe_y = x_val[:n_probe], y_val[:n_probe]
    detailed = [s * n_r + r for s in detail for r in range(n_r)]

    def stats():
        out = _stack_stats(model, detailed, probe_x, probe_y, rates)
        return {k: v.reshape(len(detail), n_r, depth) for k, v in out.items()}

    def callback(step, model):
        with torch.no_grad(), diagnostics.kept_buffers(model):
            _, hidden = model(probe_x, return_hidden=True)
        saturated = torch.stack([diagnostics.saturation(h, activation, reduce_dims=(1, 2))
                                 for h in hidden], dim=1)
        return {"saturated": saturated.reshape(n_s, n_r, depth),
                "val_curve": accuracy(model, x_val, y_val).reshape(n_s, n_r)}

    start = stats() if detail else None
    first = callback(0, model)
    logs = train_stacked(model, x, y, steps, rates, batch_size=batch_size,
                         log_every=max(1, steps // evals), callback=callback,
                         desc=f"{'BN' if norm else 'no BN'} MLP")
    result = {
        "step": np.concatenate([[0], logs["step"]]),
        "saturated": np.concatenate([first["saturated"][None].numpy(), logs["saturated"]]),
        "val_curve": np.concatenate([first["val_curve"][None], logs["val_curve"]]),
        "acc": accuracy(model, x_test, y_test).reshape(n_s, n_r),
        "val_acc": accuracy(model, x_val, y_val).reshape(n_s, n_r),
        "diverged": logs["diverged"].reshape(n_s, n_r),
    }
    if detail:
        result["start"], result["end"] = start, stats()
    return result


def tune_lr(steps, norm, rates, scale, seeds=(0,), **options):
    """Validation accuracy of nets started at ``scale`` for every learning rate in
    ``rates`` (cached): ``{"lr": (rates,), "val_acc": (rates, seeds), "step": (n,),
    "val_curve": (n, rates, seeds)}``, the last two along the run."""
    def run(**c):
        r = run_scales(c["steps"], c["norm"], [c["scale"]] * len(c["rates"]), c["seeds"],
                       lr=c["rates"],
                       **{k: c[k] for k in c if k not in ("steps", "norm", "scale", "seeds",
                                                          "rates")})
        # logged along the run, so that a replay of its first steps checks it
        return {"lr": np.array(c["rates"]), "val_acc": r["val_acc"], "step": r["step"],
                "val_curve": r["val_curve"]}

    config = {"steps": steps, "norm": norm, "rates": list(map(float, rates)),
              "scale": float(scale), "seeds": list(seeds), **options}
    return train_or_load("deep-mlp-lr", config, run, verbose=False)


NETS = {"none": False, "bn": True}


def trainability(steps, scales, seeds, lr, detail=(), nets=tuple(NETS),
                 **options):
    """``run_scales`` without and with BN (cached): ``{"none": ..., "bn": ...}``.

    ``lr``: ``{"none": rate, "bn": rate}``, each network's tuned rate. ``nets``: only
    these of the two (e.g. one per worker process, ``parallel.prefill``).
    """
    out = {}
    for name in nets:
        config = {"steps": steps, "norm": NETS[name], "scales": list(map(float, scales)),
                  "seeds": list(seeds), "lr": float(lr[name]), "detail": list(detail),
                  **options}
        out[name] = train_or_load(f"deep-mlp-{name}", config,
                                  run_scales,
                                  verbose=False)
    return out


def window(acc, scales, threshold):
    """The trainability window: the smallest and largest scale whose mean accuracy
    over seeds (``acc: (scales, seeds)``) reaches ``threshold``, and the ratio of the
    two (``(nan, nan, 0)`` if none does). Gaps inside the window are not filled."""
    ok = np.flatnonzero(np.asarray(acc).mean(axis=1) >= threshold)
    if len(ok) == 0:
        return float("nan"), float("nan"), 0.0
    lo, hi = scales[ok[0]], scales[ok[-1]]
    return float(lo), float(hi), float(hi / lo)
