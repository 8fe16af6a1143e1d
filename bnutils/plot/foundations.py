"""The figures of part I, the foundations (chapters 1-4): whitening and internal
covariate shift, the transform and its diagrams, the backward graph, inference."""

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from .common import COLORS, percentile_bands

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
