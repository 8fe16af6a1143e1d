"""Sentences whose truth depends on a run, and the rules that decide them.

The book's text follows its numbers. A sentence that interprets a result either takes
its deciding words from the notebook (``verdict``: glued, so the page says what the run
found) or, when it is typed, the notebook states the fact it rests on (``guard``), which
fails the full build when a rerun contradicts the text. Quick mode (CI) runs tiny
experiments whose results are not the book's, so there a false guard only warns.

The rules that decide a verdict live here, once, and every chapter uses them:

- **Two configurations are compared seed by seed** (``paired``). Seed ``s`` gives both
  the same initial weights (where the layers agree) and the same mini-batches in the
  same order, so the difference ``d_s = a_s - b_s`` removes what the seed does to
  both. With ``n`` seeds, mean ``d`` and standard deviation ``s_d`` of the differences,
  ``a`` is **clearly above** ``b`` when the 95% confidence interval of the mean paired
  difference lies above zero,

      mean(d) - t(0.975, n - 1) * s_d / sqrt(n) > 0,

  (a two-sided paired t-test at the 5% level), **clearly below** when it lies below
  zero, and **level** otherwise. With three seeds ``t = 4.30``: the differences must
  agree in sign and be large against their spread. Overlapping or non-overlapping
  bands of mean ± sd decide nothing: they mix the seeds' common ups and downs with the
  configurations' difference.
- **A question has as many outcomes as it has**: ``verdict(key, outcome, words)`` takes
  a dict with the words of every outcome (three for "paper's picture / reversed /
  neither"), and ``counted`` gives words for a count, none and all included.
- **A trend is a rank correlation** (``rank_trend``): Spearman's rho of the values
  against the setting, within each group of a grid, with a permutation test; not a
  share of steps that go one way.
- **A share of a gain** is reported only when the total gain is clear under the paired
  rule (``share``).
- **A censored result is never a number** (``Reach``): a run that does not reach a
  target within its ``N`` steps is "not reached in N steps", and a ratio of steps with
  a censored run in it is not computed.
- **Not tested at this length**: a comparison of how fast runs get somewhere, or of
  where they end, needs runs that have flattened (``plateaued``); a verdict that
  differs at half the length of the same runs is length-dependent
  (``length_dependent``), and the ledger (``LEDGER``) says not tested.
"""

import math
import warnings
from typing import NamedTuple

import numpy as np

from .config import is_quick
from .data import loaded

# t(0.975, dof): the two-sided 95% quantile of Student's t for dof = 1 .. 30
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


# the claims ledger's four words (book/claims.md), as ``verdict``'s words for a ledger
# verdict: ``verdict(key, word, LEDGER)``
LEDGER = {
    "reproduces": "reproduces",
    "partly": "partly",
    "does not reproduce": "does not reproduce",
    "not tested": "not tested",
}


class VerdictError(AssertionError):
    """A typed sentence of the book is contradicted by the numbers of this run."""


def verdict(key, holds, if_true=None, if_false=None, glue=True):
    """Return (and glue under ``key``) the words of what the run found.

    A yes/no question: ``holds`` is the computed fact (a bool), ``if_true`` and
    ``if_false`` the words the page shows in either case:
    ``verdict("ch08_ics_word", rel_bn < rel_base, "smaller", "larger")`` and, in the
    markdown, ``{glue:text}`ch08_ics_word```.

    A question with more outcomes: ``holds`` is the outcome and ``if_true`` a dict with
    the words of every outcome the question has, e.g. ``verdict("ch05_pic", "reversed",
    {"paper": "...", "reversed": "...", "neither": "..."})``. An outcome without words
    is an error, so no outcome is forced into another's words.
    """
    if isinstance(if_true, dict):
        if if_false is not None:
            raise TypeError("give the words of a many-outcome verdict as one dict")
        if len(set(if_true.values())) < 2:
            raise ValueError(f"{key}: a verdict needs at least two different texts")
        if holds not in if_true:
            raise ValueError(
                f"{key}: no words for the outcome {holds!r}; "
                f"outcomes with words: {sorted(map(str, if_true))}"
            )
        text = if_true[holds]
    else:
        if if_true is None or if_false is None:
            raise TypeError("a yes/no verdict needs if_true and if_false")
        if not isinstance(holds, bool):
            holds = bool(holds)  # NumPy and torch booleans
        text = if_true if holds else if_false
    if glue:
        _glue(key, text, display=False)
    return text


