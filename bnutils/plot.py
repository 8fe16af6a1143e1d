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


# --- Chapter 6: the scaled-down section 4.2 experiment ----------------------------------

# configuration -> (colour, line style) for the accuracy curves of notebook 06
FIGURE3_STYLES = {
    "baseline": (COLORS["baseline"], "-"),
    "baseline_x5": (COLORS["baseline"], "--"),
    "baseline_sigmoid": (COLORS["baseline"], ":"),
    "bn": (COLORS["bn"], "-"),
    "bn_x5": (COLORS["bn"], "--"),
    "bn_x30": (COLORS["bn"], "-."),
    "bn_x5_sigmoid": (COLORS["other"], "--"),
}


def figure3_curves(results, reference="baseline", zoom=0.1):
    """Test accuracy against training steps, ReLU networks left, sigmoid networks right.

    ``results``: what ``bnutils.experiments.figure3`` returns. A cross marks where a
    diverged run was stopped; the dotted grey line is the best accuracy of ``reference``.
    An inset on the left enlarges the top ``zoom`` of the accuracy axis (below the best
    of all runs), where the trained ReLU networks differ.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    target = results[reference]["acc"].max()
    top = max(r["acc"].max() for r in results.values())
    inset = axes[0].inset_axes([0.4, 0.3, 0.57, 0.4])
    for name, r in results.items():
        sigmoid = "sigmoid" in name
        color, style = FIGURE3_STYLES.get(name, (COLORS["grey"], "-"))
        targets = [axes[1]] if sigmoid else [axes[0], inset]
        for ax in targets:
            ax.plot(r["step"], r["acc"], color=color, ls=style, label=f"{name} (lr {r['lr']:g})")
            if r["diverged"]:
                ax.plot(r["step"][-1], r["acc"][-1], "x", color=color, ms=9, mew=2)
    for ax in (*axes, inset):
        ax.axhline(target, color=COLORS["grey"], ls=":", lw=1, label=f"best {reference}")
    inset.set(ylim=(top - zoom, top + 0.01), xlim=(0, None))
    inset.tick_params(labelsize=7)
    for ax, title in zip(axes, ("ReLU networks", "sigmoid networks"), strict=True):
        ax.set(title=title, xlabel="training step", ylim=(0, 1))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
    axes[0].set_ylabel("test accuracy")
    fig.tight_layout()
    return fig
