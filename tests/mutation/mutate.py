"""Mutation testing of the core modules: do their tests notice when the code changes?

Usage: ``python tests/mutation/mutate.py [--jobs 2] [--module bn ...] [--out FILE]`` (``make mutate``);
a run of some modules (``--module cache``) updates their rows of the report, the other rows
coming from the folders that earlier runs left; ``--report`` writes the report from those
folders alone. A folder whose run no longer matches the tree (its module, its test files,
or a module of ``bnutils`` that its tests load, changed since) is refused, with the command
that runs it again.

For each module, mutmut (https://github.com/boxed/mutmut) makes many small changes to its
code, one at a time (an operator swapped, a constant changed, an argument dropped), and
runs the module's own test files (``MODULES`` below) against each. A change that no test
notices "survives". Some survivors cannot change behaviour (a reshape by ``-2`` instead
of ``-1`` is the same reshape in NumPy); those are listed with the reason in
``tests/mutation/equivalent.toml`` and left out of the score, as are the few that only a
GPU can kill (a ``device=`` argument, on a machine without CUDA):

    score = killed / (mutants - equivalent - GPU-only survivors)

Each module runs in its own folder under ``_build/mutation/`` holding a copy of
``bnutils`` and only that module's test files, so a mutant is only credited to the tests
meant to catch it. The script prints the score per module and every surviving mutant, and
writes the report that the book's benchmarks appendix shows. Not part of ``make test``:
it needs ``requirements-mutate.txt`` and takes minutes.

mutmut leaves decorated functions alone, because a decorator may misbehave when called
once per mutant. Ours are harmless (``torch.no_grad()``, ``contextmanager``,
``once_differentiable``, ``staticmethod``) and hold much of the code under test
(Algorithm 2 in ``inference.py``, the hand-written backward pass), so ``_patch_mutmut``
lets mutmut mutate them: the decorators stay on the function that dispatches to the
active mutant, and the mutated copies are left undecorated.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[2]
WORK = ROOT / "_build" / "mutation"
EQUIVALENT = SCRIPT.with_name("equivalent.toml")

# each module and the test files that are meant to catch its mutants
MODULES = {
    "bn": ["test_bn_forward.py", "test_bn_backward.py", "test_properties.py"],
    "layers": ["test_layers.py", "test_bn_backward.py", "test_properties.py"],
    "cache": ["test_cache.py", "test_store.py"],  # the store is reached through train_or_load
    "inference": ["test_inference.py"],
    "norms": ["test_norms.py", "test_properties.py"],
    "batched": ["test_batched.py"],
}
# decorators that are safe around a function that mutmut calls once per mutant
SAFE_DECORATORS = {"torch.no_grad()", "contextmanager", "once_differentiable"}
KEEP_ON_COPIES = {"staticmethod", "classmethod"}
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


# --- running mutmut (in a worker process, inside a module's folder) --------------------


def _patch_mutmut():
    """Let mutmut mutate functions whose decorators are all in ``SAFE_DECORATORS``."""
    import libcst as cst
    from mutmut.mutation import file_mutation as fm

    def text(decorator):
        return cst.Module([]).code_for_node(decorator.decorator)

    skip = fm.MutationVisitor._skip_node_and_children

    def skip_unless_safe(self, node):
        if isinstance(node, cst.FunctionDef) and node.decorators and all(
                text(d) in SAFE_DECORATORS | KEEP_ON_COPIES for d in node.decorators):
            # mutmut would skip it only for its decorators: mutate the body
            return node.name.value in fm.NEVER_MUTATE_FUNCTION_NAMES
        return skip(self, node)

    arrange = fm.function_trampoline_arrangement

    def arrange_undecorated_copies(function, mutants, class_name):
        empty_dicts, nodes, assignments, names = arrange(function, mutants, class_name)
        # nodes[0] dispatches to the active mutant and keeps the decorators; the original
        # and the mutants are plain copies of the body (a contextmanager applied twice breaks)
        copies = [n.with_changes(decorators=[d for d in n.decorators if text(d) in KEEP_ON_COPIES])
                  for n in nodes[1:]]
        return empty_dicts, [nodes[0], *copies], assignments, names

    fm.MutationVisitor._skip_node_and_children = skip_unless_safe
    fm.function_trampoline_arrangement = arrange_undecorated_copies


def worker(jobs):
    """``mutmut run`` in the current folder, with the patch above."""
    _patch_mutmut()
    from mutmut.__main__ import cli

    cli.main(["run", "--max-children", str(jobs)], prog_name="mutmut", standalone_mode=False)


def show(names):
    """The diff of each mutant (as ``mutmut show`` prints it), as JSON, in one process."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    print(json.dumps({name: get_diff_for_mutant(name) for name in names}))


