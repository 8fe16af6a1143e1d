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


def markdown_table(header, rows):
    """A Markdown table (rendered in Jupyter and in the book) from already formatted cells."""
    from IPython.display import Markdown

    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return Markdown("\n".join(lines))


# --- Chapter 1: whitening and internal covariate shift --------------------------------


def _path_steps(steps, dense=12, points=30):
    """The steps of a long path worth drawing: every one of the first ``dense``, then
    about ``points`` pairs of consecutive steps ``(k, k + 1)``, spaced evenly in log(k)
    (a path that zigzags shows both sides of its zigzag), and the last."""
    if steps <= dense:
        return np.arange(steps + 1)
    late = np.geomspace(dense, steps - 1, points).round().astype(int)
    return np.unique(np.concatenate([np.arange(dense), late, late + 1, [steps]]))


def _gd_plane(x, t, path):
    """Coordinates and loss of the plane a gradient-descent path is drawn in.

    For centred inputs the bias decouples from the weights: the plane is ``(w1, w2)``
    and the loss there is ``loss(w, b*)``. Otherwise the bias couples to the weights and
    the path leaves that plane; it is drawn in the plane through the minimum spanned by
    the steepest and the flattest eigenvectors of the Hessian of ``(w1, w2, b)``. Each
    eigen-component of gradient descent on a quadratic evolves on its own, so the path's
    projection there is gradient descent on the loss of that plane, which the contours
    show. Returns ``(to_plane, loss_at, star, labels)``: parameters ``(..., 3)`` -> plane
    coordinates ``(..., 2)``, plane coordinates -> excess loss, the minimum's
    coordinates, axis labels.
    """
    X = np.column_stack([x, np.ones(len(x))])
    H = X.T @ X / len(X)
    theta_star = np.linalg.solve(H, X.T @ t / len(X))
    if np.allclose(x.mean(0), 0, atol=1e-9 * np.abs(x).max()):
        basis, labels = np.eye(3)[:, :2], ("$w_1$", "$w_2$")
        origin = np.array([0.0, 0.0, theta_star[2]])
    else:
        lam, U = np.linalg.eigh(H)
        basis = U[:, [2, 0]] * np.sign(U[:, [2, 0]].sum(0))
        labels = ("along the steepest direction", "along the flattest direction")
        origin = theta_star - basis @ (basis.T @ theta_star)

    def to_plane(theta):
        return (np.asarray(theta) - origin) @ basis

    def loss_at(c1, c2):
        d = origin[:, None] + basis @ np.stack([c1.ravel(), c2.ravel()]) - theta_star[:, None]
        return 0.5 * np.einsum("ik,ij,jk->k", d, H, d).reshape(c1.shape)

    return to_plane, loss_at, to_plane(theta_star), labels


def gd_contours(runs, levels=12, span=1.4):
    """One panel per run: loss contours and the path of gradient descent from 0.

    ``runs``: dicts with ``title``, ``x (N, 2)``, ``t (N,)``, ``path (steps + 1, 3)``
    (w1, w2, b), ``kappa`` and ``steps``. The contours are those of the loss the path
    descends (``_gd_plane``: the plane ``(w1, w2)`` for centred inputs, the steepest and
    flattest directions otherwise), at levels spaced evenly in
    ``log(loss - min + floor)``. A long path is drawn at ``_path_steps``: every early
    step, then log-spaced ones, with a few step numbers written beside it.
    """
    fig, axes = plt.subplots(1, len(runs), figsize=(2.55 * len(runs), 3.3))
    for ax, run in zip(np.atleast_1d(axes), runs, strict=True):
        to_plane, loss_at, star, labels = _gd_plane(run["x"], run["t"], run["path"])
        path = to_plane(run["path"])
        r = span * np.abs(path - star).max()
        g1, g2 = np.meshgrid(np.linspace(star[0] - r, star[0] + r, 241),
                             np.linspace(star[1] - r, star[1] + r, 241))
        excess = loss_at(g1, g2)
        floor = 1e-7 * excess.max()
        ax.contour(g1, g2, np.log(excess + floor), levels=levels, cmap="Greys",
                   linewidths=0.7)
        shown = _path_steps(len(path) - 1)
        early = shown[shown < 12]
        ax.plot(*path[early].T, ".-", color=COLORS["baseline"], ms=3, lw=0.7)
        ax.plot(*path[shown[shown >= 12]].T, ".", color=COLORS["baseline"], ms=3)
        if len(path) > 200:
            for k in (1, 100, 1000, len(path) - 1):
                ax.annotate(f"{k:,}", path[k], xytext=(5, -3 if k == len(path) - 1 else 3),
                            textcoords="offset points", fontsize=8,
                            color=COLORS["baseline"])
        ax.plot(*star, "*", color=COLORS["bn"], ms=11, zorder=3)
        ax.set_title(f"{run['title']}\nκ = {run['kappa']:.3g}, steps: {run['steps']:,}",
                     fontsize=9)
        ax.set_xlabel(labels[0], fontsize=8 if len(labels[0]) > 6 else 10)
        ax.set_ylabel(labels[1], fontsize=8 if len(labels[1]) > 6 else 10)
        ax.set_aspect("equal")
        ax.set(xlim=(star[0] - r, star[0] + r), ylim=(star[1] - r, star[1] + r))
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig


def ics_bands(runs, units, split=None):
    """Percentile bands (15th, 50th, 85th) of a few units' inputs over training, one row
    per network, on one shared scale (the units of the sigmoid's input).

    ``runs``: label -> dict with ``step (n_logs,)`` and ``pct (n_logs, n_units, 3)``;
    ``units``: one column per entry (indices into n_units); ``split``: a step to mark
    with a dotted line (the end of the early phase).
    """
    colors = [COLORS["baseline"], COLORS["bn"], COLORS["other"]]
    fig, axes = plt.subplots(len(runs), len(units), figsize=(2.9 * len(units), 2.1 * len(runs)),
                             sharex=True, sharey=True, squeeze=False)
    for row, (label, run), color in zip(axes, runs.items(), colors, strict=False):
        for ax, k in zip(row, units, strict=True):
            percentile_bands(ax, run["step"], run["pct"][:, k], color)
            if split is not None:
                ax.axvline(split, color=COLORS["grey"], ls=":", lw=1)
            ax.set_title(f"{label}, unit {k}", fontsize=9)
        row[0].set_ylabel("input to the sigmoid")
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    fig.tight_layout()
    return fig


