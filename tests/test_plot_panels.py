"""bnutils.plot: seeds drawn as mean and band, and layouts that show every curve and label."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from bnutils import plot  # noqa: E402


def test_seeds_become_mean_line_and_sd_band():
    x = np.arange(4)
    runs = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 5.0], [0.0, 2.0]])  # (x, seeds)
    fig = plot.panels(x, [{"BN": (runs, "C0"), "(single)": (x * 1.0, "C1")}], ["t"])
    ax = fig.axes[0]
    mean_line, single_line = ax.get_lines()
    np.testing.assert_allclose(mean_line.get_ydata(), runs.mean(1))
    assert single_line.get_linestyle() == "--"
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    sd = runs.std(1, ddof=1)
    assert np.isclose(ys.max(), (runs.mean(1) + sd).max())
    assert np.isclose(ys.min(), (runs.mean(1) - sd).min())


def test_log_panels_draw_geometric_bands_that_stay_positive():
    """Figs. 8.3/8.4: a band of mean ± sd on a log axis dropped below zero, to the edge."""
    x = np.arange(3)
    runs = np.array([[1e-3, 1e-1, 1e-2], [1.0, 10.0, 0.1], [2.0, 2.0, 2.0]])
    assert np.any(runs.mean(1) - runs.std(1, ddof=1) < 0)  # the old band
    fig = plot.panels(x, [{"BN": (runs, "C0")}], ["t"], logy=(0,))
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    logs = np.log(runs)
    np.testing.assert_allclose(line.get_ydata(), np.exp(logs.mean(1)))
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() > 0
    assert np.isclose(ys.min(), np.exp(logs.mean(1) - logs.std(1, ddof=1)).min())
    # a step where a seed is not positive (an ICS of 0 at the start) has no point
    runs[0, 0] = 0.0
    fig = plot.panels(x, [{"BN": (runs, "C0")}], ["t"], logy=(0,))
    y = fig.axes[0].get_lines()[0].get_ydata()
    assert np.isnan(y[0]) and np.all(np.isfinite(y[1:]))


def test_drift_map_cells_show_short_numbers():
    """A ratio of tens of thousands must not spill over its neighbours' cells."""
    ratio = np.array([[56369.0, 0.41, np.nan], [88.0, 7.4, 1222.0]])  # (scales, rates)
    fig = plot.drift_maps({"map": ratio}, [0.1, 1.0, 4.0], [0.01, 0.05])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["6e4", "0.41", "–", "88", "7.4", "1e3"]
    assert max(map(len, texts)) <= 4


def _figure3_run(acc, lr=0.1, diverged=(False, False)):
    return {"val_acc": np.array(acc), "step": np.array([0, 100, 200]), "lr": lr,
            "diverged": np.array(diverged)}


def test_figure3_enlargement_is_a_panel_that_hides_no_curve():
    """The enlarged top of the ReLU panel sits beside it, not over its curves."""
    results = {
        "baseline": _figure3_run([[0.1, 0.6, 0.78], [0.1, 0.62, 0.8]]),
        "bn_x30": _figure3_run([[0.1, 0.3, 0.5], [0.1, 0.35, 0.52]], lr=3.0),
        "bn_x5_sigmoid": _figure3_run([[0.1, 0.5, 0.74], [0.1, 0.55, 0.75]], lr=0.5),
    }
    fig = plot.figure3_curves(results, zoom=0.1)
    boxes = [ax.get_position() for ax in fig.axes]
    assert len(boxes) == 3
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a.x1 <= b.x0 or b.x1 <= a.x0, "one panel overlaps another"
    relu, enlarged, sigmoid = fig.axes
    # up to the highest seed of any ReLU run (0.8), not its mean (0.79): no band is cut
    np.testing.assert_allclose(enlarged.get_ylim(), (0.8 - 0.1, 0.8 + 0.005))
    curves = [line.get_label() for line in relu.get_lines() if "(lr" in line.get_label()]
    assert curves == ["baseline (lr 0.1)", "bn_x30 (lr 3)"]
    assert [line.get_label() for line in enlarged.get_lines()
            if "(lr" in line.get_label()] == curves
    assert [line.get_label() for line in sigmoid.get_lines()
            if "(lr" in line.get_label()] == ["bn_x5_sigmoid (lr 0.5)"]


def test_step_axes_of_long_runs_have_short_labels():
    """16,000 steps: "16k", not labels that run into each other."""
    step = np.arange(0, 16_001, 500)
    results = {"baseline": {"val_acc": np.tile(np.linspace(0.1, 0.9, len(step)), (2, 1)),
                            "step": step, "lr": 0.1, "diverged": np.array([False, False])}}
    fig = plot.figure3_curves(results)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert "16k" in labels and max(map(len, labels)) <= 3
    fig = plot.schedules(16_000, {"baseline": np.full(16_000, 0.1)})
    fig.canvas.draw()
    assert "16k" in [t.get_text() for t in fig.axes[0].get_xticklabels()]


