"""bnutils.plot, chapters 1-4: figures that show what their text says, legibly."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnutils import plot  # noqa: E402

COLUMN_PX = 750  # the width the book's column gives a figure


def _texts(fig):
    return [t for ax in fig.axes for t in ax.texts] + list(fig.texts)


def _regression():
    """Chapter 1's problem: two correlated, badly scaled features and a target."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1000, 2))
    x = np.column_stack([5 + 4 * z[:, 0], 2 + 0.5 * (0.9 * z[:, 0] + 0.44 * z[:, 1])])
    return x, 1.5 * x[:, 0] - 2 * x[:, 1] + 0.5 + 0.1 * rng.standard_normal(1000)


def _descent(x, t, steps):
    X = np.column_stack([x, np.ones(len(x))])
    H, g = X.T @ X / len(X), X.T @ t / len(X)
    lam = np.linalg.eigvalsh(H)
    lr, path = 2 / (lam[0] + lam[-1]), [np.zeros(3)]
    for _ in range(steps):
        path.append(path[-1] - lr * (H @ path[-1] - g))
    return np.array(path), lr, lam


def test_the_raw_panel_shows_the_loss_its_path_descends():
    # uncentred inputs couple the bias to the weights: the plane of the steepest and the
    # flattest directions, where the projected path is gradient descent on the drawn loss
    x, t = _regression()
    path, lr, lam = _descent(x, t, 50)
    to_plane, loss_at, star, labels = plot.foundations._gd_plane(x, t, path)
    assert "steepest" in labels[0] and "flattest" in labels[1]
    c = to_plane(path) - star
    factors = 1 - lr * np.array([lam[-1], lam[0]])
    np.testing.assert_allclose(c[1:], c[:-1] * factors, rtol=1e-7, atol=1e-12)
    # the drawn loss is the loss of the plane's points: a quadratic with those curvatures
    np.testing.assert_allclose(loss_at(np.array([star[0] + 1.0]), np.array([star[1]])),
                               0.5 * lam[-1], rtol=1e-9)


def test_centred_panels_use_the_weights_and_the_bias_decouples():
    x, t = _regression()
    xc = x - x.mean(0)
    path, _, _ = _descent(xc, t, 5)
    to_plane, _, star, labels = plot.foundations._gd_plane(xc, t, path)
    assert labels == ("$w_1$", "$w_2$")
    np.testing.assert_allclose(to_plane(path), path[:, :2])
    np.testing.assert_allclose(star, np.linalg.lstsq(xc, t - t.mean(), rcond=None)[0])


def test_a_long_path_is_drawn_at_few_steps_on_both_sides_of_its_zigzag():
    steps = plot.foundations._path_steps(10_519)
    assert len(steps) < 100 and steps[0] == 0 and steps[-1] == 10_519
    late = steps[steps >= 12]
    assert np.isin(late[late < 10_519] + 1, steps).mean() > 0.4  # pairs (k, k + 1)
    assert list(plot.foundations._path_steps(5)) == [0, 1, 2, 3, 4, 5]


def test_gd_contours_draws_a_subsampled_path():
    x, t = _regression()
    path, _, lam = _descent(x, t, 3000)
    fig = plot.gd_contours([{"title": "raw", "x": x, "t": t, "path": path,
                             "kappa": lam[-1] / lam[0], "steps": 3000}])
    drawn = sum(len(line.get_xdata()) for line in fig.axes[0].get_lines())
    assert drawn < 120


def test_ics_bands_puts_the_networks_in_rows_on_one_scale():
    step = np.arange(0, 50, 10)
    pct = np.sort(np.random.default_rng(0).normal(size=(5, 4, 3)), axis=-1)
    fig = plot.ics_bands({"without BN": {"step": step, "pct": pct},
                          "with BN": {"step": step, "pct": 5 * pct}}, units=[0, 2], split=10)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == [
        "without BN, unit 0", "without BN, unit 2", "with BN, unit 0", "with BN, unit 2"]
    assert len({ax.get_ylim() for ax in fig.axes}) == 1  # absolute units, shared


