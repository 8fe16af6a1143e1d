"""bnutils.plot.panels: curves of several runs, with seeds drawn as mean and band."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
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
