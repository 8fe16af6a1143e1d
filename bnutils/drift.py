"""How far the input distribution of a unit drifts during training, in numbers.

Derived in notebook 05. Figure 1 (b, c) of the paper plots the 15th, 50th and 85th
percentiles of the input to one sigmoid over training; "drift" there means that the
distribution moves (its median) and changes its spread (the 15-85 band). Between a
start log and an end log, each unit gets two numbers:

- ``move = |m_end - m_start| / max(w_start, w_end)``: how far the median travelled, in
  widths of the 15-85 band (the wider of the two, so that a band that starts almost
  empty, as in a freshly initialised deep layer, does not turn every later change of
  the median into a huge number);
- ``widen = w_end / w_start``: how much the band widened (> 1) or narrowed (< 1).

Both are unchanged when all inputs are shifted or rescaled by a positive factor, and
``move`` is the same read forwards or backwards in time. Over several units, ``summary``
takes medians: a typical unit, as the paper's "typical sigmoid".
"""

from typing import NamedTuple

import numpy as np

PERCENTILES = (0.15, 0.50, 0.85)


class Drift(NamedTuple):
    """Per-unit drift: ``move`` and ``widen``, each of the shape of one log's units."""

    move: np.ndarray
    widen: np.ndarray


def widths(pct):
    """The 15-85 widths of percentiles ``pct: (..., 3)`` (15th, 50th, 85th)."""
    pct = _checked(pct)
    return pct[..., 2] - pct[..., 0]


def drift(pct, start=0, end=-1):
    """The drift of each unit between logs ``start`` and ``end``.

    ``pct: (n_logs, ..., 3)``: the 15th, 50th and 85th percentiles of each unit's input
    at each log, e.g. ``pct_units_bn: (n_logs, units, 3)`` of
    ``bnutils.experiments.figure1``. Returns a ``Drift`` whose arrays have the shape
    ``pct.shape[1:-1]``. A unit with an empty band at both logs (a constant input) has
    ``move`` 0 if its median stayed and infinity if it moved, and ``widen`` 1.
    """
    pct = _checked(pct)
    if pct.ndim < 2:
        raise ValueError(f"pct needs a leading log axis: (n_logs, ..., 3), got {pct.shape}")
    a, b = pct[start], pct[end]
    w_a, w_b = a[..., 2] - a[..., 0], b[..., 2] - b[..., 0]
    shift = np.abs(b[..., 1] - a[..., 1])
    scale = np.maximum(w_a, w_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        move = np.where(scale > 0, shift / scale, np.where(shift > 0, np.inf, 0.0))
        widen = np.where(w_a > 0, w_b / w_a, np.where(w_b > 0, np.inf, 1.0))
    return Drift(move, widen)


def summary(d):
    """Medians over units of a ``Drift`` (over every axis): ``(move, widen)`` as floats."""
    return float(np.median(d.move)), float(np.median(d.widen))


def ratio(d_baseline, d_bn):
    """How many times farther the typical baseline unit moved than the typical BN unit.

    Above 1 the baseline drifts more (the paper's picture), below 1 the BN network does.
    """
    base, bn = summary(d_baseline)[0], summary(d_bn)[0]
    if bn > 0:
        return base / bn
    return np.inf if base > 0 else 1.0


def picture(r, factor=2.0):
    """Classify a baseline-to-BN drift ``ratio`` ``r``.

    ``"paper"`` when the baseline moves at least ``factor`` times farther (the paper's
    Figure 1), ``"reversed"`` when the BN network does, ``"neither"`` in between.
    """
    if not factor > 1:
        raise ValueError(f"factor must exceed 1, got {factor}")
    if r >= factor:
        return "paper"
    if r <= 1 / factor:
        return "reversed"
    return "neither"


def seed_picture(ratios, factor=2.0):
    """Classify one setting from its per-seed drift ``ratios`` (baseline over BN).

    One seed: ``picture(r)``. Several (same seeds, same data order for both networks):
    the seeds are compared pairwise on a log scale (``bnutils.verdict.paired`` on the
    logs of the two networks' moves, i.e. on ``log r``): ``"paper"`` when the geometric
    mean ratio is at least ``factor`` and the baseline moves clearly farther under the
    paired rule, ``"reversed"`` when the geometric mean is at most ``1 / factor`` and BN
    moves clearly farther, ``"neither"`` otherwise.
    """
    from .verdict import paired

    r = np.asarray(ratios, dtype=float).ravel()
    if np.isnan(r).any():
        raise ValueError("a ratio is NaN (a diverged run?)")
    if len(r) == 1:
        return picture(float(r[0]), factor)
    logs = np.log(np.clip(r, 1e-300, 1e300))
    geo, p = float(np.exp(logs.mean())), paired(logs, np.zeros_like(logs))
    if geo >= factor and p.above:
        return "paper"
    if geo <= 1 / factor and p.below:
        return "reversed"
    return "neither"


def ratio_text(r):
    """A drift ratio as the text shows it: '290', '12', '5.5', '0.41', never '2.9e+02'."""
    r = float(r)
    if not np.isfinite(r):
        return "unbounded" if r > 0 else "undefined"
    if r >= 10:
        return f"{r:,.0f}"
    return f"{r:.2g}"


def _checked(pct):
    pct = np.asarray(pct, dtype=np.float64)
    if pct.ndim < 1 or pct.shape[-1] != len(PERCENTILES):
        raise ValueError(f"pct must end in an axis of {len(PERCENTILES)} percentiles "
                         f"(15th, 50th, 85th), got shape {pct.shape}")
    if np.isnan(pct).any():
        raise ValueError("pct contains NaN (a diverged run?)")
    if np.any(np.diff(pct, axis=-1) < 0):
        raise ValueError("percentiles must be ordered: 15th <= 50th <= 85th")
    return pct