def test_deep_activations_one_panel_per_scale_and_the_gradients():
    rng = np.random.default_rng(0)
    runs = {f"gain {g}": (np.tanh(g * rng.normal(size=(10, 50, 8))),
                          rng.normal(size=(10, 50, 8)) * g) for g in (0.5, 5)}
    fig = plot.deep_activations(runs)
    *hists, grads = fig.axes
    assert len(hists) == 2 and grads.get_yscale() == "log"
    assert len(grads.get_lines()) == 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        f"layer {k}" for k in (2, 4, 6, 8, 10)]


def test_the_axes_diagram_shades_one_feature_and_one_channel():
    fig = plot.bn_axes(n=6, d=5, c=4, hw=(3, 3), feature=1)
    shaded = [sum(p.get_facecolor()[:3] != matplotlib.colors.to_rgb("#f2f2f2")
                  for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle))
              for ax in fig.axes]
    assert shaded == [6, 6 * 9]  # (N, D): N values; (N, C, H, W): N * H * W values


def test_the_placement_diagram_puts_bn_between_linear_and_nonlinearity():
    fig = plot.bn_placement()
    xs = {t.get_text().split("\n")[0]: t.get_position()[0] for t in _texts(fig)
          if t.get_text().split("\n")[0] in ("linear", "BN", "nonlinearity")}
    assert xs["linear"] < xs["BN"] < xs["nonlinearity"]


def test_bn_graph_counts_the_paths_of_the_equations():
    # one term per outgoing edge: dl/dx has three (eq. 3.5), dl/dmu two, dl/dvar one
    paths = plot.graph_paths()
    assert (paths["x"], paths["mu"], paths["var"]) == (3, 2, 1)
    kinds = [kind for *_, kind in plot.BN_GRAPH_NODES.values()]
    assert kinds.count("sum") == 2 and kinds.count("broadcast") == 4
    # every scalar reaches a vector through a broadcast, every vector a scalar through a sum
    for src, dst, *_ in plot.BN_GRAPH_EDGES:
        k_src, k_dst = plot.BN_GRAPH_NODES[src][3], plot.BN_GRAPH_NODES[dst][3]
        if k_src in ("scalar", "param") and k_dst == "vector":
            pytest.fail(f"{src} -> {dst} needs a broadcast node")
        if k_src == "vector" and k_dst in ("scalar", "param"):
            pytest.fail(f"{src} -> {dst} needs a sum node")


def test_bn_graph_labels_are_readable_at_the_column_width():
    ax = plot.bn_graph()
    fig = ax.figure
    px_per_point = COLUMN_PX / (72 * fig.get_figwidth())
    sizes = [t.get_fontsize() for t in ax.texts if t.get_text()]
    assert min(sizes) * px_per_point >= 12, "edge labels under 12 px on the page"
    assert any("becomes" in t.get_text() for t in ax.texts)  # the sum/broadcast rule


def test_batch_dependence_names_the_running_statistics_and_keeps_the_legend_off_the_bars():
    fig = plot.batch_dependence(np.linspace(0.2, 0.9, 50), 0.7, [2, 8, 32], [0.8, 0.9, 0.95],
                                0.97)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["batch statistics", "running statistics (eval mode)"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert not any("population" in t for t in labels)


def test_log_percent_ticks_label_the_low_errors():
    ticks = plot.log_percent_ticks(2.3, 90)
    assert [t for t in ticks if t < 5] == [2.5, 3, 4]
    assert ticks[-1] == 50 and 10 in ticks
    assert plot.log_percent_ticks(0.8, 3) == [1, 1.5, 2, 2.5, 3]


def test_statistics_over_training_ticks_where_the_errors_lie():
    curves = {"0.1": [0.9, 0.97], "Algorithm 2": [0.92, 0.975]}
    fig = plot.statistics_over_training([1, 2], curves, {"0.1": [0.1, 0.05]})
    error_panel = fig.axes[0]
    lo, hi = error_panel.get_ylim()
    shown = [t for t in error_panel.get_yticks() if lo <= t <= hi]
    assert sum(t < 5 for t in shown) >= 2
