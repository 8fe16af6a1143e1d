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


def test_drift_map_cells_show_short_numbers():
    """A ratio of tens of thousands must not spill over its neighbours' cells."""
    ratio = np.array([[56369.0, 0.41, np.nan], [88.0, 7.4, 1222.0]])  # (scales, rates)
    fig = plot.drift_maps({"map": ratio}, [0.1, 1.0, 4.0], [0.01, 0.05])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["6e4", "0.41", "–", "88", "7.4", "1e3"]
    assert max(map(len, texts)) <= 4


def _figure3_run(acc, lr=0.1, diverged=(False, False)):
    return {"acc": np.array(acc), "step": np.array([0, 100, 200]), "lr": lr,
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
    np.testing.assert_allclose(enlarged.get_ylim(), (0.79 - 0.1, 0.79 + 0.01))
    curves = [line.get_label() for line in relu.get_lines() if "(lr" in line.get_label()]
    assert curves == ["baseline (lr 0.1)", "bn_x30 (lr 3)"]
    assert [line.get_label() for line in enlarged.get_lines()
            if "(lr" in line.get_label()] == curves
    assert [line.get_label() for line in sigmoid.get_lines()
            if "(lr" in line.get_label()] == ["bn_x5_sigmoid (lr 0.5)"]


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