def cost_curve(d, seconds):
    """Log-log time against the number of features ``d``; ``seconds``: label -> times."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    colors = iter([COLORS["baseline"], COLORS["other"], COLORS["grey"], COLORS["bn"]])
    for label, times in seconds.items():
        ax.loglog(d, times, "o-", color=next(colors), label=label, ms=4)
    ax.set_xticks(d, [str(v) for v in d])
    ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
    ax.set_xlabel("number of features d")
    ax.set_ylabel("seconds per call")
    ax.legend()
    fig.tight_layout()
    return fig


def bias_runs(step, runs):
    """Two panels, the bias ``b`` and the loss over training, one line per run.

    ``runs``: label -> dict with ``b`` and ``loss`` arrays (one value per step).
    """
    fig, (ax_b, ax_l) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    for (label, run), color, style in zip(runs.items(), [COLORS["baseline"], COLORS["bn"]],
                                          ["-", "--"], strict=False):
        ax_b.plot(step, run["b"], style, color=color, label=label)
        ax_l.plot(step, run["loss"], style, color=color, label=label)
    ax_b.set_ylabel("bias $b$")
    ax_l.set_ylabel("loss")
    for ax in (ax_b, ax_l):
        ax.set_xlabel("gradient step")
    ax_b.legend()
    fig.tight_layout()
    return fig


# --- Chapter 2: the Batch Normalizing Transform ----------------------------------------


def before_after_histograms(before, after, units, bins=40):
    """Histograms of a few units' values before and after BN, side by side.

    ``before, after: (N, D)``; ``units``: the feature indices to overlay.
    """
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.0))
    colors = [COLORS["baseline"], COLORS["bn"], COLORS["other"], COLORS["grey"]]
    titles = ("before BN: $x$", r"after BN: $\hat{x}$")
    for ax, values, title in zip(axes, (before, after), titles, strict=True):
        for k, color in zip(units, colors, strict=False):
            ax.hist(values[:, k], bins=bins, color=color, alpha=0.45, label=f"unit {k}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("value")
    axes[0].set_ylabel("count")
    axes[0].legend()
    fig.tight_layout()
    return fig


# --- Chapter 2: the problem before the cure, and diagrams of the transform --------------


def deep_activations(runs, layers=None, saturated=0.97):
    """Activations and gradients of a deep tanh network at several initial scales.

    ``runs``: title -> ``(acts, grads)``, each ``(n_layers, N, D)``: the outputs of every
    hidden nonlinearity over one batch, and the loss's gradient with respect to them.
    One panel per run: histograms of the outputs of the ``layers`` (default: every other
    one), darker for deeper, with the fraction beyond ``saturated`` per layer in the
    legend; a last panel: the standard deviation of the gradient per layer (log scale),
    one line per run.
    """
    n_layers = next(iter(runs.values()))[0].shape[0]
    layers = list(range(1, n_layers, 2)) if layers is None else layers
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(2.45 * (len(runs) + 1), 2.9))
    shades = plt.cm.viridis(np.linspace(0.85, 0.1, len(layers)))
    markers = iter("os^vD")
    for ax, (title, (acts, grads)), color in zip(axes, runs.items(),
                                                 [COLORS["baseline"], COLORS["other"],
                                                  COLORS["bn"], COLORS["grey"]],
                                                 strict=False):
        for k, shade in zip(layers, shades, strict=True):
            a = np.asarray(acts[k]).ravel()
            ax.hist(a, bins=np.linspace(-1, 1, 51), histtype="step", color=shade, lw=1.1,
                    density=True, label=f"layer {k + 1}")
        ax.set_yscale("log")
        ax.set_ylim(1e-2, 1e2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("tanh output", fontsize=9)
        ax.tick_params(labelsize=8)
        g = np.asarray(grads).reshape(len(grads), -1).std(1)
        axes[-1].semilogy(np.arange(1, len(g) + 1), g, marker=next(markers), ms=3,
                          color=color, label=title)
    axes[0].set_ylabel("density (log scale)", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(layers),
               fontsize=8, handlelength=1.5)
    axes[-1].set_xlabel("layer", fontsize=9)
    axes[-1].set_title("std of the gradient", fontsize=9)
    axes[-1].xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    axes[-1].tick_params(labelsize=8)
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _box(ax, x, y, text, w=1.5, h=0.7, fc="white", ec="#333333", ls="-", fontsize=11):
    ax.add_patch(mpl.patches.FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                                            boxstyle="round,pad=0.06", fc=fc, ec=ec, lw=1.3,
                                            ls=ls))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text="", color="#333333", fontsize=11, offset=0.2):
    ax.annotate("", xy=end, xytext=start,
                arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.2})
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + offset, text,
                ha="center", va="bottom", fontsize=fontsize)


def bn_placement():
    """Where BN sits in a fully connected layer (section 3.2 of the paper):
    ``u -> Linear (W, no bias) -> x -> BN (mu_B, sigma_B^2; gamma, beta) -> y -> g -> z``."""
    fig, ax = plt.subplots(figsize=(7.6, 1.9))
    _box(ax, 1.5, 0, "linear\n$x = Wu$\n(no bias)", w=1.7, h=1.05)
    _box(ax, 4.9, 0, "BN\n$\\hat{x} = (x - \\mu_\\mathcal{B}) / \\sqrt{\\sigma_\\mathcal{B}^2"
         " + \\epsilon}$\n$y = \\gamma\\hat{x} + \\beta$", w=3.3, h=1.05, fc="#e8f1f8",
         ec=COLORS["bn"])
    _box(ax, 8.2, 0, "nonlinearity\n$z = g(y)$", w=1.8, h=1.05)
    _arrow(ax, (-0.5, 0), (0.6, 0), "$u$")
    _arrow(ax, (2.35, 0), (3.2, 0), "$x$")
    _arrow(ax, (6.6, 0), (7.3, 0), "$y$")
    _arrow(ax, (9.1, 0), (10.0, 0), "$z$")
    ax.text(4.9, -0.85, "$\\mu_\\mathcal{B}, \\sigma_\\mathcal{B}^2$: of this mini-batch, "
            "per feature;  $\\gamma, \\beta$: learned, per feature", ha="center",
            va="top", fontsize=10, color=COLORS["grey"])
    ax.set_xlim(-0.6, 10.1)
    ax.set_ylim(-1.1, 0.75)
    ax.axis("off")
    fig.tight_layout()
    return fig


def bn_axes(n=6, d=5, c=4, hw=(3, 3), feature=1):
    """Which values one mean and one variance are taken over: ``(N, D)`` (a column: one
    feature over the batch) and ``(N, C, H, W)`` (one channel over the batch and every
    position), one highlighted statistic each."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.2, 3.3),
                                   gridspec_kw={"width_ratios": [1, 1.6]})
    hl, plain = "#9ecae1", "#f2f2f2"
    for i in range(n):
        for k in range(d):
            ax1.add_patch(mpl.patches.Rectangle((k, n - 1 - i), 0.92, 0.92, ec="#888888",
                                                fc=hl if k == feature else plain, lw=0.6))
    ax1.set(xlim=(-0.9, d + 0.2), ylim=(-1.6, n + 0.9), title="(a) $x$: (N, D)")
    ax1.text(d / 2, n + 0.25, "D features →", ha="center", fontsize=10)
    ax1.text(-0.35, n / 2, "N examples", rotation=90, va="center", ha="center", fontsize=10)
    ax1.text(feature + 0.46, -0.6, "one $\\mu_\\mathcal{B}$, $\\sigma_\\mathcal{B}^2$\n"
             "per feature: over N", ha="center", va="top", fontsize=9)
    h, w = hw
    cell = 1.0 / max(h, w) * 0.8
    for i in range(n):
        for ch in range(c):
            x0, y0 = ch * 1.15, (n - 1 - i) * 1.0
            for r in range(h):
                for q in range(w):
                    ax2.add_patch(mpl.patches.Rectangle(
                        (x0 + q * cell, y0 + r * cell), cell * 0.95, cell * 0.95, lw=0.4,
                        ec="#888888", fc=hl if ch == feature else plain))
    ax2.set(xlim=(-0.9, c * 1.15 + 0.2), ylim=(-1.6, n + 0.9),
            title="(b) $x$: (N, C, H, W)")
    ax2.text(c * 1.15 / 2, n + 0.25, "C channels →, each an H×W map", ha="center",
             fontsize=10)
    ax2.text(-0.35, n / 2, "N examples", rotation=90, va="center", ha="center",
             fontsize=10)
    ax2.text(feature * 1.15 + 0.4, -0.6, "one $\\mu_\\mathcal{B}$, $\\sigma_\\mathcal{B}^2$"
             " per channel:\nover N, H and W ($m' = N\\cdot H\\cdot W$ values)",
             ha="center", va="top", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_aspect("equal")
        ax.axis("off")
        ax.title.set_fontsize(10)
    fig.tight_layout()
    return fig


# --- Chapter 3: the computational graph of the BN forward pass --------------------------

# The graph of BN for one feature at the level of vectors: x, x_hat and y hold the m values
# of the batch, mu_B, sigma_B^2, gamma and beta one number each. A sum node ("Σ") turns
# the m values into one, a broadcast node ("⇉") hands one number to all m entries.
# node -> (x, y, label, kind); kind: "vector", "scalar", "param", "sum", "broadcast", "loss"
BN_GRAPH_NODES = {
    "x": (0.0, 0.0, r"$x$", "vector"),
    "sum_mu": (1.7, 2.2, "Σ", "sum"),
    "mu": (3.4, 2.2, r"$\mu_\mathcal{B}$", "scalar"),
    "bc_mu": (6.2, 2.2, "⇉", "broadcast"),
    "sum_var": (2.4, -2.2, "Σ", "sum"),
    "var": (4.4, -2.2, r"$\sigma_\mathcal{B}^2$", "scalar"),
    "bc_var": (6.2, -2.2, "⇉", "broadcast"),
    "xhat": (8.2, 0.0, r"$\hat{x}$", "vector"),
    "gamma": (10.2, 2.2, r"$\gamma$", "param"),
    "bc_gamma": (11.1, 1.1, "⇉", "broadcast"),
    "beta": (10.2, -2.2, r"$\beta$", "param"),
    "bc_beta": (11.1, -1.1, "⇉", "broadcast"),
    "y": (12.0, 0.0, r"$y$", "vector"),
    "loss": (13.6, 0.0, r"$\ell$", "loss"),
}

# (from, to, local derivative d(to)/d(from) for entry i, label position along the edge,
# label offset); the edges out of sum and broadcast nodes carry no derivative of their own
BN_GRAPH_EDGES = [
    ("x", "sum_mu", r"$1/m$", 0.5, (-0.5, -0.1)),
    ("sum_mu", "mu", "", 0.5, (0, 0)),
    ("x", "sum_var", r"$2(x_i-\mu_\mathcal{B})/m$", 0.5, (-1.45, -0.55)),
    ("sum_var", "var", "", 0.5, (0, 0)),
    ("mu", "var", r"$-\frac{2}{m}\sum_i(x_i-\mu_\mathcal{B})$", 0.3, (1.55, -0.1)),
    ("x", "xhat", r"$1/\sqrt{\sigma_\mathcal{B}^2+\epsilon}$", 0.28, (0.0, 0.08)),
    ("mu", "bc_mu", "", 0.5, (0, 0)),
    ("bc_mu", "xhat", r"$-1/\sqrt{\sigma_\mathcal{B}^2+\epsilon}$", 0.5, (1.35, -0.05)),
    ("var", "bc_var", "", 0.5, (0, 0)),
    ("bc_var", "xhat", r"$-\hat{x}_i/(2(\sigma_\mathcal{B}^2+\epsilon))$", 0.5, (1.5, -0.4)),
    ("xhat", "y", r"$\gamma$", 0.5, (0.0, 0.08)),
    ("gamma", "bc_gamma", "", 0.5, (0, 0)),
    ("bc_gamma", "y", r"$\hat{x}_i$", 0.5, (0.45, 0.0)),
    ("beta", "bc_beta", "", 0.5, (0, 0)),
    ("bc_beta", "y", r"$1$", 0.5, (0.35, -0.35)),
    ("y", "loss", "", 0.5, (0, 0)),
]

GRAPH_FONT = 12  # points: at the book's column width, labels of about 15 pixels


def graph_paths(nodes=BN_GRAPH_NODES, edges=BN_GRAPH_EDGES):
    """``{node: number of outgoing edges}`` for the vector and scalar nodes, counting an
    edge into a sum or broadcast node as one path through it: the number of terms in
    that node's gradient."""
    return {n: sum(1 for e in edges if e[0] == n) for n, (*_, kind) in nodes.items()
            if kind in ("vector", "scalar", "param")}


def bn_graph(ax=None):
    """Draw the computational graph of BN for one feature at the level of vectors.

    Boxes are vectors of the m values of the batch (solid, filled), single numbers
    (solid, white) and learned parameters (dashed); circles are sums ("Σ", m values to
    one) and broadcasts ("⇉", one value to m). Edges carry the local derivative of
    their head with respect to their tail, for entry i. Backpropagation walks the graph
    from right to left: the gradient at a node is the sum, over its outgoing edges, of
    the downstream gradient times the local derivative, and a sum node becomes a
    broadcast and a broadcast a sum.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(8.6, 4.3))
    for src, dst, label, t, (dx, dy) in BN_GRAPH_EDGES:
        (x0, y0, _, k0), (x1, y1, _, k1) = BN_GRAPH_NODES[src], BN_GRAPH_NODES[dst]
        shrink = {"sum": 11, "broadcast": 11}
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "-|>", "color": "#333333", "lw": 1.2,
                                "shrinkA": shrink.get(k0, 15), "shrinkB": shrink.get(k1, 15)})
        if label:
            ax.text(x0 + t * (x1 - x0) + dx, y0 + t * (y1 - y0) + dy, label,
                    fontsize=GRAPH_FONT, ha="center", va="bottom", color=COLORS["baseline"],
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                          "alpha": 0.9})
    for x, y, label, kind in BN_GRAPH_NODES.values():
        if kind in ("sum", "broadcast"):
            ax.text(x, y, label, fontsize=GRAPH_FONT + 1, ha="center", va="center",
                    bbox={"boxstyle": "circle,pad=0.25", "ec": COLORS["grey"], "fc": "white",
                          "lw": 1.2})
            continue
        ax.text(x, y, label, fontsize=GRAPH_FONT + 3, ha="center", va="center",
                bbox={"boxstyle": "round,pad=0.4", "ec": COLORS["bn"], "lw": 1.5,
                      "fc": "#e8f1f8" if kind == "vector" else "white",
                      "ls": "--" if kind == "param" else "-"})
    ax.text(6.8, -3.3, "forward: Σ sums m values into one, ⇉ hands one value to all m\n"
            "backward: every Σ becomes a ⇉, every ⇉ a Σ", ha="center", va="top",
            fontsize=GRAPH_FONT - 1, color=COLORS["grey"], linespacing=1.5)
    ax.text(0.0, -0.55, "m values", ha="center", va="top", fontsize=GRAPH_FONT - 2,
            color=COLORS["grey"])
    ax.text(3.4, 2.95, "one value", ha="center", va="bottom", fontsize=GRAPH_FONT - 2,
            color=COLORS["grey"])
    ax.set_xlim(-0.9, 14.2)
    ax.set_ylim(-4.1, 3.2)
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


# --- Chapter 4 -----------------------------------------------------------------------


def batch_dependence(probs, eval_prob, batch_sizes, batch_acc, eval_acc):
    """Two panels: (a) histogram of one example's predicted probability of its true class
    over many batches, with the eval-mode value (the running statistics); (b) test
    accuracy with test-batch statistics against the test batch size, with the eval-mode
    accuracy as a line. One legend, below the panels, where it covers no bar."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.7))
    eval_label = "running statistics (eval mode)"
    ax1.hist(probs, bins=30, range=(0, 1), color=COLORS["baseline"], alpha=0.8,
             label="batch statistics")
    ax1.axvline(eval_prob, color=COLORS["bn"], lw=2, label=eval_label)
    ax1.set(xlabel="predicted probability of the true class", ylabel="batches",
            title="(a) one test example, many batch-mates")
    ax2.plot(batch_sizes, 100 * np.asarray(batch_acc), "o-", color=COLORS["baseline"])
    ax2.axhline(100 * eval_acc, color=COLORS["bn"], lw=2)
    ax2.set_xscale("log", base=2)
    ax2.set(xlabel="test batch size", ylabel="test accuracy (%)",
            title="(b) accuracy against test batch size")
    for ax in (ax1, ax2):
        ax.title.set_fontsize(10)
    fig.legend(*ax1.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=9)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return fig


def log_percent_ticks(lo, hi):
    """Tick values for a log axis in percent between ``lo`` and ``hi``: 1, 1.5, 2, 2.5,
    3, 4, 5, 7 per decade below 10 (where compared errors lie close together), then
    10, 20, 50 per decade."""
    ticks = []
    for decade in 10.0 ** np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1):
        steps = (1, 1.5, 2, 2.5, 3, 4, 5, 7) if decade < 10 else (1, 2, 5)
        ticks += [decade * s for s in steps]
    return [t for t in ticks if lo <= t <= hi]


