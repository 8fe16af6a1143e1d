"""bnutils.verdict: computed words and guarded typed claims."""

from pathlib import Path

import numpy as np
import pytest

from bnutils import data
from bnutils import verdict as v


@pytest.fixture(autouse=True)
def no_data_loaded(monkeypatch):
    """What other tests of this process loaded (the bundled subset) does not count here."""
    monkeypatch.setattr(data, "_LOADED", {})


def test_verdict_picks_the_words_of_the_fact(monkeypatch):
    glued = {}
    monkeypatch.setattr("myst_nb.glue", lambda k, t, display: glued.update({k: t}))
    assert v.verdict("k1", np.float64(1.0) < 2.0, "smaller", "larger") == "smaller"
    assert v.verdict("k2", False, "smaller", "larger") == "larger"
    assert glued == {"k1": "smaller", "k2": "larger"}


def test_verdict_without_glue_only_returns():
    assert v.verdict("k", True, "yes", "no", glue=False) == "yes"


def test_guard_fails_the_full_build(monkeypatch):
    monkeypatch.setenv("BNBOOK_QUICK", "0")
    assert v.guard(True, "BN ends higher") is True
    with pytest.raises(v.VerdictError, match="BN ends higher"):
        v.guard(False, "BN ends higher")


def test_guard_only_warns_in_quick_mode(monkeypatch):
    monkeypatch.setenv("BNBOOK_QUICK", "1")
    with pytest.warns(UserWarning, match="BN ends higher"):
        assert v.guard(np.bool_(False), "BN ends higher") is False


def test_guard_only_warns_on_the_bundled_subset(monkeypatch):
    """Offline, a full build on the subset shows its numbers but decides no claim."""
    monkeypatch.setenv("BNBOOK_QUICK", "0")
    data.load_mnist("test", subset=True)
    assert v.on_subset()
    with pytest.warns(UserWarning, match="bundled data subset"):
        assert v.guard(False, "BN ends higher") is False


def test_on_subset_is_false_on_the_full_data(monkeypatch):
    full = {"args": {"split": "test"}, "data": {"source": "full"}}
    monkeypatch.setattr(data, "_LOADED", {("test",): full})
    assert not v.on_subset()
    monkeypatch.setenv("BNBOOK_QUICK", "0")
    with pytest.raises(v.VerdictError):
        v.guard(False, "BN ends higher")


def test_glue_uses_myst_nb_where_installed(monkeypatch):
    calls = []
    monkeypatch.setattr("myst_nb.glue", lambda *a, **k: calls.append((a, k)))
    v.glue("k", 0.5, display=False)
    assert calls == [(("k", 0.5), {"display": False})]


def test_glue_without_myst_nb_stores_nothing_and_shows_on_request(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "myst_nb", None)  # as on Colab: import fails
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    v.glue("k", 0.5, display=False)
    assert shown == []
    v.glue("k", 0.25)
    assert shown == [0.25]
    assert v.verdict("k2", True, "yes", "no") == "yes"  # verdict glues through it


# --- the rules of a verdict (each test names the old rule it replaces) --------------------


def _old_clearly_above(a, b):
    """The rule the book used before: the bands mean ± sd do not overlap."""
    a, b = np.asarray(a), np.asarray(b)
    return a.mean() - a.std(ddof=1) > b.mean() + b.std(ddof=1)


def test_paired_sees_a_difference_that_the_seeds_share():
    """Each seed of a is exactly 1 point above the same seed of b, while the seeds
    scatter by 10 points: the bands overlap, the paired differences do not scatter."""
    b = np.array([0.70, 0.80, 0.90])
    a = b + 0.01
    assert not _old_clearly_above(a, b)
    p = v.paired(a, b)
    assert p.above and p.outcome == "above" and p.mean == pytest.approx(0.01)
    assert v.paired(b, a).below


def test_paired_refuses_a_difference_that_is_not_consistent():
    """Non-overlapping bands, but the differences (+2, +0.5, +4 points) scatter as much
    as their mean: the 95% interval of the mean difference contains 0."""
    a, b = [0.80, 0.79, 0.815], [0.78, 0.785, 0.775]
    assert _old_clearly_above(a, b)
    p = v.paired(a, b)
    assert p.level and not p.above
    assert p.mean - p.half_width < 0 < p.mean + p.half_width


