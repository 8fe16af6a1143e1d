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