def _momentum_name(label):
    """``"0.1"`` -> ``"momentum 0.1"``; ``"None"`` (BN's cumulative average) says so."""
    return "cumulative average (momentum None)" if label == "None" else f"momentum {label}"


def statistics_over_training(steps, curves, errors):
    """Two panels against training steps, one line per estimate of the population
    statistics: (a) test error with it, (b) its relative distance to Algorithm 2's Var[x]."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.9))
    colors = ["#CC79A7", "#0072B2", "#009E73", "#E69F00", "#D55E00", "#56B4E9"]  # Okabe-Ito
    for (label, acc), color in zip(curves.items(), colors, strict=False):
        style = ({"color": "black", "lw": 2, "ls": "--", "label": label}
                 if label == "Algorithm 2" else {"color": color, "label": _momentum_name(label)})
        ax1.plot(steps, 100 * (1 - np.asarray(acc)), **style)
        if label in errors:
            ax2.plot(steps, errors[label], **style)
    ax1.set(xlabel="training step", ylabel="test error (%)", yscale="log",
            title="(a) test error with each estimate")
    ax2.set(xlabel="training step", ylabel="relative difference of Var[x]", yscale="log",
            title="(b) distance to Algorithm 2")
    lo, hi = ax1.get_ylim()
    ax1.yaxis.set_major_locator(mpl.ticker.FixedLocator(log_percent_ticks(lo, hi)))
    ax1.yaxis.set_major_formatter(mpl.ticker.FormatStrFormatter("%g"))
    ax1.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())
    # below the panels: inside, it would cover the curves of the early steps
    fig.legend(*ax1.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    return fig


# --- Chapter 5: the paper's Figure 1 -------------------------------------------------


def figure1_panels(runs, title=None):
    """The three panels of the paper's Figure 1 from ``bnutils.experiments.figure1_runs``.

    ``runs``: one learning rate and initial scale, ``R`` seeds (e.g. ``select(grid,
    lr=0.5)``). (a) Test accuracy against steps for both nets: the mean over seeds as a
    line, the range over seeds as a band. (b, c) The 15th/50th/85th percentiles of the
    input to sigmoid 0 of the last hidden layer of seed 0, (b) without BN and (c) with
    BN, on one y-axis (different seeds start from different weights, so "sigmoid 0" is
    another unit in each: its bands are not averaged).
    """
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    step = runs["step"]
    for net, label in (("baseline", "Without BN"), ("bn", "With BN")):
        acc = runs[f"acc_{net}"][0, 0]  # (R, n)
        axes[0].fill_between(step, acc.min(0), acc.max(0), color=COLORS[net], alpha=0.25, lw=0)
        axes[0].plot(step, acc.mean(0), color=COLORS[net], label=label)
    # from the lowest accuracy after step 0, so that the first logs (where "faster"
    # shows) stay in view; step 0 itself (chance) would squash the rest
    low = min(runs[f"acc_{net}"][0, 0, :, 1:].min() for net in ("baseline", "bn"))
    axes[0].set(xlabel="training step", ylabel="test accuracy", title="(a)",
                ylim=(max(0.0, low - 0.03), 1))
    axes[0].legend(loc="lower right")
    pct = {net: runs[f"pct_{net}"][0, 0, 0, :, 0] for net in ("baseline", "bn")}
    lims = _common_ylim(list(pct.values()))
    for ax, net, name in ((axes[1], "baseline", "(b) without BN"), (axes[2], "bn", "(c) with BN")):
        percentile_bands(ax, step, pct[net], COLORS[net])
        ax.set(xlabel="training step", ylabel="input to the sigmoid", title=name, ylim=lims)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def sigmoid_bands(runs, nets=("baseline", "bn"), per_row=4):
    """Percentile bands of every recorded sigmoid of the last hidden layer.

    ``runs``: a ``figure1_runs`` result; its first setting is drawn (``pct_<net>``
    ``[0, 0, 0]: (n_logs, units, 3)``). Each net gets ``ceil(units / per_row)`` rows of
    ``per_row`` panels (so that the tick labels stay readable at page width); all
    panels share one y-axis so the drifts can be compared.
    """
    pcts = {net: runs[f"pct_{net}"][0, 0, 0] for net in nets}
    units = pcts[nets[0]].shape[1]
    rows_per_net = -(-units // per_row)
    nrows = rows_per_net * len(nets)
    fig, axes = plt.subplots(nrows, per_row, figsize=(2.4 * per_row, 1.9 * nrows),
                             sharex=True, sharey=True, squeeze=False)
    lims = _common_ylim(list(pcts.values()))
    step = runs["step"]
    for n, net in enumerate(nets):
        for k in range(rows_per_net * per_row):
            ax = axes[n * rows_per_net + k // per_row][k % per_row]
            if k >= units:
                ax.axis("off")
                continue
            percentile_bands(ax, step, pcts[net][:, k], COLORS[net])
            name = "without BN" if net == "baseline" else "with BN"
            ax.set(ylim=lims)
            ax.set_title(f"{name}, unit {k}", fontsize=9)
            ax.tick_params(labelsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=9)
        ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(_thousands))
    for row in axes:
        row[0].set_ylabel("sigmoid input", fontsize=9)
    fig.tight_layout()
    return fig


def _thousands(x, _pos=None):
    """Tick label of a step: 0, 500, 2k, 6k."""
    return f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"


def gamma_beta(parts, labels):
    """What BN fixes and what it learns, for the last hidden layer of seed 0 of each run.

    ``parts``: ``figure1_runs`` results (one setting each, e.g. two learning rates),
    ``labels``: their names. Row per run: gamma of the recorded units over training,
    beta, and for unit 0 the percentiles of x_hat (fixed by BN) next to those of
    y = gamma * x_hat + beta (the sigmoid's input).
    """
    fig, axes = plt.subplots(len(parts), 3, figsize=(11, 2.9 * len(parts)), squeeze=False)
    for row, runs, label in zip(axes, parts, labels, strict=True):
        step = runs["step"]
        for ax, key in ((row[0], "gamma"), (row[1], "beta")):
            ax.plot(step, runs[f"{key}_bn"][0, 0, 0], color=COLORS["bn"], lw=0.8, alpha=0.8)
            ax.set(xlabel="training step",
                   title=f"{label}: $\\{key}$ of {runs['gamma_bn'].shape[-1]} units")
        percentile_bands(row[2], step, runs["pct_xhat_bn"][0, 0, 0, :, 0], COLORS["grey"],
                         label=r"$\hat{x}$")
        percentile_bands(row[2], step, runs["pct_bn"][0, 0, 0, :, 0], COLORS["bn"],
                         label=r"$y = \gamma\hat{x} + \beta$")
        row[2].set(xlabel="training step", title=f"{label}: unit 0")
        # beside the panel, not on it: inside it covered the bands
        row[2].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                      borderaxespad=0)
    fig.tight_layout()
    return fig


def _cell_number(r):
    """At most four characters, so that it fits a map's cell: 0.41, 7.4, 88, 384, 2e4."""
    if r >= 1000:
        return f"{r:.0e}".replace("e+0", "e")
    return f"{r:.0f}" if r >= 10 else f"{r:.2g}"


def drift_maps(maps, lrs, init_stds, ncols=2, factor=2.0, learned=None, clip=100.0):
    """Heat maps of the baseline-to-BN drift ratio over learning rate x initial scale.

    ``maps``: ``{title: ratio}``, each ``ratio: (S, L)`` (rows: initial scales, columns:
    learning rates), one panel each, ``ncols`` per row. Colours on a log scale centred
    on 1 and clipped at ``clip`` and ``1 / clip`` (a ratio of 100,000 would otherwise
    wash out every other cell): red where the baseline drifts more (the paper's
    picture), blue where BN does; each cell shows its ratio, and cells at least
    ``factor`` from 1 either way are outlined. ``learned``: ``{title: (S, L) bool}``,
    where both networks learned; the other cells are grey, their drift not counted.
    """
    n = len(maps)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols + 1.0, 2.6 * nrows),
                             squeeze=False)
    span = float(np.log10(clip))
    norm = mpl.colors.Normalize(-span, span)
    cmap = mpl.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
    for ax, (title, ratio) in zip(axes.ravel()[:n], maps.items(), strict=True):
        ratio = np.asarray(ratio, dtype=float)
        ok = np.ones(ratio.shape, bool) if learned is None else np.asarray(learned[title])
        with np.errstate(divide="ignore", invalid="ignore"):
            shown = np.where(ok, np.clip(np.log10(ratio), -span, span), np.nan)
        image = ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto")
        for (i, j), r in np.ndenumerate(ratio):
            text = "–" if not np.isfinite(r) else _cell_number(r)
            dark = ok[i, j] and np.isfinite(r) and r > 0 and abs(np.log10(r)) > 0.6 * span
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if dark else ("black" if ok[i, j] else "#737373"))
            if ok[i, j] and np.isfinite(r) and (r >= factor or r <= 1 / factor):
                ax.add_patch(mpl.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                                   lw=1.2, ec="black"))
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs], fontsize=8)
        ax.set_yticks(range(len(init_stds)), [f"{v:g}" for v in init_stds], fontsize=8)
        ax.set_xlabel("learning rate", fontsize=9)
        ax.set_ylabel(r"initial scale $\sigma$", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.grid(False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, extend="both")
    bar.set_label("baseline drift ÷ BN drift")
    ticks = [t for t in (0.001, 0.01, 0.1, 1, 10, 100, 1000) if abs(np.log10(t)) <= span]
    bar.set_ticks(np.log10(ticks), labels=[f"{t:g}" for t in ticks])
    return fig


def _common_ylim(arrays, margin=0.05):
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


# --- Chapter 6: the scaled-down section 4.2 experiment ----------------------------------

# configuration -> (colour, line style) for the accuracy curves of notebook 06
FIGURE3_STYLES = {
    "baseline": (COLORS["baseline"], "-"),
    "baseline_x5": (COLORS["baseline"], "--"),
    "baseline_decay": (COLORS["grey"], "-"),
    "baseline_sigmoid": (COLORS["baseline"], ":"),
    "bn": (COLORS["bn"], "-"),
    "bn_x5": (COLORS["bn"], "--"),
    "bn_x30": (COLORS["bn"], "-."),
    "bn_x5_sigmoid": (COLORS["other"], "--"),
}


def figure3_curves(results, target=None, zoom=0.1, key="val_acc",
                   ylabel="validation accuracy"):
    """Accuracy against training steps: ReLU networks, the same enlarged, sigmoid
    networks.

    ``results``: what ``bnutils.experiments.figure3`` returns (``key`` of one seed
    ``(n,)`` or several ``(n_seeds, n)``; the paper's Figure 2 plots validation
    accuracy). The line is the mean over seeds, the band the range from the lowest to
    the highest seed; a cross marks where a run diverged (and was stopped). The dotted
    grey line is ``target`` (the accuracy that "steps to reach" counts to). The middle
    panel enlarges the top ``zoom`` of the ReLU panel's accuracy axis, up to the
    highest seed of any ReLU run, so that no band is cut; it is a panel of its own,
    not an inset, so that it hides no curve.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), width_ratios=(1, 0.8, 1))
    relu, enlarged, sigmoid = axes

    def seeds(r):
        return np.atleast_2d(r[key])

    top = max(np.nanmax(seeds(r)) for name, r in results.items() if "sigmoid" not in name)
    for name, r in results.items():
        color, style = FIGURE3_STYLES.get(name, (COLORS["grey"], "-"))
        acc = seeds(r)
        lr = np.atleast_1d(r["lr"])[0]
        for ax in [sigmoid] if "sigmoid" in name else [relu, enlarged]:
            ax.plot(r["step"], np.nanmean(acc, 0), color=color, ls=style,
                    label=f"{name} (lr {lr:g})")
            if len(acc) > 1:
                ax.fill_between(r["step"], np.nanmin(acc, 0), np.nanmax(acc, 0), color=color,
                                alpha=0.15, lw=0)
            for seed_acc, diverged in zip(acc, np.atleast_1d(r["diverged"]), strict=True):
                if diverged and np.isfinite(seed_acc).any():
                    last = np.flatnonzero(~np.isnan(seed_acc))[-1]
                    ax.plot(r["step"][last], seed_acc[last], "x", color=color, ms=9, mew=2)
    for ax in axes:
        if target is not None:
            ax.axhline(target, color=COLORS["grey"], ls=":", lw=1, label="target")
        ax.set(xlabel="training step")
    relu.set(title="ReLU networks", ylim=(0, 1), ylabel=ylabel)
    sigmoid.set(title="sigmoid networks", ylim=(0, 1))
    enlarged.set(title=f"ReLU networks, the top {zoom:.0%}", ylim=(top - zoom, top + 0.005),
                 xlim=(0, None))
    for ax in (relu, sigmoid):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
    fig.tight_layout()
    return fig


def schedules(steps, specs, styles=None):
    """The learning rate against the step for each ``{name: rates (steps,)}`` of
    ``specs``, on a log axis, and (right) its mean over the run as a multiple of the
    first entry's mean (what "×5" amounts to, averaged over the run)."""
    styles = styles or FIGURE3_STYLES
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(10.5, 3.4), width_ratios=(1.6, 1))
    names = list(specs)
    base = np.mean(specs[names[0]])
    for name in names:
        color, style = styles.get(name, (COLORS["grey"], "-"))
        ax.plot(np.arange(steps), specs[name], color=color, ls=style, label=name)
    ax.set(yscale="log", xlabel="training step", ylabel="learning rate")
    ax.legend(fontsize=8, loc="lower left")
    means = [np.mean(specs[n]) / base for n in names]
    bars.barh(range(len(names)), means,
              color=[styles.get(n, (COLORS["grey"],))[0] for n in names])
    for i, m in enumerate(means):
        bars.text(m, i, f" ×{m:.2g}", va="center", fontsize=8)
    bars.set_yticks(range(len(names)), names, fontsize=8)
    bars.invert_yaxis()
    bars.set(xlabel=f"mean rate over the run ÷ {names[0]}'s", xlim=(0, max(means) * 1.25))
    bars.grid(False)
    fig.tight_layout()
    return fig


