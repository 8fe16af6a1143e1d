"""bnutils.config: run mode, seeds, device."""

import numpy as np
import pytest
import torch

import bnutils


@pytest.mark.parametrize("value, quick", [("1", True), ("true", True), ("0", False), ("", False)])
def test_quick_mode_switch(monkeypatch, value, quick):
    monkeypatch.setenv("BNBOOK_QUICK", value)
    assert bnutils.is_quick() is quick
    assert bnutils.run_mode() == ("quick" if quick else "full")
    assert bnutils.choose(full=50_000, quick=500) == (500 if quick else 50_000)


def test_set_seed_makes_draws_reproducible():
    bnutils.set_seed(7)
    a = (np.random.rand(3), torch.rand(3))
    bnutils.set_seed(7)
    b = (np.random.rand(3), torch.rand(3))
    np.testing.assert_array_equal(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_generator_is_independent_of_global_state():
    g1, g2 = bnutils.generator(3), bnutils.generator(3)
    torch.rand(10)  # global draws do not disturb explicit generators
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_device_override(monkeypatch):
    monkeypatch.setenv("BNBOOK_DEVICE", "cpu")
    assert bnutils.device() == torch.device("cpu")
    monkeypatch.delenv("BNBOOK_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert bnutils.device().type == expected


def test_progress_prints_one_summary_line_in_a_kernel_without_widgets(monkeypatch, capsys):
    import importlib.util
    import sys

    real_find_spec = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # pretend to run in a kernel
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real_find_spec(name, *a))
    assert list(bnutils.progress(range(5), desc="steps")) == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("steps: 5 iterations in ")


def test_progress_disabled_returns_the_iterable():
    items = [1, 2]
    assert bnutils.progress(items, disable=True) is items
