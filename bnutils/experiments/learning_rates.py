"""Higher learning rates one change at a time, and why BN-x30 stalls (chapter 6's CNN).

Derived in notebook 07. Chapter 6 ran the paper's configurations, each of which
changes several things at once: ``bn_x5`` differs from ``bn`` in its rate, its decay,
dropout and weight decay. Here every change gets a run of its own, all on chapter 6's
protocol (``figure3.protocol``, so that the runs they share come from its cache):

- ``grid``: the learning rate alone, a log grid of multiples of the base rate, with
  and without BN, every other setting the baseline's;
- ``variants``: named settings (the ablation's single changes, the fixes for BN at
  30 times the rate), each trained with every seed.
"""

from typing import NamedTuple

import numpy as np

from ..verdict import Paired, paired, share
from .figure3 import cached_runs, config_settings, finals, run_cnn, settings
from .parallel import prefill

# the section 4.2.1 changes added to ``bn`` one at a time; "all" is bn_x5
ABLATION = {
    "bn": [],
    "rate": ["rate"],
    "decay": ["decay"],
    "dropout": ["dropout"],
    "weight_decay": ["weight_decay"],
    "all": ["rate", "decay", "dropout", "weight_decay"],
}


def grid(steps, multiples, seeds, threshold, dataset="fashion-mnist", stop_after=1,
         workers=1, **options):
    """Train ``small_cnn`` without and with BN at learning-rate ``multiples`` of the
    base rate (0.1), all other settings the baseline's (cached per run).

    Each network climbs the grid from the smallest multiple and stops after
    ``stop_after`` multiples in a row that are not ``stable`` at ``threshold`` (higher
    rates would fail too; their runs are skipped, not shown). Returns ``{"none": {m:
    result}, "bn": {m: result}}``, each result the ``run_cnn`` arrays stacked over
    ``seeds`` (``figure3.stack``). ``options`` go to ``run_cnn``. ``workers``: train
    the runs of each multiple in that many processes (``parallel.prefill``).
    """
    nets = {"none": None, "bn": "bn"}
    out, failures = {net: {} for net in nets}, dict.fromkeys(nets, 0)
    for m in sorted(multiples):
        climbing = [net for net in nets if failures[net] < stop_after]
        prefill([_grid_call(steps, nets[net], m, (s,), dataset, options)
                 for net in climbing for s in seeds], workers)
        for net in climbing:
            fn, args, kwargs = _grid_call(steps, nets[net], m, seeds, dataset, options)
            out[net][m] = r = fn(*args, **kwargs)
            failures[net] = 0 if stable(r, threshold) else failures[net] + 1
    return out


def _grid_call(steps, norm, multiple, seeds, dataset, options):
    """The cached call of one grid point, as ``(fn, args, kwargs)``."""
    return (cached_runs, ("cnn-lr-grid", steps, seeds, run_cnn),
            {"dataset": dataset, **settings(norm, changes=[("rate", multiple)]), **options})


def ablation_settings():
    """``{name: settings}`` for ``ABLATION``: BN at the base rate with each section
    4.2.1 change alone, none and all of them."""
    return {name: settings("bn", changes=changes) for name, changes in ABLATION.items()}


def x30_settings(warmup):
    """``{name: settings}``: ``bn_x30`` as chapter 6 ran it, and each one-change fix:
    ``warmup`` (the rate rises linearly over the first ``warmup`` steps),
    ``slow_affine`` (BN's gamma and beta keep the base rate 0.1) and ``slow_head``
    (the last linear layer keeps it). BN's scale invariance protects the convolution
    weights only: those are the parameters it does not protect."""
    x30 = config_settings("bn_x30")
    return {"bn_x30": x30, "warmup": {**x30, "warmup": warmup},
            "slow_affine": {**x30, "slow": ("affine",), "slow_lr": 0.1},
            "slow_head": {**x30, "slow": ("head",), "slow_lr": 0.1}}


def variants(steps, specs, seeds, dataset="fashion-mnist", workers=1, **options):
    """Train every ``{name: settings}`` of ``specs`` with every seed (cached per run).

    Two names with the same settings share their runs. ``workers``: train them in that
    many processes first (``parallel.prefill``). Returns ``{name: result}``.
    """
    if workers > 1:
        prefill([(variants, (steps, {name: spec}, (s,), dataset),
                  options) for name, spec in specs.items()
                 for s in seeds], workers)
    return {name: cached_runs("cnn-variant", steps, seeds, run_cnn,
                              dataset=dataset, **spec, **options)
            for name, spec in specs.items()}


def stable(result, threshold):
    """True when no seed diverged and every seed ends with a validation accuracy of at
    least ``threshold``."""
    val = np.atleast_2d(result["val_acc"])
    if any(result["diverged"]) or val.shape[1] == 0:
        return False
    return bool(np.all(val[:, -1] >= threshold))


def largest_stable(runs, threshold):
    """The largest multiple of ``runs`` (``{multiple: result}``, one network of
    ``grid``) below the first unstable one (``stable``): the rates from the bottom of
    the grid up to it all train. ``None`` if the smallest already fails."""
    best = None
    for m in sorted(runs):
        if not stable(runs[m], threshold):
            break
        best = m
    return best


def final_val(result):
    """Each seed's final validation accuracy (chance, 0.1, for a seed that diverged)."""
    return finals({"acc": result["val_acc"], "diverged": result["diverged"]})


class Gain(NamedTuple):
    """One change of an ablation against the reference (see ``gains``)."""

    gain: float  # mean final accuracy minus the reference's
    paired: Paired  # the change against the reference, seed by seed
    share: float | None  # gain / total gain; None unless the total gain is clear


def gains(results, reference="bn", total="all", key="acc"):
    """For an ablation ``{name: result}``: each run's final accuracy (``key``: ``"acc"``
    test, ``"val_acc"`` validation; a diverged seed counts as chance) against
    ``reference``'s, seed by seed (``bnutils.verdict.paired``), and its mean gain as a
    share of ``total``'s gain. The share is ``None`` unless ``total``'s gain is clear
    under the paired rule: a share of a gain that may be noise is no share. Returns
    ``{name: Gain}``."""
    def final(r):
        return finals({"acc": r[key], "diverged": r["diverged"]})

    base = final(results[reference])
    whole = paired(final(results[total]), base)
    out = {}
    for name, r in results.items():
        comparison = paired(final(r), base)
        out[name] = Gain(comparison.mean, comparison, share(comparison.mean, whole))
    return out