# --- preparing a module's folder and reading its results --------------------------------


def prepare(module):
    """A fresh folder with ``bnutils``, the module's test files and mutmut's configuration."""
    folder = WORK / module
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "tests").mkdir(parents=True)
    shutil.copytree(ROOT / "bnutils", folder / "bnutils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    tests = [ROOT / "tests" / name for name in MODULES[module]]
    tests += [ROOT / "tests" / "conftest.py"] if (ROOT / "tests" / "conftest.py").exists() else []
    for path in tests:
        shutil.copy(path, folder / "tests")
    shutil.copy(ROOT / "_config.yml", folder)  # test_store reads the book's repository
    (folder / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["bnutils"]\n'
        'also_copy = ["_config.yml"]\n'
        f'only_mutate = ["bnutils/{module}.py"]\n'
        'pytest_add_cli_args_test_selection = ["tests"]\n'
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
        "use_git_change_detection = false\n"
    )
    return folder


def _run_in(folder, *args):
    """``args`` run in ``folder``; their output."""
    return subprocess.run(args, cwd=folder, capture_output=True, text=True, check=True).stdout


def _changed_lines(diff):
    """The removed and the added code of a mutant's diff, each on one line."""
    def joined(sign):
        lines = [ln[1:] for ln in diff.splitlines()
                 if ln.startswith(sign) and not ln.startswith(sign * 3)]
        return " ".join(" ".join(lines).split())
    return joined("-"), joined("+")


def _function(name):
    """``bnutils.bn.x_batchnorm_forward__mutmut_13`` -> ``batchnorm_forward``;
    ``...xǁ_BatchNormǁforward__mutmut_3`` -> ``_BatchNorm.forward``."""
    short = re.sub(r"__mutmut_\d+$", "", name.rsplit(".", 1)[1])
    return short[2:].replace("ǁ", ".")


def results(module, folder, equivalents):
    """Counts and survivors of one module, with survivors sorted into real and equivalent."""
    statuses = {}
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    for line in _run_in(folder, mutmut, "results", "--all", "true").splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    alive = [name for name, status in statuses.items() if status not in KILLED]
    diffs = json.loads(_run_in(folder, sys.executable, str(SCRIPT), "--show", *alive)) if alive else {}
    known = {(e["function"], " ".join(e["original"].split()), " ".join(e["mutant"].split())): e
             for e in equivalents.get(module, [])}
    survivors, equivalent, gpu_only = [], [], []
    for name, status in sorted(statuses.items(), key=lambda kv: _natural(kv[0])):
        if status in KILLED:
            continue
        original, mutant = _changed_lines(diffs[name])
        entry = {"name": name, "status": status, "function": _function(name),
                 "original": original, "mutant": mutant}
        match = known.get((entry["function"], original, mutant))
        if match is None:
            survivors.append(entry)
        elif match.get("cuda"):  # a fair survivor, but one that no CPU can kill
            gpu_only.append({**entry, "reason": match["reason"]})
        else:
            equivalent.append({**entry, "reason": match["reason"]})
    total = len(statuses)
    killed = sum(s in KILLED for s in statuses.values())
    scored = total - len(equivalent) - len(gpu_only)
    return {"module": module, "tests": MODULES[module], "mutants": total, "killed": killed,
            "equivalent": equivalent, "gpu_only": gpu_only, "survivors": survivors,
            "score": killed / scored if scored else 1.0}


def _natural(name):
    head, _, number = name.rpartition("_")
    return (head, int(number) if number.isdigit() else 0)


def _load_equivalents():
    try:
        import tomllib
    except ImportError:  # Python 3.10: mutmut brings the older toml package
        import toml as tomllib
    return tomllib.loads(EQUIVALENT.read_text())


# --- the report -----------------------------------------------------------------------


def _code(text):
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`" if text else "(removed)"


def report(rows, info):
    lines = ["Written by `tests/mutation/mutate.py` (`make mutate`). Each module's mutants run against "
             "its own test files; score = killed / (mutants − equivalent − GPU-only).", "",
             "| run | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "| module | tests | mutants | killed | equivalent | GPU-only | survived | score |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tests = ", ".join(t.removesuffix(".py") for t in r["tests"])
        lines.append(f"| `{r['module']}.py` | {tests} | {r['mutants']} | {r['killed']} | "
                     f"{len(r['equivalent'])} | {len(r['gpu_only'])} | {len(r['survivors'])} | "
                     f"{100 * r['score']:.1f}% |")
    lines += ["", "### Surviving mutants", ""]
    survivors = [(r["module"], s) for r in rows for s in r["survivors"]]
    if not survivors:
        lines.append("None: every mutant that changes behaviour is caught by a test.")
    else:
        lines += ["| module | function | code | mutant | status |", "|---|---|---|---|---|"]
        lines += [f"| {m} | `{s['function']}` | {_code(s['original'])} | {_code(s['mutant'])} | "
                  f"{s['status']} |" for m, s in survivors]
    lines += ["", "### Equivalent mutants",  "",
              "Survivors that cannot change what the code computes, with the reason "
              "(`tests/mutation/equivalent.toml`).", "",
              "| module | function | code | mutant | why it is equivalent |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['module']} | `{e['function']}` | {_code(e['original'])} | "
              f"{_code(e['mutant'])} | {e['reason']} |" for r in rows for e in r["equivalent"]]
    gpu_only = [(r["module"], e) for r in rows for e in r["gpu_only"]]
    if gpu_only:
        lines += ["", "### Mutants that only a GPU can kill", "",
                  "Behaviour changes that a machine without CUDA cannot show; "
                  "the `test_on_cuda` tests of `test_layers.py` and `test_batched.py` kill them "
                  "where a GPU is present.", "",
                  "| module | function | code | mutant | what changes |", "|---|---|---|---|---|"]
        lines += [f"| {m} | `{e['function']}` | {_code(e['original'])} | {_code(e['mutant'])} | "
                  f"{e['reason']} |" for m, e in gpu_only]
    return "\n".join(lines) + "\n"


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _commit():
    """The checked-out commit, marked ``-dirty`` when the tree has uncommitted changes."""
    return _git("describe", "--always", "--dirty", "--abbrev=7")


def _summary(row):
    """One module's counts and score, on one line."""
    return (f"{row['module'] + '.py':14s} {row['mutants']:4d} mutants, {row['killed']:4d} killed, "
            f"{len(row['equivalent']):3d} equivalent, {len(row['gpu_only'])} GPU-only, "
            f"{len(row['survivors']):3d} survived: score {100 * row['score']:5.1f}%")


def _info(time_text):
    """The report's header: date, commit, versions and how long the runs took."""
    import mutmut

    return {"date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "commit": _commit(),
            "mutmut / Python": f"{mutmut.__version__} / {platform.python_version()}",
            "time": time_text}


def changed_since(folder, root=ROOT):
    """The Python files of ``bnutils`` and of the tests that differ between the copies a
    module's run made in ``folder`` and the tree at ``root`` (or exist in only one)."""
    changed = []
    for part, pattern in (("bnutils", "**/*.py"), ("tests", "*.py")):
        ours = {p.relative_to(root) for p in (root / part).glob(pattern)
                if "__pycache__" not in p.parts}
        theirs = {p.relative_to(folder) for p in (folder / part).glob(pattern)
                  if "__pycache__" not in p.parts}
        if part == "tests":  # the run copied only the module's own test files
            ours &= theirs
        changed += [p for p in ours ^ theirs]
        changed += [p for p in ours & theirs
                    if (root / p).read_bytes() != (folder / p).read_bytes()]
    return sorted(str(p) for p in changed)


def loaded_modules(folder, tests):
    """The files of ``bnutils`` that importing ``tests`` (pytest's collection) loads, in
    ``folder``. Imports inside functions are not seen; in the mutated modules and what
    they import there are none (``cache`` is run again whenever anything changed)."""
    code = ("import json, sys, pytest\n"
            "pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', *sys.argv[1:]])\n"
            "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()\n"
            "                        if n.split('.')[0] == 'bnutils')))")
    out = _run_in(folder, sys.executable, "-c", code, *[f"tests/{t}" for t in tests])
    files = json.loads(out.strip().splitlines()[-1])
    return sorted(str(Path(f).resolve().relative_to(folder.resolve())) for f in files)


def stale(module, changed, loaded):
    """What in ``changed`` invalidates ``module``'s run: the module, its test files, or a
    module of ``bnutils`` its tests load. ``cache``'s tests reach the store and the
    results lazily, so any change to ``bnutils`` counts for it."""
    own = {f"bnutils/{module}.py", "tests/conftest.py", *(f"tests/{t}" for t in MODULES[module])}
    if module == "cache":
        return [c for c in changed if c.startswith("bnutils/") or c in own]
    return [c for c in changed if c in own or c in loaded]


def _run_line(module, folder, changed):
    """When and at which commit a module ran, and what changed since that its tests do
    not load."""
    run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
    date = run.get("date") or datetime.datetime.fromtimestamp(
        (folder / "mutants").stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    since = f"; since changed, not loaded by its tests: {', '.join(changed)}" if changed else ""
    return f"{date}, commit {run.get('commit', 'not recorded')}{since}"


def report_from_folders(equivalents, out):
    """The report from the folders that earlier runs left (``--module`` runs done one
    after another, or a survivor run again after a new test): each module's mutants and
    statuses are read from its folder, the equivalents from today's list. A run that the
    tree has outdated stops it, with the ``make mutate`` command that runs it again."""
    missing = [m for m in MODULES if not (WORK / m / "mutants").is_dir()]
    if missing:
        sys.exit(f"no run of {', '.join(missing)} in {WORK}: make mutate MUTATE_ARGS='--module ...'")
    changed = {m: changed_since(WORK / m) for m in MODULES}
    outdated = {}
    for m in MODULES:
        loaded = loaded_modules(WORK / m, MODULES[m]) if changed[m] else []
        if found := stale(m, changed[m], loaded):
            outdated[m] = found
    if outdated:
        lines = [f"  {m}: {', '.join(files)} changed since its run" for m, files in outdated.items()]
        args = " ".join(f"--module {m}" for m in outdated)
        sys.exit("outdated runs:\n" + "\n".join(lines)
                 + f"\nrun them again: make mutate MUTATE_ARGS='{args}'")
    rows = [results(m, WORK / m, equivalents) for m in MODULES]
    runs = [WORK / m / "run.json" for m in MODULES]
    seconds = sum(json.loads(r.read_text())["seconds"] for r in runs if r.exists())
    info = _info(f"{seconds / 60:.1f} min wall over the modules' runs, {os.cpu_count()} cores")
    info["commit"] = f"{info['commit']} (this report); each module's run below"
    info.update({f"run of `{m}.py`": _run_line(m, WORK / m, changed[m]) for m in MODULES})
    for r in rows:
        print(_summary(r))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(rows, info))
    print(f"report: {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="mutants tested in parallel (default: the number of cores)")
    parser.add_argument("--module", action="append", choices=list(MODULES),
                        help="only this module (repeatable); default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation.md",
                        help="the Markdown report (after a run of some modules, from "
                        "the other modules' earlier runs where they still match the tree)")
    parser.add_argument("--report", action="store_true",
                        help="no new run: write the report from every module's folder of "
                        "earlier runs (each run keeps its folder under _build/mutation)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--show", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.jobs)
    if args.show:
        return show(args.show)

    modules = args.module or list(MODULES)
    equivalents = _load_equivalents()
    if args.report:
        return report_from_folders(equivalents, args.out)
    if "cache" in modules and not os.environ.get("BNUTILS_DATA"):
        # its tests that load MNIST would skip, and their mutants survive
        sys.exit("the tests of cache.py need the MNIST files: set BNUTILS_DATA "
                 "(e.g. BNUTILS_DATA=../shared/mnist make mutate)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BNBOOK_QUICK": "1"}
    start, rows = time.monotonic(), []
    for module in modules:
        folder, commit = prepare(module), _commit()  # the code this run copies
        t0 = time.monotonic()
        env["BNUTILS_RESULTS"] = str(folder / "results")
        with open(folder / "mutmut.log", "w") as log:
            run = subprocess.run([sys.executable, str(SCRIPT), "--worker",
                                  "--jobs", str(args.jobs)], cwd=folder, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
        if run.returncode:
            sys.exit(f"mutmut failed on {module}.py; see {folder / 'mutmut.log'}")
        row = results(module, folder, equivalents)
        rows.append(row)
        (folder / "run.json").write_text(json.dumps({
            "seconds": time.monotonic() - t0, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}))
        print(f"{_summary(row)}  ({time.monotonic() - t0:.0f} s)", flush=True)
        for s in row["survivors"]:
            print(f"    {s['status']:9s} {s['function']}: {s['original']}  ->  {s['mutant']}")
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    print(f"total: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU, {args.jobs} parallel job(s)")
    info = _info(f"{wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU, "
                 f"{args.jobs} parallel job(s), {os.cpu_count()} cores")
    (WORK / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    if set(modules) != set(MODULES):  # the other rows from their earlier runs, if current
        try:
            return report_from_folders(equivalents, args.out)
        except SystemExit as why:
            print(f"report not written: {why}")
            return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, info))
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
