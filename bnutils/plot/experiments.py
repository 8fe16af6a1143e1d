"""The figures of part II, the experiments (chapters 5-7): the paper's Figure 1, its
Figure 3 at our scale, and what BN buys, one claim at a time."""

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from .common import COLORS, percentile_bands

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
        _step_axis(ax)
    for row in axes:
        row[0].set_ylabel("sigmoid input", fontsize=9)
    fig.tight_layout()
    return fig


def _step_axis(ax):
    """Label the steps of ``ax``'s x axis 0, 500, 2k ... 16k: long runs' plain numbers
    run into each other."""
    ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(_thousands))


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
        _step_axis(ax)
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
    _step_axis(ax)
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
