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


# --- Chapter 3: the computational graph of the BN forward pass --------------------------

# node -> (x, y, label); the paper's graph for one feature: x feeds mu_B, sigma_B^2 and x_hat
BN_GRAPH_NODES = {
    "x": (0.0, 0.0, r"$x_i$"),
    "mu": (2.8, 1.7, r"$\mu_\mathcal{B}$"),
    "var": (5.0, -1.7, r"$\sigma_\mathcal{B}^2$"),
    "xhat": (7.6, 0.0, r"$\hat{x}_i$"),
    "y": (10.0, 0.0, r"$y_i$"),
    "loss": (12.0, 0.0, r"$\ell$"),
    "gamma": (10.0, 1.7, r"$\gamma$"),
    "beta": (10.0, -1.7, r"$\beta$"),
}

# (from, to, local derivative d(to)/d(from), label position along the edge, label offset)
BN_GRAPH_EDGES = [
    ("x", "mu", r"$\frac{1}{m}$", 0.45, (-0.3, 0.1)),
    ("x", "var", r"$\frac{2(x_i-\mu_\mathcal{B})}{m}$", 0.4, (-0.4, -0.65)),
    ("mu", "var", r"$\frac{-2\sum_j(x_j-\mu_\mathcal{B})}{m}$", 0.72, (-1.25, -0.05)),
    ("x", "xhat", r"$\frac{1}{\sqrt{\sigma_\mathcal{B}^2+\epsilon}}$", 0.25, (0.0, 0.05)),
    ("mu", "xhat", r"$\frac{-1}{\sqrt{\sigma_\mathcal{B}^2+\epsilon}}$", 0.55, (0.3, 0.15)),
    ("var", "xhat",
     r"$-\frac{1}{2}(x_i-\mu_\mathcal{B})(\sigma_\mathcal{B}^2+\epsilon)^{-3/2}$",
     0.55, (1.4, -0.55)),
    ("xhat", "y", r"$\gamma$", 0.5, (0.0, 0.05)),
    ("gamma", "y", r"$\hat{x}_i$", 0.5, (0.35, -0.25)),
    ("beta", "y", r"$1$", 0.5, (0.3, -0.2)),
    ("y", "loss", "", 0.5, (0.0, 0.0)),
]


def bn_graph(ax=None):
    """Draw the computational graph of BN for one feature, edges labelled with local derivatives.

    Backpropagation walks it from right to left: the gradient at a node is the sum, over
    its outgoing edges, of the downstream gradient times the edge's local derivative.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.2))
    for src, dst, label, t, (dx, dy) in BN_GRAPH_EDGES:
        (x0, y0, _), (x1, y1, _) = BN_GRAPH_NODES[src], BN_GRAPH_NODES[dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "-|>", "color": "#333333", "lw": 1.2,
                                "shrinkA": 17, "shrinkB": 17})
        if label:
            ax.text(x0 + t * (x1 - x0) + dx, y0 + t * (y1 - y0) + dy, label, fontsize=11,
                    ha="center", va="bottom", color=COLORS["baseline"],
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
    for name, (x, y, label) in BN_GRAPH_NODES.items():
        param = name in ("gamma", "beta")
        ax.text(x, y, label, fontsize=14, ha="center", va="center",
                bbox={"boxstyle": "round,pad=0.45", "ec": COLORS["bn"], "lw": 1.5,
                      "fc": "#e8f1f8" if not param else "white",
                      "ls": "--" if param else "-"})
    ax.annotate("backward pass: gradients flow against the arrows", xy=(0.5, -2.55),
                xytext=(6.2, -2.55), va="center", ha="left", fontsize=9, color=COLORS["grey"],
                arrowprops={"arrowstyle": "-|>", "color": COLORS["grey"], "lw": 1})
    ax.set_xlim(-0.8, 12.8)
    ax.set_ylim(-2.9, 2.5)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def compare_loss_curves(curves, names, colors=("bn", "other")):
    """Two training-loss curves on top of each other (left) and their absolute difference (right).

    ``curves``: dict name -> per-step losses ``(steps,)``; ``names``: the two to compare,
    the first drawn solid and the second dashed on top of it, as running means over
    1/60 of the run; the differences are per step.
    """
    a, b = (np.asarray(curves[n]) for n in names)
    step = np.arange(1, len(a) + 1)
    window = max(1, len(a) // 60)  # per-step losses are noisy: show running means
    kernel = np.ones(window) / window
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for curve, name, color, style in ((a, names[0], colors[0], "-"), (b, names[1], colors[1], "--")):
        ax1.plot(step[window - 1:], np.convolve(curve, kernel, mode="valid"), color=COLORS[color],
                 lw=2.2 if style == "-" else 1.2, ls=style, label=name)
    ax1.set(xlabel="training step", ylabel=f"training loss (mean of {window} steps)",
            yscale="log")
    ax1.legend()
    diff = np.abs(a - b)
    # exact zeros cannot be drawn on a log scale: show the others as points, count the zeros
    ax2.semilogy(step[diff > 0], diff[diff > 0], ".", ms=2.5, color=COLORS["grey"])
    ax2.set(xlabel="training step", ylabel="|loss difference|",
            title=f"equal to the last bit at {np.mean(diff == 0):.0%} of the steps")
    ax2.title.set_fontsize(9)
    fig.tight_layout()
    return fig
