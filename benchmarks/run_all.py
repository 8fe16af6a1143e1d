"""Run every benchmark in this folder and write a Markdown report with the machine it ran on.

Usage: ``python benchmarks/run_all.py [--quick] [--out benchmarks/results/report.md]``
(``make bench``). Each benchmark prints ratios against a reference measured in the same
run; this script collects what they print, so the report is their own words, and
checks each printed ratio against its goal (``GOALS``): the report's first table says,
for every measured ratio, whether its goal was met. ``--regoal REPORT`` recomputes that
table from the outputs stored in an existing report, without measuring again.
"""

import argparse
import datetime
import os
import platform
import re
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


# What each script's ratios are measured against. Every line of a script's output that
# matches ``line`` gives one row: the group ``label`` names it, the group ``value`` is
# the ratio the goal decides on (of the minimum times: the least disturbed repeats).
GOALS = [
    {"script": "bn_kernels.py", "goal": "compact backward ≥ 3× faster than the staged one",
     "line": r"^(?P<label>\(\S.*?\))\s+NumPy backward: staged / compact.*?ratio min\s+"
             r"(?P<value>[\d.]+)x", "at_least": 3.0},
    {"script": "bn_kernels.py", "goal": "custom `BatchNormFunction` ≤ 2× native",
     "line": r"^(?P<label>\(\S.*?\))\s+torch fwd\+bwd: BatchNormFunction / native.*?"
             r"ratio min\s+(?P<value>[\d.]+)x", "at_most": 2.0},
    {"script": "fold.py", "goal": "folded ≥ 1.2× faster than unfolded",
     "line": r"^(?P<label>\S+BatchNorm2d)\s+unfolded.*?ratio min\s+(?P<value>[\d.]+)x",
     "at_least": 1.2},
    {"script": "figure1.py", "goal": "probes add ≤ 10 % to the training time",
     "line": r"^(?P<label>)ratio probed / bare \(time\): (?P<value>[\d.]+)",
     "at_most": 1.10},
    # one process per core on both sides (the build trains one stack per core): the
    # one-by-one runs with 2 threads leave a core idle, so they are not the reference
    {"script": "batched.py",
     "goal": "stacked ≥ 2× the same MLPs one by one, one thread each",
     "block": r"^K=\d+ MLPs.*:$",
     "line": r"^\s+speed-up ratio, 1 thread each: (?P<value>[\d.]+)x", "at_least": 2.0},
]


def goal_rows(outputs):
    """One row per measured ratio that has a goal: ``(script, goal, label, value, met)``.

    ``outputs``: ``{script name: its printed output}``. A script without output, or an
    output without the line a goal looks for, gives a row with ``value`` None ("not
    measured"), never a silent pass.
    """
    rows = []
    for g in GOALS:
        text = outputs.get(g["script"], "")
        found = []
        if "block" in g:  # the label is the header line of the block the value is in
            header = None
            for line in text.splitlines():
                if re.match(g["block"], line):
                    header = line.rstrip(":")
                elif header and (m := re.match(g["line"], line)):
                    found.append((header, float(m["value"])))
                    header = None
                elif not line.strip():
                    header = None
        else:
            found = [(m["label"], float(m["value"]))
                     for m in re.finditer(g["line"], text, re.M)]
        for label, value in found or [("", None)]:
            if value is None:
                met = None
            elif "at_least" in g:
                met = value >= g["at_least"]
            else:
                met = value <= g["at_most"]
            rows.append((g["script"], g["goal"], label, value, met))
    return rows


def goals_table(outputs):
    """The report's table of goals, met or missed, computed from the outputs."""
    lines = ["### Goals", "", "Computed by `benchmarks/run_all.py` from the ratios below "
             "(of the minimum times over the repeats).", "",
             "| goal | | measured | case |", "|---|---|---|---|"]
    for script, goal, label, value, met in goal_rows(outputs):
        measured = "not measured" if value is None else f"{value:.2f}×"
        verdict = {True: "met", False: "**missed**", None: "**not measured**"}[met]
        lines.append(f"| {goal} (`{script}`) | {verdict} | {measured} | {label or '–'} |")
    return lines


def stored_outputs(report):
    """``{script: output}`` from a report this script wrote."""
    blocks = re.finditer(r"^### `(?P<script>[\w.]+)`\n.*?```text\n(?P<out>.*?)\n```",
                         report, re.M | re.S)
    return {b["script"]: b["out"] for b in blocks}


def regoal(report):
    """The report with its table of goals recomputed from its stored outputs."""
    table = "\n".join(goals_table(stored_outputs(report))) + "\n\n"
    start = report.index("### Goals\n") if "### Goals\n" in report else None
    first = report.index("\n### `", start or 0) + 1
    return report[:first if start is None else start] + table + report[first:]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "report.md")
    parser.add_argument("--regoal", type=Path, default=None, metavar="REPORT",
                        help="recompute the goals of an existing report, measure nothing")
    args = parser.parse_args()
    if args.regoal:
        args.out.write_text(regoal(args.regoal.read_text()))
        print(f"report: {args.out}")
        return

    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    lines = ["## Latest report", "",
             f"Written by `benchmarks/{Path(__file__).name}`"
             f"{' in quick mode (tiny sizes)' if args.quick else ''}. Each benchmark "
             "measures a reference and the candidate in the same run and prints ratios.", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine().items()]
    failed, outputs, sections = [], {}, []
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
        outputs[script.name] = run.stdout
        sections += ["", f"### `{script.name}`", "", f"{status}, {took:.0f} s.", "",
                     "```text", (run.stdout or run.stderr[-2000:]).rstrip(), "```"]
    lines += [""] + goals_table(outputs) + sections
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"report: {args.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