def test_paired_uses_the_t_quantile_of_its_seeds():
    # three seeds: t(0.975, 2) = 4.303; the half-width is t * sd / sqrt(3)
    p = v.paired([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert p.half_width == pytest.approx(4.303 * 1.0 / np.sqrt(3))
    assert p.level  # mean 2 < 2.48: the interval reaches below 0
    assert v.paired([2.0, 3.0, 4.0], [0.0, 0.0, 0.0]).above
    assert v.t_quantile(40) == pytest.approx(2.021, abs=2e-3)  # tables: 2.021


def test_paired_rejects_what_it_cannot_compare():
    with pytest.raises(ValueError, match="one per seed"):
        v.paired([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        v.paired([1], [0])
    with pytest.raises(ValueError, match="finite"):
        v.paired([1, np.nan], [0, 0])


def test_identical_runs_are_level():
    assert v.paired([0.5, 0.6], [0.5, 0.6]).level


def test_a_verdict_has_words_for_every_outcome(monkeypatch):
    glued = {}
    monkeypatch.setattr("myst_nb.glue", lambda k, t, display: glued.update({k: t}))
    words = {
        "paper": "shows the paper's picture",
        "reversed": "reverses it",
        "neither": "shows neither",
    }
    assert v.verdict("k", "reversed", words) == "reverses it"
    assert glued == {"k": "reverses it"}
    with pytest.raises(ValueError, match="no words for the outcome 'both'"):
        v.verdict("k", "both", words, glue=False)
    with pytest.raises(ValueError, match="two different texts"):
        v.verdict("k", "a", {"a": "x", "b": "x"}, glue=False)
    with pytest.raises(TypeError):
        v.verdict("k", True, "yes", glue=False)


def test_counts_have_words_for_none_and_all():
    """The old prose read "BN's drifts at least twice as far at 0"."""
    assert v.counted(0, 12, "settings") == "none of the 12 settings"
    assert v.counted(12, 12, "settings") == "all 12 settings"
    assert v.counted(5, 12, "settings") == "5 of the 12 settings"
    assert v.counted(0, 0, "settings") == "no settings"
    assert v.counted(2, 2) == "both"
    with pytest.raises(ValueError):
        v.counted(3, 2)


def _old_monotone(x, y):
    """The old trend test: the ratio falls at 70% or more of the steps up in rate."""
    return (np.diff(np.log(y)) < 0).mean() >= 0.7


def test_rank_trend_finds_a_fall_that_the_monotone_share_missed():
    """Medians falling 290 -> 5.5 with two steps up on the way: 4 of 6 steps fall
    (67% < 70%), so the old test said "no steady trend"."""
    lrs = [0.05, 0.1, 0.2, 0.5, 1, 2, 4]
    y = [290, 100, 150, 40, 60, 10, 5.5]
    assert not _old_monotone(lrs, y)
    t = v.rank_trend(lrs, np.column_stack([y, np.array(y) * 0.5 + 1]))
    assert t.outcome == "falls" and t.rho < -0.8 and t.p < 0.05
    assert v.rank_trend(lrs, y[::-1]).outcome == "rises"


def test_rank_trend_says_none_for_noise():
    rng = np.random.default_rng(1)
    t = v.rank_trend(np.arange(7), rng.permutation(7) + 0.0)
    assert t.outcome == "none" or t.p < 0.05  # a permutation is noise at most 5% of times
    assert v.rank_trend([1, 2, 3, 4], [5, 5, 5, 5]).outcome == "none"


def test_ranks_share_ties():
    assert v.ranks([3, 1, 3, 2]).tolist() == [3.5, 1, 3.5, 2]
    assert v.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)


def test_a_censored_run_is_never_a_number():
    """Chapter 8 once reported "850 ± 0 steps", a stand-in for "never" in 800 steps."""
    step = np.array([0, 200, 400, 600, 800])
    never = v.first_reach(step, [0.1, 0.5, 0.6, 0.7, 0.8], 0.9)
    assert never.censored and str(never) == "not reached in 800 steps"
    hit = v.first_reach(step, [0.1, 0.5, np.nan, 0.95, 0.8], 0.9)
    assert hit == v.Reach(600, 800) and str(hit) == "600"
    assert v.speedup(hit, v.Reach(200, 800)) == 3
    assert v.speedup(never, hit) is None and v.speedup(hit, never) is None


def test_a_share_needs_a_clear_total():
    """The ablation once credited "31% of the gain" of a total of +0.72 (sd 1.3)."""
    noisy = v.paired([0.80, 0.82, 0.79], [0.80, 0.795, 0.79])
    assert noisy.level and v.share(0.0023, noisy) is None
    clear = v.paired([0.82, 0.83, 0.84], [0.80, 0.81, 0.82])
    assert v.share(0.01, clear) == pytest.approx(0.5)


def test_plateau_is_the_gain_over_the_last_quarter():
    step = np.array([0, 100, 200, 300, 400])
    assert not v.plateaued(step, [0.1, 0.6, 0.7, 0.75, 0.78])  # +3 points from 300
    assert v.plateaued(step, [0.1, 0.6, 0.78, 0.779, 0.78])
    # the tail starts between two logs: interpolated (0.70 at 300 from 200 and 400)
    assert not v.plateaued([0, 200, 400], [0.1, 0.6, 0.8])


def test_plateau_over_many_logs_is_the_rise_of_a_line_not_of_two_points():
    step = np.arange(0, 2100, 100)
    flat = np.full(21, 0.87)
    # +-0.4 points of noise, and one low evaluation where the last quarter starts
    flat[15:] = [0.85, 0.874, 0.868, 0.872, 0.864, 0.866]
    assert v.plateaued(step, flat)  # the end minus the start would be +2 points
    climbing = flat + np.where(step >= 1500, (step - 1500) * 2e-5, 0)
    assert not v.plateaued(step, climbing)  # +1 point over the last quarter


def test_the_tail_gain_is_the_number_plateaued_judges():
    step = np.array([0, 100, 200, 300, 400])
    assert v.tail_gain(step, [0.1, 0.6, 0.7, 0.75, 0.78]) == pytest.approx(0.03)
    assert v.tail_gain([0, 200, 400], [0.1, 0.6, 0.8]) == pytest.approx(0.1)
    # NaN skipped: the tail of steps 0, 100, 200 starts at 150 (0.55, interpolated)
    assert v.tail_gain([0, 100, 200, 300], [0.1, 0.5, 0.6, np.nan]) == pytest.approx(0.05)
    assert v.tail_gain([0, 100], [np.nan, 0.5]) is None
    assert not v.plateaued([0, 100], [np.nan, 0.5])
    # many logs: the Theil-Sen line over the tail, not its two ends
    step = np.arange(0, 2100, 100)
    curve = 0.8 + step * 1e-5
    curve[15] -= 0.05  # one low evaluation where the tail starts
    assert v.tail_gain(step, curve) == pytest.approx(0.005)


def _reaches(steps, horizon=800):
    return [v.Reach(None if s is None else s, horizon) for s in steps]


def test_sooner_is_paired_and_treats_a_censored_run_as_a_lower_bound():
    assert v.sooner(_reaches([100, 200, 300]), _reaches([150, 260, 340])) == "sooner"
    assert v.sooner(_reaches([150, 260, 340]), _reaches([100, 200, 300])) == "later"
    # scattered differences: level
    assert v.sooner(_reaches([100, 300, 200]), _reaches([150, 200, 260])) == "level"
    # b never reaches: a is sooner whenever a always does
    assert v.sooner(_reaches([100, 120, 90]), _reaches([None] * 3)) == "sooner"
    # a run of a that never reaches never makes a sooner, whatever the numbers
    assert v.sooner(_reaches([100, None, 90]), _reaches([None] * 3)) == "level"
    assert v.sooner(_reaches([None] * 3), _reaches([100, 120, 90])) == "later"
    with pytest.raises(ValueError, match="one Reach per seed"):
        v.sooner(_reaches([1, 2]), _reaches([1, 2, 3]))


def test_reaches_text_never_averages_a_censored_run():
    assert v.reaches_text(_reaches([400, 440, 420])) == "420 ± 20"
    assert v.reaches_text(_reaches([None, None, None])) == "not reached in 800 steps"
    assert v.reaches_text(_reaches([400, None, 440])) == (
        "2 of 3 seeds: 420 ± 28; 1 not reached in 800 steps"
    )


def test_length_dependent_names_the_verdicts_that_move():
    end = {"fast": "reproduces", "bn": "partly", "x30": "not tested"}
    assert v.length_dependent(end, dict(end)) == []
    half = {**end, "bn": "reproduces", "x30": "partly"}
    assert v.length_dependent(end, half) == ["bn", "x30"]
    with pytest.raises(KeyError, match="no verdict at half the length for \\['x30'\\]"):
        v.length_dependent(end, {"fast": "reproduces", "bn": "partly"})


def test_ledger_words_are_the_claims_page_words():
    text = (Path(__file__).resolve().parents[1] / "book" / "claims.md").read_text()
    for word in v.LEDGER:  # each defined in the page's legend
        assert f"- **{word}**:" in text
    assert list(v.LEDGER.values()) == list(v.LEDGER)
