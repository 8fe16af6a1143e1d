"""Plotting helpers: the look of every figure, and plots used by several chapters."""

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


# --- chapter 5: the paper's Figure 1 -------------------------------------------------


def figure1_panels(result, seeds=None):
    """The three panels of the paper's Figure 1 from a ``bnutils.experiments.figure1`` result.

    (a) test accuracy against steps for both nets, (b) the 15th/50th/85th percentiles of
    one sigmoid's input without BN, (c) the same with BN. ``seeds``: optional list of
    further results whose accuracy curves are drawn as a min-max band over all seeds.
    """
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    step = result["step"]
    for net, label in (("baseline", "Without BN"), ("bn", "With BN")):
        if seeds:
            accs = np.stack([r[f"acc_{net}"] for r in [result, *seeds]])
            axes[0].fill_between(step, accs.min(0), accs.max(0), color=COLORS[net],
                                 alpha=0.25, lw=0)
        axes[0].plot(step, result[f"acc_{net}"], color=COLORS[net], label=label)
    axes[0].set(xlabel="training step", ylabel="test accuracy", title="(a)",
                ylim=(max(0.0, min(result["acc_baseline"][-1], result["acc_bn"][-1]) - 0.2), 1))
    axes[0].legend(loc="lower right")
    lims = _common_ylim([result["pct_baseline"], result["pct_bn"]])
    for ax, net, title in ((axes[1], "baseline", "(b) without BN"), (axes[2], "bn", "(c) with BN")):
        percentile_bands(ax, step, result[f"pct_{net}"], COLORS[net])
        ax.set(xlabel="training step", ylabel="input to the sigmoid", title=title, ylim=lims)
    fig.tight_layout()
    return fig


def sigmoid_bands(result, nets=("baseline", "bn")):
    """Percentile bands of every recorded sigmoid of the last hidden layer, one row per net.

    Reads ``pct_units_<net>: (n_logged, units, 3)``; all panels share one y-axis so the
    drifts can be compared.
    """
    units = result[f"pct_units_{nets[0]}"].shape[1]
    fig, axes = plt.subplots(len(nets), units, figsize=(1.45 * units, 1.7 * len(nets)),
                             sharex=True, sharey=True, squeeze=False)
    lims = _common_ylim([result[f"pct_units_{net}"] for net in nets])
    for row, net in zip(axes, nets, strict=True):
        for k, ax in enumerate(row):
            percentile_bands(ax, result["step"], result[f"pct_units_{net}"][:, k], COLORS[net])
            ax.set(ylim=lims, title=f"unit {k}" if net == nets[0] else None)
            ax.tick_params(labelsize=7)
            ax.xaxis.get_offset_text().set_fontsize(7)
        row[0].set_ylabel("without BN" if net == "baseline" else "with BN")
    fig.tight_layout()
    return fig


def _common_ylim(arrays, margin=0.05):
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    pad = margin * (hi - lo)
    return lo - pad, hi + pad
