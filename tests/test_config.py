"""bnutils.config: run mode, seeds, device, progress bars, tested versions."""

import importlib.metadata
import importlib.util
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import bnutils
from bnutils import config

ROOT = Path(__file__).resolve().parents[1]


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


# --- progress: live where a person watches, one summary line in builds and tests ---

class _KernelShell:
    """Stands in for ipykernel's shell: what ``IPython.get_ipython()`` returns in a kernel."""

    kernel = object()


@pytest.fixture
def in_kernel(monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", _KernelShell)


@pytest.fixture
def without_ipywidgets(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real_find_spec(name, *a))


@pytest.mark.parametrize("value, mode", [(None, "live"), ("", "live"), ("live", "live"),
                                         (" Summary ", "summary")])
def test_progress_mode_comes_from_the_environment(monkeypatch, value, mode):
    if value is None:
        monkeypatch.delenv("BNBOOK_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("BNBOOK_PROGRESS", value)
    assert config.progress_mode() == mode


def test_progress_mode_rejects_an_unknown_value(monkeypatch):
    monkeypatch.setenv("BNBOOK_PROGRESS", "quiet")
    with pytest.raises(ValueError, match="BNBOOK_PROGRESS='quiet'.*live, summary"):
        bnutils.progress(range(3))


def test_off_mode_prints_nothing(monkeypatch, capsys, in_kernel):
    """The workers of ``parallel.prefill`` run with ``off``: their bars would interleave."""
    monkeypatch.setenv("BNBOOK_PROGRESS", "off")
    assert list(bnutils.progress(range(5), desc="steps")) == [0, 1, 2, 3, 4]
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_summary_mode_prints_one_line_even_where_widgets_work(monkeypatch, capsys, in_kernel):
    monkeypatch.setenv("BNBOOK_PROGRESS", "summary")
    assert list(bnutils.progress(range(5), desc="steps")) == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"steps: 5 iterations in \d+\.\d s, [\d,]+ it/s", lines[0]), lines


def test_summary_mode_says_when_a_loop_stopped_early(monkeypatch, capsys):
    monkeypatch.setenv("BNBOOK_PROGRESS", "summary")

    def first_three():
        for i in bnutils.progress(range(10), desc="training"):
            if i == 2:
                break
        return "returned"

    assert first_three() == "returned"
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("training: stopped after 3 of 10 iterations in ")


def test_live_mode_in_a_terminal_draws_a_text_bar_with_rate_and_eta(monkeypatch, capsys):
    from tqdm.notebook import tqdm as widget_bar
    from tqdm.std import tqdm as text_bar

    monkeypatch.setenv("BNBOOK_PROGRESS", "live")
    bar = bnutils.progress(range(4), desc="steps")
    assert isinstance(bar, text_bar) and not isinstance(bar, widget_bar)
    assert list(bar) == [0, 1, 2, 3]
    final = capsys.readouterr().err.split("\r")[-1]
    # elapsed<remaining (the ETA) and the rate
    assert re.search(r"steps: 100%.*4/4 \[\d\d:\d\d<\d\d:\d\d, *[\d.]+it/s\]", final), final


def test_live_mode_in_a_kernel_draws_a_widget(monkeypatch, in_kernel):
    from tqdm.notebook import tqdm as widget_bar

    monkeypatch.setenv("BNBOOK_PROGRESS", "live")
    bar = bnutils.progress(range(4), desc="steps")
    assert isinstance(bar, widget_bar)
    assert list(bar) == [0, 1, 2, 3]
    assert bar.container.children[1].bar_style == "success"
    assert "it/s" in bar.container.children[2].value  # the rate, next to the bar


def test_live_mode_in_a_kernel_without_ipywidgets_draws_a_text_bar(monkeypatch, capsys,
                                                                   in_kernel, without_ipywidgets):
    from tqdm.notebook import tqdm as widget_bar

    monkeypatch.setenv("BNBOOK_PROGRESS", "live")
    bar = bnutils.progress(range(4), desc="steps")
    assert not isinstance(bar, widget_bar)
    assert list(bar) == [0, 1, 2, 3]
    assert "4/4" in capsys.readouterr().err


def test_progress_in_a_real_kernel_live_then_summary(monkeypatch):
    """Both modes in a real Jupyter kernel: a widget when live, one line in a build."""
    import nbclient
    import nbformat

    monkeypatch.delenv("BNBOOK_PROGRESS", raising=False)
    loop = "import bnutils\nfor _ in bnutils.progress(range(3), desc='steps'):\n    pass"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(loop),
        nbformat.v4.new_code_cell(f"import os\nos.environ['BNBOOK_PROGRESS'] = 'summary'\n{loop}"),
    ])
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    live, summary = (cell.outputs for cell in nb.cells)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in live)
    assert [o.output_type for o in summary] == ["stream"]
    assert re.fullmatch(r"steps: 3 iterations in .*\n", summary[0].text)