def guard(holds, claim):
    """Check the fact behind a typed sentence of the text (``claim``, quoted from it).

    In full mode a false ``holds`` raises ``VerdictError`` and the book build fails, so
    the text is mended instead of silently wrong. It only warns in quick mode, since
    quick runs are too short to decide the book's claims, and where this process
    computes on a bundled data subset (offline: ``on_subset``), too small to decide
    them. Returns ``holds``.
    """
    holds = bool(holds)
    if not holds:
        message = f"the text says {claim!r}, but this run's numbers disagree"
        if is_quick():
            warnings.warn(message + " (quick mode: not an error)", stacklevel=2)
        elif on_subset():
            warnings.warn(message + " (on the bundled data subset: not an error)",
                          stacklevel=2)
        else:
            raise VerdictError(message)
    return holds


def on_subset():
    """Whether this process has loaded a bundled data subset (``bnutils.data``)."""
    return any(entry["data"]["source"] == "subset" for entry in loaded())


def glue(name, variable, display=True):
    """Store ``variable`` under ``name`` for the book's ``{glue:text}`` roles: myst_nb's
    ``glue`` where myst_nb is installed (the book build, ``make lab``).

    Without it (Colab) nothing is stored: the learner notebooks carry the text with the
    book's numbers already written in. ``display=True`` still shows the value, as
    myst_nb's ``glue`` does.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            from IPython.display import display as show

            show(variable)
        return
    myst_glue(name, variable, display=display)


_glue = glue  # verdict's argument ``glue`` hides the function's name there


# --- comparing two configurations, seed by seed ------------------------------------------


def t_quantile(dof, confidence=0.95):
    """The two-sided ``confidence`` quantile of Student's t with ``dof`` degrees of
    freedom (only 0.95 is tabulated; above 30 degrees, a Cornish-Fisher expansion)."""
    if confidence != 0.95:
        raise ValueError("only the 95% quantile is tabulated")
    if dof < 1:
        raise ValueError(f"dof must be at least 1, got {dof}")
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


class Paired(NamedTuple):
    """The paired comparison of ``a`` with ``b`` (see ``paired``)."""

    diff: np.ndarray  # a_s - b_s, one per seed
    mean: float  # mean paired difference
    sd: float  # standard deviation of the differences (ddof=1)
    half_width: float  # t(0.975, n-1) * sd / sqrt(n): the 95% interval is mean ± this
    outcome: str  # "above", "below" or "level"

    @property
    def above(self):
        """``a`` is clearly above ``b``."""
        return self.outcome == "above"

    @property
    def below(self):
        """``a`` is clearly below ``b``."""
        return self.outcome == "below"

    @property
    def level(self):
        """Neither: the interval of the mean difference contains zero."""
        return self.outcome == "level"

    def text(self, fmt=".2%"):
        """``'+1.20% ± 0.80%'``: the mean paired difference and its 95% half-width."""
        return f"{self.mean:+{fmt}} ± {self.half_width:{fmt}}"


def paired(a, b):
    """Compare per-seed values ``a`` and ``b`` (same seeds, same order) seed by seed.

    Returns a ``Paired``: ``outcome`` is ``"above"`` when the 95% confidence interval of
    the mean paired difference ``a - b`` lies above zero, ``"below"`` when it lies below,
    ``"level"`` otherwise (the module's docstring states the rule). Needs at least two
    seeds and finite values (count a diverged run as what it scored, e.g. chance).
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(
            f"paired values need one per seed on both sides, got {a.size} and {b.size}"
        )
    if a.size < 2:
        raise ValueError(f"a paired comparison needs at least 2 seeds, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired values must be finite (count a diverged run as chance)")
    d = a - b
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = t_quantile(d.size - 1) * sd / math.sqrt(d.size)
    if mean - half > 0:
        outcome = "above"
    elif mean + half < 0:
        outcome = "below"
    else:
        outcome = "level"
    return Paired(d, mean, sd, half, outcome)


def share(gain, total):
    """``gain`` as a share of the ``total`` gain (a ``Paired``), or ``None`` when the
    total gain is not clear under the paired rule: a share of noise is no share."""
    if total.level or total.mean == 0:
        return None
    return float(gain / total.mean)


# --- words for counts and many outcomes -------------------------------------------------


def counted(n, total, noun=""):
    """Words for ``n`` of ``total`` things in a sentence, none and all included.

    ``counted(0, 12, "settings")`` -> "none of the 12 settings", ``counted(12, 12,
    "settings")`` -> "all 12 settings", ``counted(5, 12, "settings")`` -> "5 of the 12
    settings"; ``total == 0`` -> "no settings" (there is nothing to count).
    """
    n, total = int(n), int(total)
    if not 0 <= n <= total:
        raise ValueError(f"a count must lie in 0..total, got {n} of {total}")
    tail = f" {noun}" if noun else ""
    if total == 0:
        return f"no{tail}" if noun else "none"
    if n == 0:
        return f"none of the {total}{tail}"
    if n == total:
        return "both" + tail if total == 2 else f"all {total}{tail}"
    return f"{n} of the {total}{tail}"


# --- trends -----------------------------------------------------------------------------


def ranks(values):
    """Ranks 1..n of ``values``, ties sharing their average rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    r = np.empty(len(values))
    r[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tied = values == v
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(x, y):
    """Spearman's rank correlation of ``x`` and ``y`` (NaN when either is constant)."""
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


class Trend(NamedTuple):
    """A rank trend (see ``rank_trend``): ``rho``, its permutation ``p`` and
    ``outcome``: ``"rises"``, ``"falls"`` or ``"none"``."""

    rho: float
    p: float
    outcome: str


def rank_trend(x, y, alpha=0.05, permutations=5000, seed=0):
    """Does ``y`` rise or fall with ``x``? Spearman's rho within groups, tested.

    ``x``: the setting (e.g. the learning rates), ``(L,)``; ``y``: ``(L,)`` or ``(L,
    G)``, one column per group (an initial scale, an input scaling, a seed); NaNs are
    left out of their group. ``rho`` is the mean over the groups of Spearman's rho of
    ``y`` against ``x``; ``p`` the two-sided share of ``permutations`` random
    reorderings of ``y`` within each group whose mean rho is at least as far from 0
    (fixed ``seed``: the same answer every build). ``outcome`` is ``"falls"`` (rho < 0)
    or ``"rises"`` (rho > 0) when ``p < alpha``, else ``"none"``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    if len(x) != len(y):
        raise ValueError(f"one row of y per x: {len(x)} x, {len(y)} rows")
    groups = []
    for g in y.T:
        ok = np.isfinite(g)
        if ok.sum() >= 3 and np.ptp(g[ok]) > 0:
            groups.append((ranks(x[ok]), ranks(g[ok])))
    if not groups:
        return Trend(float("nan"), 1.0, "none")

    def mean_rho(pairs):
        return float(np.mean([np.corrcoef(rx, ry)[0, 1] for rx, ry in pairs]))

    rho = mean_rho(groups)
    rng = np.random.default_rng(seed)
    extreme = sum(
        abs(mean_rho([(rx, rng.permutation(ry)) for rx, ry in groups])) >= abs(rho) - 1e-12
        for _ in range(permutations)
    )
    p = (extreme + 1) / (permutations + 1)
    outcome = "none" if p >= alpha else ("falls" if rho < 0 else "rises")
    return Trend(rho, float(p), outcome)


# --- censored results and lengths ---------------------------------------------------------


class Reach(NamedTuple):
    """When a run first reached a target: ``step``, or ``None`` when it did not within
    its ``horizon`` steps (censored: never reported as a number)."""

    step: int | None
    horizon: int

    @property
    def censored(self):
        return self.step is None

    def __str__(self):
        if self.censored:
            return f"not reached in {self.horizon:,} steps"
        return f"{self.step:,}"


def first_reach(step, curve, target):
    """The first logged ``step`` at which ``curve`` (one value per step; NaN where not
    measured) is at least ``target``, as a ``Reach`` over the last logged step."""
    step, curve = np.asarray(step), np.asarray(curve, dtype=float)
    if step.shape != curve.shape:
        raise ValueError(f"one value per step: {step.shape} steps, {curve.shape} values")
    hit = np.flatnonzero(np.nan_to_num(curve, nan=-np.inf) >= target)
    return Reach(int(step[hit[0]]) if len(hit) else None, int(step[-1]))


def speedup(reference, other):
    """How many times fewer steps ``other`` needed than ``reference`` (both ``Reach``);
    ``None`` when either is censored: a ratio with a censored run in it is unknown."""
    if reference.censored or other.censored or other.step == 0:
        return None
    return reference.step / other.step


def sooner(a, b):
    """Outcome of "does ``a`` reach the target sooner than ``b``?", seed by seed.

    ``a, b``: one ``Reach`` per seed, same seeds in the same order. A censored run
    counts as reaching one step after its horizon, a lower bound on when it would have:
    that can only understate how much sooner the other side is. So ``"sooner"`` needs
    every run of ``a`` to reach the target and ``paired`` to find ``a`` clearly below
    ``b``; ``"later"`` is the same with the sides swapped; ``"level"`` otherwise.
    """

    def steps(reaches):
        return [r.horizon + 1 if r.censored else r.step for r in reaches]

    if len(a) != len(b):
        raise ValueError(f"one Reach per seed on both sides, got {len(a)} and {len(b)}")
    p = paired(steps(a), steps(b))
    if p.below and not any(r.censored for r in a):
        return "sooner"
    if p.above and not any(r.censored for r in b):
        return "later"
    return "level"


def reaches_text(reaches):
    """Words for when the seeds' runs reached a target: ``'420 ± 35'`` (mean ± sd of the
    steps) when all did, ``'not reached in 800 steps'`` when none did, and ``'2 of 3
    seeds: 420 ± 35; one not reached in 800 steps'`` in between. A censored run is never
    averaged in as a number."""
    done = [r.step for r in reaches if not r.censored]
    missed = [r for r in reaches if r.censored]
    horizon = max(r.horizon for r in reaches)
    if not done:
        return f"not reached in {horizon:,} steps"
    mean = float(np.mean(done))
    sd = float(np.std(done, ddof=1)) if len(done) > 1 else 0.0
    text = f"{mean:,.0f} ± {sd:,.0f}" if len(done) > 1 else f"{done[0]:,}"
    if not missed:
        return text
    return (
        f"{len(done)} of {len(reaches)} seeds: {text}; "
        f"{len(missed)} not reached in {horizon:,} steps"
    )


def length_dependent(at_end, at_half):
    """The keys of ``at_end`` (verdicts at the end of the runs) whose verdict differs in
    ``at_half`` (the same verdicts from the same runs' logs at half the length): the
    verdicts that depend on the length of the run, which the ledger calls not tested."""
    missing = sorted(set(at_end) - set(at_half))
    if missing:
        raise KeyError(f"no verdict at half the length for {missing}")
    return [key for key in at_end if at_half[key] != at_end[key]]


def plateaued(step, curve, tolerance=0.003, tail=0.25):
    """Has ``curve`` flattened: did it gain less than ``tolerance`` over the last
    ``tail`` of the run (``tail_gain``)? False with fewer than two measured points."""
    gain = tail_gain(step, curve, tail)
    return gain is not None and bool(gain < tolerance)


def tail_gain(step, curve, tail=0.25):
    """What ``curve`` gained over the last ``tail`` of the run, or None with fewer than
    two measured points. ``step``: the logged steps; ``curve``: the values there (NaN
    where not measured are skipped). The value at the start of the tail is interpolated
    between the logs around it. With at least four points in the tail (that start and
    the logs after it), the gain is the median slope over all their pairs (the
    Theil-Sen line) times the tail's length: a run that fluctuates by more than the
    gain that matters from one evaluation to the next (SGD at a constant rate does)
    would otherwise be judged by one noisy evaluation at each end, and a least-squares
    line still leans on them; with fewer points, it is the end minus the start."""
    step, curve = np.asarray(step, dtype=float), np.asarray(curve, dtype=float)
    ok = np.isfinite(curve)
    if ok.sum() < 2:
        return None
    step, curve = step[ok], curve[ok]
    start = step[-1] - tail * (step[-1] - step[0])
    after = step > start
    x = np.concatenate([[start], step[after]])
    y = np.concatenate([[np.interp(start, step, curve)], curve[after]])
    if len(x) < 4:
        return float(y[-1] - y[0])
    i, j = np.triu_indices(len(x), k=1)
    return float(np.median((y[j] - y[i]) / (x[j] - x[i])) * (x[-1] - x[0]))
