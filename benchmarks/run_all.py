"""Run every benchmark in this folder and write a Markdown report with the machine it ran on.

Usage: ``python benchmarks/run_all.py [--quick] [--out benchmarks/results/report.md]``
(``make bench``). Each benchmark prints ratios against a reference measured in the same
run; this script only collects what they print, so the report is their own words.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine():
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "CPU": f"{cpu}, {os.cpu_count()} logical cores",
        "torch threads": torch.get_num_threads(),
        "GPU": gpu,
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "NumPy / PyTorch": f"{numpy.__version__} / {torch.__version__}",
        "commit": _git("rev-parse", "--short", "HEAD"),
    }


def _git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "report.md")
    args = parser.parse_args()

    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    lines = ["## Latest report", "",
             f"Written by `benchmarks/{Path(__file__).name}`"
             f"{' in quick mode (tiny sizes)' if args.quick else ''}. Each benchmark "
             "measures a reference and the candidate in the same run and prints ratios.", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine().items()]
    failed = []
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"running {script.name} ...", flush=True)
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
        took = time.perf_counter() - start
        print(run.stdout, end="")
        status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        if run.returncode:
            failed.append(script.name)
            print(run.stderr[-2000:], file=sys.stderr)
        lines += ["", f"### `{script.name}`", "", f"{status}, {took:.0f} s.", "", "```text",
                  (run.stdout or run.stderr[-2000:]).rstrip(), "```"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"report: {args.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