@pytest.mark.parametrize("target", ["book", "test"])
def test_builds_and_tests_ask_for_summary_lines(target):
    """Every command of ``make book``/``make test`` that executes notebooks sets the
    summary mode (the executed pages keep one line per loop, no widgets)."""
    dry = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.replace("\\\n", " ")
    executing = [line for line in dry.splitlines()
                 if "book/build.py build" in line or "--nbval" in line]
    assert executing, dry
    assert all("BNBOOK_PROGRESS=summary" in line for line in executing), executing


# --- the versions the book is tested with (printed by notebooks/00_setup) ---

def test_versions_inside_and_outside_the_tested_ranges():
    inside = config.version_check({"python": "3.11.7", "torch": "2.13.0+cpu"})
    assert inside == {"python": ("3.11.7", True), "torch": ("2.13.0+cpu", True)}
    outside = config.version_check({"python": "3.9.18", "torch": "2.14.0.dev20260101+cu130"})
    assert outside == {"python": ("3.9.18", False), "torch": ("2.14.0.dev20260101+cu130", False)}
    assert config.version_check({"torch": "2.12.0rc1"})["torch"][1]  # a release candidate


def test_version_report_says_what_to_do_only_when_outside():
    ok = config.version_report({"python": "3.11.7", "torch": "2.13.0"}).splitlines()
    assert ok == [f"python 3.11.7: within the tested range {config.TESTED_VERSIONS['python']}",
                  f"torch 2.13.0: within the tested range {config.TESTED_VERSIONS['torch']}"]
    bad = config.version_report({"python": "3.11.7", "torch": "1.13.1"})
    assert "torch 1.13.1: OUTSIDE the tested range" in bad
    assert f"pip install 'torch{config.TESTED_VERSIONS['torch']}'" in bad
    assert "- Python:" not in bad
    both = config.version_report({"python": "3.99.0", "torch": "1.13.1"})
    assert "- Python:" in both and "- torch:" in both
    assert max(len(line) for line in both.splitlines()) <= 79  # the notebook's column


def _floor(spec):
    (floor,) = [s.version for s in SpecifierSet(spec) if s.operator == ">="]
    return floor


def test_tested_ranges_agree_with_the_install_files():
    """One place for the ranges: pyproject's floors, requirements.txt and the Makefile's
    torch pin must agree with ``TESTED_VERSIONS``."""
    project = importlib.metadata.metadata("bnutils")  # pyproject.toml, as installed
    tested = config.TESTED_VERSIONS
    assert _floor(project["Requires-Python"]) == _floor(tested["python"])
    (torch_dep,) = [Requirement(d) for d in project.get_all("Requires-Dist")
                    if Requirement(d).name == "torch"]
    assert _floor(str(torch_dep.specifier)) == _floor(tested["torch"])
    (torch_req,) = [Requirement(line.split("#")[0]) for line in
                    (ROOT / "requirements.txt").read_text().splitlines()
                    if line.startswith("torch")]
    assert torch_req.specifier == torch_dep.specifier
    pin = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert config.version_check({"torch": pin.group(1)})["torch"][1], pin.group(0)
    assert config.version_check()["python"][1], "CI's Python must lie in the tested range"
