"""bnutils.verdict: computed words and guarded typed claims."""

import numpy as np
import pytest

from bnutils import verdict as v


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


def test_mean_sd_over_the_seeds():
    mean, sd = v.mean_sd([[1.0, 2.0], [3.0, 6.0]])
    assert mean.tolist() == [2.0, 4.0] and sd == pytest.approx([np.sqrt(2), np.sqrt(8)])
    mean, sd = v.mean_sd([[1.0, 3.0], [2.0, 6.0]], axis=1)
    assert mean.tolist() == [2.0, 4.0] and sd == pytest.approx([np.sqrt(2), np.sqrt(8)])


def test_clearly_less_needs_separated_ranges():
    assert v.clearly_less([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert not v.clearly_less([1.0, 1.5, 0.5], [2.0, 2.5, 1.5])  # 1.5 + ... overlaps
    assert not v.clearly_less([2.0, 2.1, 1.9], [1.0, 1.1, 0.9])
    # separated means, but one run's spread reaches the other's range
    assert not v.clearly_less([1.0, 1.0, 1.0], [2.0, 1.0, 3.0])
    assert not v.clearly_less([0.0, 1.0, 2.0], [2.0, 2.0, 2.0])
