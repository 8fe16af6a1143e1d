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
