"""Smoke-test every benchmark script at tiny sizes: it runs and prints its ratios.

Timings are never asserted here; ``make bench`` measures them at full size.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "run_all.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_runs_in_quick_mode(script):
    run = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ratio" in run.stdout.lower() or "×" in run.stdout, run.stdout


def _run_all():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_goals_are_met_or_missed_by_the_measured_ratio():
    """The appendix once listed goals next to ratios that missed them, unflagged."""
    run_all = _run_all()
    outputs = {
        "bn_kernels.py": "(256, 1024)       NumPy backward: staged / compact  staged 2.5 ms | "
                         "compact 0.9 ms | ratio min  2.95x median  3.05x\n"
                         "(256, 1024)       torch fwd+bwd: BatchNormFunction / native  custom "
                         "| ratio min  1.73x median  1.71x",
        "fold.py": "torch.nn.BatchNorm2d        unfolded 91 ms | folded 82 ms | "
                   "ratio min  1.11x median  1.17x\n"
                   "bnutils.layers.BatchNorm2d  unfolded 139 ms | folded 92 ms | "
                   "ratio min  1.51x median  1.50x",
        "figure1.py": "ratio probed / bare (time): 1.137",
        "batched.py": "\nK=8 MLPs, BN, shared batches:\n   one by one, 1 thread: 1\n"
                      "  speed-up ratio, 1 thread each: 1.64x (CPU time: 1.6x); each at its "
                      "best thread count: 2.46x\n\nK=8 CNNs, BN, shared batches:\n"
                      "  speed-up ratio, 1 thread each: 1.36x",
    }
    rows = {(s, label): (value, met) for s, goal, label, value, met
            in run_all.goal_rows(outputs) if "custom" not in goal}
    assert rows[("bn_kernels.py", "(256, 1024)")] == (2.95, False)  # goal: >= 3
    assert rows[("fold.py", "torch.nn.BatchNorm2d")] == (1.11, False)
    assert rows[("fold.py", "bnutils.layers.BatchNorm2d")] == (1.51, True)
    assert rows[("figure1.py", "")] == (1.137, False)  # goal: overhead <= 10 %
    # the goal is the one-thread-each ratio of the MLPs, not the 2.46x, nor the CNNs
    assert rows[("batched.py", "K=8 MLPs, BN, shared batches")] == (1.64, False)
    assert len([r for r in rows if r[0] == "batched.py"]) == 1
    outputs["figure1.py"] = "ratio probed / bare (time): 1.080"
    assert ("figure1.py", "") in {(s, lb) for s, _, lb, _, met in run_all.goal_rows(outputs)
                                  if met}
    # a script whose output lacks the line: "not measured", never a pass
    missing = run_all.goal_rows({})
    assert all(value is None and met is None for *_, value, met in missing)
    assert "**not measured**" in "\n".join(run_all.goals_table({}))


def test_the_stored_report_has_its_goals_computed():
    run_all = _run_all()
    report = (ROOT / "benchmarks" / "results" / "report.md").read_text()
    assert run_all.regoal(report) == report  # the table is what the outputs give
    assert "| **missed** |" in report and "| met |" in report
