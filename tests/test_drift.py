"""bnutils.drift: the drift of a unit's input distribution, on cases with known answers."""

import numpy as np
import pytest

from bnutils import drift as dr


def band(median, width):
    """Percentiles (15th, 50th, 85th) of a symmetric band."""
    return [median - width / 2, median, median + width / 2]


def test_a_still_distribution_does_not_drift():
    pct = np.array([[band(1.0, 2.0)]] * 5)  # (5 logs, 1 unit, 3)
    d = dr.drift(pct)
    np.testing.assert_array_equal(d.move, [0.0])
    np.testing.assert_array_equal(d.widen, [1.0])


def test_a_shift_counts_in_band_widths():
    pct = np.array([[band(0.0, 2.0)], [band(0.5, 2.0)], [band(3.0, 2.0)]])
    d = dr.drift(pct)
    np.testing.assert_allclose(d.move, [1.5])  # moved 3, band 2 wide
    np.testing.assert_allclose(d.widen, [1.0])
    np.testing.assert_allclose(dr.drift(pct, start=1).move, [1.25])
    np.testing.assert_allclose(dr.drift(pct, end=1).move, [0.25])


def test_a_widening_band_with_a_still_median():
    pct = np.array([[band(0.0, 1.0)], [band(0.0, 4.0)]])
    d = dr.drift(pct)
    np.testing.assert_allclose(d.move, [0.0])
    np.testing.assert_allclose(d.widen, [4.0])
    np.testing.assert_allclose(dr.drift(pct[::-1]).widen, [0.25])


def test_move_is_measured_against_the_wider_band():
    # a band that starts nearly empty (a fresh deep layer) and then opens up
    pct = np.array([[band(0.0, 0.01)], [band(1.0, 4.0)]])
    d = dr.drift(pct)
    np.testing.assert_allclose(d.move, [0.25])
    np.testing.assert_allclose(d.widen, [400.0])


def test_move_is_symmetric_in_time_and_invariant_to_shift_and_scale():
    rng = np.random.default_rng(0)
    pct = np.sort(rng.normal(size=(6, 4, 3)), axis=-1)
    d = dr.drift(pct)
    np.testing.assert_allclose(dr.drift(pct[::-1]).move, d.move)
    np.testing.assert_allclose(dr.drift(pct[::-1]).widen, 1 / d.widen)
    moved = dr.drift(3.0 * pct - 7.0)
    np.testing.assert_allclose(moved.move, d.move)
    np.testing.assert_allclose(moved.widen, d.widen)


def test_units_and_extra_axes_are_kept():
    pct = np.zeros((3, 2, 5, 3)) + np.array([-1.0, 0.0, 1.0])  # (logs, seeds, units, 3)
    pct[-1, 1, 4] = band(2.0, 2.0)
    d = dr.drift(pct)
    assert d.move.shape == d.widen.shape == (2, 5)
    assert d.move[1, 4] == 1.0 and d.move.sum() == 1.0


def test_constant_inputs():
    still = np.array([[[1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0]]])
    d = dr.drift(still)
    assert d.move[0] == 0.0 and d.widen[0] == 1.0
    moved = np.array([[[1.0, 1.0, 1.0]], [[2.0, 2.0, 2.0]]])
    assert dr.drift(moved).move[0] == np.inf


def test_summary_is_the_median_over_units():
    pct = np.array([[band(0, 1), band(0, 1), band(0, 1)],
                    [band(0.1, 1), band(5, 1), band(0.3, 1)]])
    move, widen = dr.summary(dr.drift(pct))
    assert move == pytest.approx(0.3) and widen == 1.0


def test_ratio_and_picture():
    still = np.array([[band(0, 1)], [band(0.1, 1)]])
    far = np.array([[band(0, 1)], [band(1.0, 1)]])
    r = dr.ratio(dr.drift(far), dr.drift(still))
    assert r == pytest.approx(10.0)
    assert dr.picture(r) == "paper"
    assert dr.picture(dr.ratio(dr.drift(still), dr.drift(far))) == "reversed"
    assert dr.picture(1.5) == "neither" and dr.picture(2.0) == "paper"
    assert dr.ratio(dr.drift(still[:, :, :] * 0), dr.drift(still * 0)) == 1.0
    with pytest.raises(ValueError, match="factor"):
        dr.picture(3.0, factor=1.0)


@pytest.mark.parametrize(
    ("pct", "message"),
    [
        (np.zeros((3, 2)), "3 percentiles"),
        (np.array([0.0, 1.0, 2.0]), "leading log axis"),
        (np.array([[[0.0, 2.0, 1.0]]]), "ordered"),
        (np.array([[[0.0, np.nan, 1.0]]]), "NaN"),
    ],
)
def test_bad_input_is_refused(pct, message):
    with pytest.raises(ValueError, match=message):
        dr.drift(pct)


def test_seed_picture_needs_the_seeds_to_agree():
    # one seed: the threshold alone
    assert dr.seed_picture([3.0]) == "paper" and dr.seed_picture([0.3]) == "reversed"
    # three seeds, all about 3 times: the paper's picture
    assert dr.seed_picture([2.8, 3.0, 3.3]) == "paper"
    # a geometric mean above 2 made by one seed, the others below 1: not decided
    assert dr.seed_picture([40.0, 0.9, 0.8]) == "neither"
    assert dr.seed_picture([0.3, 0.25, 0.35]) == "reversed"
    with pytest.raises(ValueError, match="NaN"):
        dr.seed_picture([1.0, np.nan])


def test_ratio_text_never_writes_exponents():
    """The prose once read "from 2.9e+02"."""
    assert dr.ratio_text(290.4) == "290"
    assert dr.ratio_text(1.2e5) == "120,000"
    assert dr.ratio_text(5.46) == "5.5" and dr.ratio_text(0.412) == "0.41"
    assert "e" not in dr.ratio_text(2.9e2)
