"""The look of every figure (``COLORS``, ``use_style``) and the plots that several
chapters share: percentile bands, image grids, Markdown tables, curves of several runs
side by side (``panels``)."""

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

# Colour-blind-safe pairs (Okabe-Ito) used for "without BN" vs "with BN" everywhere.
COLORS = {"baseline": "#D55E00", "bn": "#0072B2", "other": "#009E73", "grey": "#7f7f7f"}


def use_style():
    """A readable default: white figure background (legible in light and dark themes)."""
    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": 110,
        "figure.facecolor": "white",
        "axes.facecolor": "white",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "font.size": 10,
    })


def percentile_bands(ax, step, pct, color, label=None):
    """Plot the 50th percentile as a line and the 15th-85th as a band.

    ``pct: (n_steps, 3)`` holds the 15th, 50th and 85th percentiles at each ``step``
    (the layout of the paper's Figure 1 b, c).
    """
    pct = np.asarray(pct)
    ax.fill_between(step, pct[:, 0], pct[:, 2], color=color, alpha=0.25, lw=0)
    ax.plot(step, pct[:, 1], color=color, label=label)
    for k in (0, 2):
        ax.plot(step, pct[:, k], color=color, lw=0.6, alpha=0.7)
    return ax


def show_images(images, labels=None, ncols=8, size=1.0):
    """A grid of ``(N, 28, 28)`` grey images with their labels as titles."""
    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray_r")
            if labels is not None:
                ax.set_title(str(int(labels[i])), fontsize=9)
    fig.tight_layout()
    return fig


def markdown_table(header, rows):
    """A Markdown table (rendered in Jupyter and in the book) from already formatted cells."""
    from IPython.display import Markdown

    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return Markdown("\n".join(lines))


# --- Chapters 8 and 9: curves of several runs side by side --------------------------


def panels(x, series, titles, xlabel="step", ylabels=None, logy=(), logx=False, width=3.4):
    """One panel per entry of ``series``; each entry maps a label to ``(y, color)``.

    ``x``: the x values shared by all panels, or a list with one per panel. ``y``: one
    value per x, or ``(len(x), n_seeds)`` values, drawn as the mean over the seeds with a
    band of ± one standard deviation; on a log axis, the geometric mean with a band of
    ×/÷ one geometric standard deviation (mean ± sd of the logarithms), since a band of
    ± sd reaches below zero there. A label in parentheses, ``"(BN)"``, is drawn
    dashed. ``logy``: indices of the panels with a log y axis; ``logx``: a base-2 x axis
    with markers. Returns the figure.
    """
    fig, axes = plt.subplots(1, len(series), figsize=(width * len(series), 3.2), squeeze=False)
    for k, (ax, panel) in enumerate(zip(axes[0], series, strict=True)):
        for label, (y, color) in panel.items():
            xs = x[k] if isinstance(x, list) else x
            style = "--" if label.startswith("(") else "-"
            y = np.asarray(y, dtype=float)
            if y.ndim == 2:  # seeds: mean and a band of one standard deviation
                y, low, high = _mean_band(y, log=k in logy)
                ax.fill_between(xs, low, high, color=color, alpha=0.2, lw=0)
            ax.plot(xs, y, style, color=color, label=label.strip("()"), marker="o" if logx else None,
                    ms=3)
        ax.set_title(titles[k], fontsize=10)
        ax.set_xlabel(xlabel)
        if ylabels:
            ax.set_ylabel(ylabels[k])
        if k in logy:
            ax.set_yscale("log")
        if logx:
            ax.set_xscale("log", base=2)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _mean_band(y, log=False):
    """``(centre, low, high)`` over the seeds (axis 1) of ``y``: mean ± sd, or on a log
    axis the same for ``log(y)``, mapped back; an x where a seed is not positive has
    no point there (NaN), as a log axis cannot show it."""
    if log:
        positive = np.all(y > 0, axis=1, keepdims=True)
        logs = np.log(np.where(positive, y, 1.0))
        return tuple(np.where(positive[:, 0], np.exp(v), np.nan) for v in _mean_band(logs))
    sd = y.std(1, ddof=1) if y.shape[1] > 1 else np.zeros(len(y))
    centre = y.mean(1)
    return centre, centre - sd, centre + sd


def smooth(values, window):
    """Moving average of a 1-d array over ``window`` points (valid part only)."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")