def test_statistics_over_training_names_the_cumulative_average():
    curves = {"0.1": [0.9, 0.95], "None": [0.8, 0.9], "Algorithm 2": [0.9, 0.96]}
    errors = {"0.1": [0.1, 0.05], "None": [0.3, 0.2]}
    fig = plot.statistics_over_training([1, 2], curves, errors)
    error_panel, distance_panel = fig.axes
    labels = [line.get_label() for line in error_panel.get_lines()]
    assert labels == ["momentum 0.1", "cumulative average (momentum None)", "Algorithm 2"]
    np.testing.assert_allclose(error_panel.get_lines()[0].get_ydata(), [10.0, 5.0])
    assert len(distance_panel.get_lines()) == 2  # Algorithm 2 is the reference there


def test_saturation_panels_scale_to_their_data_and_name_the_layers():
    step = np.arange(3)
    deep = np.tile(np.linspace(0.5, 1.0, 8), (3, 1))  # (steps, 8 layers)
    barely = np.array([[0.0, 0.0, 0.0], [0.0, 0.01, 0.0], [0.0, 0.02, 0.03]])
    fig = plot.saturation_over_training(
        [(step, deep), (step, deep * 0.5), (step, barely)], ["a", "b", "c"])
    a, b, c = fig.axes
    assert a.get_ylim()[1] == pytest.approx(1.05)
    assert c.get_ylim()[1] == pytest.approx(0.05)  # a flat line at zero would hide 3%
    assert [t.get_text() for t in a.get_legend().get_texts()] == ["layer 1", "layer 8"]
    assert b.get_legend() is None  # the same layers as the panel before
    assert [t.get_text() for t in c.get_legend().get_texts()] == ["layer 1", "layer 3"]


def test_figure1_accuracy_axis_shows_the_first_logs():
    """Fig. 5.1(a) started at 0.77 and hid the baseline's 60% at step 500."""
    from bnutils.experiments.figure1 import NETS

    n = 4
    runs = {"step": np.arange(n) * 500}
    for net in NETS:
        acc = np.array([0.1, 0.6, 0.9, 0.95]) if net == "baseline" else \
            np.array([0.1, 0.85, 0.95, 0.97])
        runs[f"acc_{net}"] = np.tile(acc, (1, 1, 3, 1))
        runs[f"pct_{net}"] = np.tile([[-1.0, 0.0, 1.0]], (1, 1, 3, n, 2, 1))
    fig = plot.figure1_panels(runs)
    low, high = fig.axes[0].get_ylim()
    assert low <= 0.6 and low > 0.1 and high == 1


def test_drift_map_clips_its_colours_and_greys_what_did_not_learn():
    ratio = np.array([[1.2e5, 0.41, 3.0], [88.0, 7.4, 0.5]])
    learned = np.array([[False, True, True], [True, True, True]])
    fig = plot.drift_maps({"map": ratio}, [0.1, 1.0, 4.0], [0.01, 0.05],
                          learned={"map": learned}, clip=100)
    image = fig.axes[0].get_images()[0]
    data = image.get_array()
    assert data.mask[0, 0]  # not learned: drawn grey (the colour map's "bad" colour)
    assert data[1, 0] == pytest.approx(np.log10(88))
    assert image.norm.vmax == pytest.approx(2.0)  # 100 at most: 1.2e5 does not wash out
    # outlines only where both learned: all but the 1.2e5 cell
    assert len(fig.axes[0].patches) == 5


def test_sigmoid_bands_keep_four_panels_per_row():
    """Fig. 5.4's eight panels in one row had tick labels too small to read."""
    n = 3
    runs = {"step": np.arange(n) * 1000}
    for net in ("baseline", "bn"):
        runs[f"pct_{net}"] = np.tile([[-1.0, 0.0, 1.0]], (1, 1, 1, n, 8, 1))
    fig = plot.sigmoid_bands(runs)
    assert len(fig.axes) == 16
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
    assert len(rows) == 4
    labels = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert any(label.endswith("k") for label in labels)


def test_gamma_beta_legend_sits_beside_the_bands():
    """Fig. 5.3's legend covered the band it named."""
    n = 3
    runs = {"step": np.arange(n), "gamma_bn": np.ones((1, 1, 1, n, 2)),
            "beta_bn": np.zeros((1, 1, 1, n, 2)),
            "pct_xhat_bn": np.tile([[-1.0, 0.0, 1.0]], (1, 1, 1, n, 2, 1)),
            "pct_bn": np.tile([[-1.0, 0.0, 1.0]], (1, 1, 1, n, 2, 1))}
    fig = plot.gamma_beta([runs], ["lr 1"])
    fig.canvas.draw()
    ax = fig.axes[2]
    box, legend = ax.get_window_extent(), ax.get_legend().get_window_extent()
    assert legend.x0 >= box.x1  # to the right of the panel


def test_regularization_panel_draws_no_cut_bars():
    """Fig. 7.6a's bars started at 0.88: dots with error bars instead."""
    table = {n: {"train_acc": np.array([0.99, 1.0, 0.98]), "acc": np.array([0.9, 0.91, 0.9])}
             for n in ("a", "b")}
    fig = plot.regularization_panels(table, [4, 60], np.array([[0.1, 0.1], [0.2, 0.2]]),
                                     {"a": "C0", "b": "C1"})
    from matplotlib.patches import Rectangle

    bars = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert bars == []