# --- Chapters 8 and 9: curves of several runs side by side --------------------------


def panels(x, series, titles, xlabel="step", ylabels=None, logy=(), logx=False, width=3.4):
    """One panel per entry of ``series``; each entry maps a label to ``(y, color)``.

    ``x``: the x values shared by all panels, or a list with one per panel. ``y``: one
    value per x, or ``(len(x), n_seeds)`` values, drawn as the mean over the seeds with a
    band of ± one standard deviation. A label in parentheses, ``"(BN)"``, is drawn
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
                sd = y.std(1, ddof=1) if y.shape[1] > 1 else np.zeros(len(y))
                y = y.mean(1)
                ax.fill_between(xs, y - sd, y + sd, color=color, alpha=0.2, lw=0)
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


def smooth(values, window):
    """Moving average of a 1-d array over ``window`` points (valid part only)."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


# --- Chapter 7: what BN buys, one claim at a time ---------------------------------------


def _mean_sd(values, axis):
    values = np.asarray(values, dtype=float)
    sd = values.std(axis=axis, ddof=1) if values.shape[axis] > 1 else np.zeros(1)
    return values.mean(axis=axis), sd


def lr_grid(curves, ylabels, threshold=None):
    """Accuracy against the learning-rate multiple, one panel per entry of ``curves``.

    ``curves``: a list of ``{label: (multiples, values (multiples, seeds), color)}``;
    the line is the mean over seeds with an error bar of one sd, each seed a dot.
    ``threshold``: a dotted line (the accuracy a stable run must reach).
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(4.8 * len(curves), 3.4), squeeze=False)
    ticks = sorted({m for panel in curves for ms, _, _ in panel.values() for m in ms})
    for ax, panel, ylabel in zip(axes[0], curves, ylabels, strict=True):
        for label, (multiples, values, color) in panel.items():
            values = np.asarray(values, dtype=float)
            mean, sd = _mean_sd(values, 1)
            ax.errorbar(multiples, mean, yerr=sd, color=color, marker="o", ms=4,
                        capsize=3, label=label)
            for s in range(values.shape[1]):
                ax.plot(multiples, values[:, s], ".", color=color, alpha=0.35)
        if threshold is not None:
            ax.axhline(threshold, color=COLORS["grey"], ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"×{m:g}" for m in ticks])
        ax.minorticks_off()
        ax.set(xlabel="learning rate (multiple of 0.1)", ylabel=ylabel, ylim=(0, 1))
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def first_steps(traces, colors, layer=-1):
    """What happens over the first steps of several runs (``run_cnn``'s ``trace``).

    ``traces``: ``{label: trace}`` with arrays ``(seeds, steps, ...)``; the mean over
    seeds is drawn (``colors``: ``{label: color}``). Six panels: the loss, the logits'
    spread, the share of dead ReLUs in block ``layer``, the growth of the weights of that
    block's convolution and of the last linear layer (norm over its initial norm), and
    that block's mean gamma and beta.
    """
    panels = [("loss", lambda t: t["loss"], "training loss"),
              ("logit_std", lambda t: t["logit_std"], "std of the logits"),
              ("dead", lambda t: t["dead"][..., layer], "dead ReLUs, last block"),
              ("conv", lambda t: t["conv_norm"][..., layer] / t["conv_norm"][:, :1, layer],
               "‖W‖ / ‖W₀‖, last convolution"),
              ("head", lambda t: t["head_norm"] / t["head_norm"][:, :1],
               "‖W‖ / ‖W₀‖, last linear layer"),
              ("gamma_beta", None, "γ (solid) and β (dashed), last block")]
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.6))
    for ax, (key, get, title) in zip(axes.ravel(), panels, strict=True):
        for label, t in traces.items():
            step = np.arange(1, t["loss"].shape[1] + 1)
            if key == "gamma_beta" and t["gamma"].shape[-1] == 0:
                continue  # a network without BN has no gamma and beta
            if key == "gamma_beta":
                ax.plot(step, t["gamma"][..., layer].mean(0), color=colors[label], label=label)
                ax.plot(step, t["beta"][..., layer].mean(0), color=colors[label], ls="--")
            else:
                ax.plot(step, np.nanmean(get(t), axis=0), color=colors[label], label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if key in ("conv", "head"):
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def trainability(scales, curves, threshold, ylabel="final test accuracy"):
    """Accuracy against the initial weight scale (log axis), one curve per network.

    ``curves``: ``{label: (acc (scales, seeds), color)}``; mean with an sd band, each
    seed a dot; the dotted line is the ``threshold`` that defines the window.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, (acc, color) in curves.items():
        mean, sd = _mean_sd(acc, 1)
        ax.plot(scales, mean, "o-", color=color, ms=4, label=label)
        ax.fill_between(scales, mean - sd, mean + sd, color=color, alpha=0.2, lw=0)
        for s in range(np.shape(acc)[1]):
            ax.plot(scales, np.asarray(acc)[:, s], ".", color=color, alpha=0.35)
    ax.axhline(threshold, color=COLORS["grey"], ls=":", lw=1, label=f"{threshold:.0%}")
    ax.set_xscale("log")
    ax.set(xlabel="initial weight scale (std of every weight)", ylabel=ylabel, ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


LAYER_STATS = (("act_mean", "activation mean", False), ("act_std", "activation std", True),
               ("saturated", "share saturated", False), ("grad_std", "gradient std", True),
               ("update_ratio", "update / weight", True))


def layer_small_multiples(details, titles, colors):
    """Per-layer statistics (``diagnostics.layer_statistics``) as small multiples.

    ``details``: ``{label: (start, end)}``, each a dict of arrays ``(n_scales, seeds,
    layers)``; one column per scale (``titles``), one row per statistic; the dashed
    line is at initialization, the solid one after training (mean over seeds).
    """
    n_cols = len(titles)
    fig, axes = plt.subplots(len(LAYER_STATS), n_cols, figsize=(3.6 * n_cols, 9.5),
                             sharex=True, squeeze=False)
    for row, (key, name, log) in enumerate(LAYER_STATS):
        for col in range(n_cols):
            ax = axes[row][col]
            for label, (start, end) in details.items():
                layers = np.arange(1, start[key].shape[-1] + 1)
                ax.plot(layers, start[key][col].mean(0), "--", color=colors[label], lw=1)
                ax.plot(layers, end[key][col].mean(0), "-o", color=colors[label], ms=3,
                        label=label)
            if log:
                ax.set_yscale("log")
            if row == 0:
                ax.set_title(titles[col], fontsize=10)
            if col == 0:
                ax.set_ylabel(name)
    for ax in axes[-1]:
        ax.set_xlabel("hidden layer")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def saturation_over_training(panels, titles):
    """The share of saturated units per layer over training, one panel per entry of
    ``panels`` (each ``(step (n,), saturated (n, layers))``); darker is deeper.

    Each panel has its own vertical axis, from 0 to a little above its largest share
    (at least 0.05): a network whose units barely saturate would otherwise show flat
    lines at zero. A legend names the first and the last layer wherever the number of
    layers changes from the panel before.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False)
    layers_before = None
    for ax, (step, sat), title in zip(axes[0], panels, titles, strict=True):
        n = sat.shape[1]
        lines = [ax.plot(step, sat[:, j], color=plt.cm.viridis(j / max(n - 1, 1)))[0]
                 for j in range(n)]
        top = max(0.05, 1.05 * float(np.nanmax(sat)))
        ax.set(title=title, xlabel="step", ylim=(-0.02 * top, top))
        if n != layers_before:
            ends = [0, n - 1] if n > 1 else [0]
            ax.legend([lines[j] for j in ends], [f"layer {j + 1}" for j in ends],
                      fontsize=7, loc="best")
        layers_before = n
    axes[0][0].set_ylabel("share of saturated values")
    fig.tight_layout()
    return fig


def regularization_panels(table, ghost_sizes, ghost_gaps, colors):
    """(a) train (open) and test (filled) accuracy of each configuration, each seed a
    small dot, the mean ± sd a large one (dots, not bars: the axis zooms in on the
    differences without bars cut at an arbitrary floor), (b) the train-test gap
    against the ghost batch size (``ghost_gaps: (sizes, seeds)``)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 3.6))
    names = list(table)
    x = np.arange(len(names))
    for offset, key, face in ((-0.15, "train_acc", "white"), (0.15, "acc", None)):
        for i, n in enumerate(names):
            values = np.asarray(table[n][key], dtype=float)
            mean, sd = _mean_sd(values, 0)
            c = colors[n]
            ax1.plot(np.full(len(values), x[i] + offset), values, ".", color=c, alpha=0.4)
            ax1.errorbar(x[i] + offset, mean, yerr=sd, fmt="o", ms=7, capsize=3, color=c,
                         mfc=face or c)
    # the title names the markers: a legend would sit on some network's points
    ax1.set(xticks=x, ylabel="accuracy", title="(a) train (open) and test (filled)")
    ax1.set_xticklabels(names, fontsize=8)
    mean, sd = _mean_sd(ghost_gaps, 1)
    ax2.errorbar(ghost_sizes, mean, yerr=sd, marker="o", capsize=3, color=COLORS["bn"])
    ax2.set_xscale("log")
    ax2.set_xticks(ghost_sizes, [str(v) for v in ghost_sizes])
    ax2.minorticks_off()
    ax2.set(xlabel="examples per BN statistic (ghost batch size)",
            ylabel="train − test accuracy", title="(b) the gap against BN's noise")
    fig.tight_layout()
    return fig
