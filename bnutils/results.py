"""``make results``: compute the runs the full book reads into the store ``results/``.

Usage: ``python -m bnutils.results [--chapter NN] [--plan | --replay]`` (``make
results CHAPTER=NN``; ``make replay`` replays every stored run whole). The design:

- **The notebooks are the list of runs.** The driver executes each chapter notebook,
  in full mode, with ``BNBOOK_TRAIN=store`` (``bnutils.store``): every
  ``train_or_load`` the chapter makes is served from the store, re-keyed, or computed
  and written. So the store holds exactly the runs the book reads, under the keys the
  build computes, with no second list to keep in step; a forbid-mode build (``make
  book``, CI) proves it.
- **Independent runs train at once**, one worker process per core, where the chapter
  hands them to ``bnutils.experiments.parallel.prefill`` (chapters 5 to 7); on a GPU,
  ``bnutils.device()`` puts them there.
- **Each run is written when it finishes** (atomically), so an interrupted job resumes
  where it stopped: the next execution finds the finished runs in the store.
- **The plan** comes from the previous computation: ``manifest.json`` lists the runs
  each notebook read, and each entry records its wall-clock seconds and the training
  rates measured when it was computed; the driver measures the rates again at the
  start (``measure_rates``: network-steps per second of Figure 1's MLP and of chapter
  6's CNN, on one thread) and scales. A run that the manifest does not know (a new
  experiment, a new setting) is estimated when it starts, from its configuration
  (``estimate``), and added to the total; so the time left is shown for the whole job.
- **Re-keyed runs are verified whole**: runs that ``bnutils.store`` re-keyed after a
  prefix replay are, per experiment name and length (``steps``), replayed whole once
  (the cheapest), by executing the notebook again with training forbidden; if that
  fails, the name's re-keyed runs are deleted and computed.
- **The manifest** is rewritten per notebook from what its execution read; entries no
  notebook reads any more are deleted.
"""

import argparse
import json
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

from . import store

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "_build" / "results"  # the executed notebooks, for a look after a job


# --- rates and estimates --------------------------------------------------------------


def measure_rates(steps=60, device=None):
    """Training network-steps per CPU-second on one thread: ``{"mlp": ..., "cnn": ...}``.

    ``mlp``: a stack of 6 of Figure 1's sigmoid MLPs (784-100-100-100-10, batch 60);
    ``cnn``: chapter 6's ``small_cnn`` with BN (batch 64, channels last, momentum SGD).
    Random inputs: the speed does not depend on the pixels. On a CPU, CPU time, not
    wall-clock time: a machine shared with other jobs gives the rate of one core of its
    own; on a GPU, wall-clock time.
    """
    import torch
    from torch.nn import functional as F

    from . import config
    from .batched import StackedMLP, train_stacked
    from .models import small_cnn

    dev = device or config.device()
    gpu = dev.type == "cuda"

    def clock():  # a GPU's time is the wall clock's, once its queue is empty
        if gpu:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(6000, 784, generator=g).to(dev), torch.randint(0, 10, (6000,)).to(dev)
        model = StackedMLP(6, norm=True, init_std=0.05, seeds=list(range(6))).to(dev)
        train_stacked(model, x, y, 5, 0.5, progress=False)  # warm up
        start = clock()
        train_stacked(model, x, y, steps, 0.5, progress=False)
        mlp = 6 * steps / (clock() - start)

        net = small_cnn(norm="bn").to(dev, memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        images = torch.randn(64, 1, 28, 28, generator=g).to(dev).contiguous(
            memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (64,)).to(dev)

        def step():
            opt.zero_grad()
            F.cross_entropy(net(images), labels).backward()
            opt.step()

        for _ in range(3):
            step()
        start = clock()
        for _ in range(steps // 3):
            step()
        cnn = (steps // 3) / (clock() - start)
    finally:
        torch.set_num_threads(threads)
    return {"mlp": round(mlp, 1), "cnn": round(cnn, 1)}


GRID = ("lrs", "init_stds", "seeds", "scales", "rates", "nets", "batch_sizes", "momenta")


def _steps_per_size(steps, sizes):
    """``steps`` when it lists one length per batch size, else None."""
    if (isinstance(steps, list) and isinstance(sizes, list) and len(steps) == len(sizes)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)):
        return steps
    return None


def estimate(name, config):
    """``(kind, network-steps)`` of a run from its name and configuration, or None.

    ``kind`` is the rate that applies (``measure_rates``): ``cnn`` for chapter 6 and 7's
    CNN runs, ``mlp`` for the rest. The count is ``steps`` times the sizes of the grid
    arguments the configuration lists (rates, seeds, scales, ...), twice for Figure 1's
    two stacks; where ``steps`` lists a length per batch size, their sum times the other
    grid arguments. A rough guide for runs no previous computation has timed.
    """
    steps = config.get("steps")
    per_size = _steps_per_size(steps, config.get("batch_sizes"))
    if per_size is None and (not isinstance(steps, int) or isinstance(steps, bool)):
        return None
    nets = 1
    for arg in GRID:
        if isinstance(config.get(arg), list) and not (per_size and arg == "batch_sizes"):
            nets *= max(1, len(config[arg]))
    if per_size:  # chapter 9 at equal examples: each batch size its own length
        steps = sum(per_size)
    if name.startswith("figure1"):
        nets *= 2  # without and with BN
    kind = "cnn" if re.match(r"(figure3|cnn)-", name) else "mlp"
    return kind, nets * steps


def _seconds(rates, kind_steps, recorded=None):
    """Core-seconds now: a recorded time scaled by the rates, else network-steps / rate."""
    if kind_steps is None:
        return None
    kind, net_steps = kind_steps
    if recorded and recorded.get("seconds") and recorded.get("rates", {}).get(kind):
        return recorded["seconds"] * recorded["rates"][kind] / rates[kind]
    return net_steps / rates[kind]


# --- the plan -------------------------------------------------------------------------


def plan(notebooks, folder, rates):
    """One row per run the previous computation read for ``notebooks``: ``notebook``,
    ``key``, ``name``, ``stored`` (its files are there) and ``seconds`` (core-seconds
    to compute it now, None when unknown)."""
    manifest = store.read_manifest(folder)["notebooks"]
    entries = store.read_entries(folder)
    rows = []
    for nb in notebooks:
        for key in manifest.get(nb, []):
            doc = entries.get(key)
            name = doc["name"] if doc else key.rsplit("-", 1)[0]
            prov = (doc or {}).get("provenance", {})
            guess = estimate(name, doc["config"]) if doc else None
            rows.append({"notebook": nb, "key": key, "name": name, "stored": doc is not None,
                         "config": doc["config"] if doc else None,
                         "seconds": _seconds(rates, guess, prov)})
    return rows


def print_plan(rows, notebooks, rates, workers):
    print(f"make results: {len(notebooks)} notebook(s); training rates on one thread: "
          f"{rates['mlp']:,.0f} MLP network-steps/s, {rates['cnn']:,.0f} CNN steps/s")
    total = 0.0
    for nb in notebooks:
        mine = [r for r in rows if r["notebook"] == nb]
        known = [r["seconds"] for r in mine if r["seconds"] is not None]
        total += sum(known)
        unknown = len(mine) - len(known)
        note = f", {unknown} not estimated" if unknown else ""
        if not mine:
            print(f"  {nb}: no previous computation; runs are estimated as they start")
        else:
            print(f"  {nb}: {len(mine)} runs, {sum(r['stored'] for r in mine)} stored; "
                  f"{_core(sum(known))} to compute them all{note}")
    print(f"  in all: at most {_core(total)}, about "
          f"{_clock(total / workers)} on {workers} core(s), if the notebooks ask for the "
          f"runs they read last time (a changed setting's runs are estimated as they "
          f"start). Runs whose key still matches the code load at once; runs of older "
          f"code replay their first steps and are re-keyed when they match.")


def _core(seconds):
    return (f"{seconds / 3600:.2f} core-hours" if seconds >= 3600
            else f"{seconds / 60:.0f} core-minutes")


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --- progress -------------------------------------------------------------------------


class Progress:
    """A live line for the whole job, from the job log that the runs append to: runs
    done and running, core-hours done of the estimate, and the time left.

    A run is known by its name and configuration (its key changes with the code): a
    planned run that is served (its key still matches) or re-keyed costs nothing, one
    that starts is counted at its estimate, a run no plan knew is added when it starts.
    A changed setting (more steps, say) starts runs no plan knew in place of planned
    ones: such a run replaces the untouched planned run of its name whose configuration
    is nearest, costs that run's time scaled by their network-steps, and the replaced
    run costs nothing (else the job would count both).
    A planned run that another job over the same store (``folder``) wrote since this one
    started, and that this job did not start, costs this job nothing either.
    """

    def __init__(self, log, rows, rates, workers, stream=sys.stderr, folder=None):
        self.log, self.rates, self.workers, self.stream = log, rates, workers, stream
        self.folder = folder
        self.planned = {_run_id(r["name"], r["config"]): r for r in rows}
        self.by_key = {r["key"]: i for i, r in self.planned.items()}
        self.cost = {i: r["seconds"] or 0.0 for i, r in self.planned.items()}
        self.replaced = {}  # a started run no plan knew -> the planned run it replaces
        self.start, self.stop_event = time.time(), threading.Event()
        self.tty = stream.isatty()
        self.last = 0.0

    def settle(self, notebook):
        """After ``notebook``: its planned runs that it did not ask for cost nothing."""
        touched = self._touched(store.read_log(self.log))
        for i, row in self.planned.items():
            if row["notebook"] == notebook and i not in touched:
                self.cost[i] = 0.0

    def state(self):
        started, finished = {}, set()
        log = store.read_log(self.log)
        for r in log:
            i = (_run_id(r["name"], r["config"]) if "config" in r
                 else self.by_key.get(r["key"], r["key"]))
            if r["event"] == "start":
                started[r["key"]] = (i, r["time"])
                if i not in self.planned and i not in self.replaced:
                    self._replace(i, r["name"], r["config"], log)
                if not self.cost.get(i):
                    self.cost[i] = _seconds(self.rates, estimate(r["name"], r["config"])) or 0
            elif r["event"] == "done":
                finished.add(started.get(r["key"], (i,))[0])
            elif r["event"] in ("read", "rekey"):  # nothing to train
                self.cost[i] = 0.0
        ours = {i for i, _ in started.values()}
        for i in self._written_elsewhere() - ours:
            self.cost[i] = 0.0
        total = sum(self.cost.values())
        done = sum(self.cost.get(i, 0.0) for i in finished)
        now = time.time()
        running = [(i, t) for k, (i, t) in started.items() if i not in finished]
        busy = sum(min(now - t, self.cost.get(i, 0.0)) for i, t in running)
        elapsed = now - self.start
        speed = (done + busy) / elapsed if done + busy > 0 and elapsed > 60 else self.workers
        left = max(0.0, total - done - busy) / max(speed, 1e-9)
        return {"finished": len(finished), "running": len(running), "done": done + busy,
                "total": total, "elapsed": elapsed, "left": left}

    def _touched(self, log):
        """The planned runs the job log names (served, re-keyed or started)."""
        return ({self.by_key.get(r["key"]) for r in log}
                | {_run_id(r["name"], r["config"]) for r in log if "config" in r})

    def _replace(self, i, name, config, log):
        """Count run ``i`` (no plan knew it) in place of its nearest untouched twin."""
        self.replaced[i] = None  # unless a twin is found below
        touched = self._touched(log)
        twins = [j for j, row in self.planned.items() if row["name"] == name
                 and j not in touched and j not in self.replaced.values()
                 and row["seconds"] and row["config"] is not None]
        new = estimate(name, config)
        if not twins or new is None:
            return

        def distance(j):
            old = self.planned[j]["config"]
            differ = sum(old.get(k) != config.get(k) for k in set(old) | set(config))
            steps = (estimate(name, old) or (None, 1))[1]
            return differ, abs(math.log(max(steps, 1) / max(new[1], 1)))

        j = min(twins, key=distance)
        old = estimate(name, self.planned[j]["config"])
        if old is None or old[0] != new[0] or not old[1]:
            return
        self.replaced[i] = j
        self.cost[i] = self.cost[j] * new[1] / old[1]
        self.cost[j] = 0.0

    def _written_elsewhere(self):
        """The runs whose entries appeared in the store since this job started."""
        found = set()
        for path in self.folder.glob("*.json") if self.folder else ():
            try:
                if path.stat().st_mtime < self.start:
                    continue
                doc = json.loads(path.read_text())
            except (OSError, ValueError):  # being written: next time
                continue
            if isinstance(doc, dict) and "name" in doc and "config" in doc:
                found.add(_run_id(doc["name"], doc["config"]))
        return found

    def line(self):
        s = self.state()
        return (f"runs: {s['finished']} computed, {s['running']} running | "
                f"{s['done'] / 3600:.2f} of ~{s['total'] / 3600:.2f} core-h | "
                f"elapsed {_clock(s['elapsed'])}, left ~{_clock(s['left'])}")

    def _loop(self):
        while not self.stop_event.wait(2.0):
            if self.tty:
                self.stream.write("\r" + self.line()[:150].ljust(150))
                self.stream.flush()
            elif time.time() - self.last >= 60:  # a log file: a line a minute
                self.last = time.time()
                print(self.line(), file=self.stream, flush=True)

    def __enter__(self):
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        if self.tty:
            self.stream.write("\n")
        print(self.line(), file=self.stream, flush=True)


def _run_id(name, config):
    return f"{name}:{json.dumps(config, sort_keys=True)}"


# --- executing the notebooks ----------------------------------------------------------


def execute(path, env, out=None):
    """Execute notebook ``path`` in a fresh kernel whose environment is ``env``; save the
    executed copy in ``out``. A failing cell raises (nbclient's CellExecutionError)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel inherits it
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out / path.name)


def job_env(folder, logs, notebook, rates, train="store"):
    """The environment of a kernel of this job: full mode, the store, its logs, pinned
    numerics (``store.NUMERICS``)."""
    return {"BNBOOK_QUICK": "0", "BNBOOK_TRAIN": train, "BNBOOK_NOTEBOOK": notebook,
            "BNBOOK_PROGRESS": "summary", store.STORE_ENV: str(folder),
            store.JOB_LOG_ENV: str(logs / "job.jsonl"),
            store.READS_ENV: str(logs / f"reads-{notebook}.jsonl"),
            store.REPLAY_LOG_ENV: str(logs / f"replays-{notebook}.jsonl"),
            "BNBOOK_RATES": json.dumps(rates), **store.NUMERICS}


def compute_notebook(path, folder, logs, rates, out=EXECUTED):
    """Execute one notebook in store mode, verify its re-keyed runs, update the manifest.

    Returns the keys the notebook read."""
    nb = path.stem
    env = job_env(folder, logs, nb, rates)
    for name in ("reads", "replays"):
        (logs / f"{name}-{nb}.jsonl").unlink(missing_ok=True)
    before = len(store.read_log(env[store.JOB_LOG_ENV]))
    execute(path, env, out)
    rekeyed = [r for r in store.read_log(env[store.JOB_LOG_ENV])[before:]
               if r["event"] == "rekey" and r.get("notebook") == nb]
    failed = verify_rekeyed(path, folder, logs, rates, rekeyed)
    if failed:
        for r in rekeyed:
            if r["name"] in failed:
                for suffix in (".json", ".npz"):
                    (folder / f"{r['key']}{suffix}").unlink(missing_ok=True)
        print(f"{nb}: the whole replay of {', '.join(sorted(failed))} does not match: "
              f"computing their runs instead of re-keying them")
        (logs / f"reads-{nb}.jsonl").unlink(missing_ok=True)
        execute(path, {**env, store.NO_REKEY_ENV: ",".join(sorted(failed))}, out)
    reads = {r["key"] for r in store.read_log(env[store.READS_ENV])}
    manifest = store.read_manifest(folder)
    manifest["notebooks"][nb] = sorted(reads)
    store.write_manifest(folder, manifest)
    return reads


def verify_rekeyed(path, folder, logs, rates, rekeyed):
    """Replay whole the cheapest re-keyed run of each name and length; record it in the
    entries. Per length, because a change that acts only after a short pilot's last step
    passes the pilot's whole replay and must still meet a run of every length.

    Returns the names whose whole replay failed."""
    if not rekeyed:
        return set()
    entries = store.read_entries(folder)
    groups = {}
    for r in rekeyed:
        steps = entries[r["key"]]["config"].get("steps")
        groups.setdefault((r["name"], json.dumps(steps)), []).append(r["key"])
    chosen = {group: min(keys, key=lambda k: entries[k]["provenance"].get("seconds") or 0)
              for group, keys in groups.items()}
    nb = path.stem
    env = job_env(folder, logs, nb, rates, train="forbid")
    env[store.WHOLE_ENV] = ",".join(chosen.values())
    env[store.READS_ENV] = str(logs / f"verify-reads-{nb}.jsonl")
    env[store.REPLAY_LOG_ENV] = str(logs / f"verify-{nb}.jsonl")
    Path(env[store.REPLAY_LOG_ENV]).unlink(missing_ok=True)
    try:
        execute(path, env)  # stops at the first whole replay that does not match
    except Exception:
        if not any(not r["ok"] for r in store.read_log(env[store.REPLAY_LOG_ENV])):
            raise  # something else went wrong
    results = {r["key"]: r for r in store.read_log(env[store.REPLAY_LOG_ENV]) if r["whole"]}
    failed = set()
    for group, key in chosen.items():
        report = results.get(key)
        if report is None or not report["ok"]:
            failed.add(group[0])
            continue
        for k in groups[group]:
            _set_whole_check(folder / f"{k}.json", key)
    return failed


def _set_whole_check(meta, key):
    doc = json.loads(meta.read_text())
    doc["provenance"]["rekeyed"][-1]["whole_check"] = key
    tmp = meta.with_name(f".{meta.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, meta)


def prune(folder):
    """Delete the entries that no notebook of the manifest reads. Returns their keys."""
    listed = {k for keys in store.read_manifest(folder)["notebooks"].values() for k in keys}
    gone = sorted(set(store.read_entries(folder)) - listed)
    for key in gone:
        for suffix in (".json", ".npz"):
            (folder / f"{key}{suffix}").unlink(missing_ok=True)
    return gone


def replay_all(paths, folder):
    """``make replay``: execute the notebooks with training forbidden and every stored
    run they read replayed whole. Returns 0 when all match, else 1."""
    logs = ROOT / "_build" / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failed = []
    for path in paths:
        env = job_env(folder, logs, path.stem, {}, train="forbid")
        env[store.WHOLE_ENV] = "*"
        Path(env[store.REPLAY_LOG_ENV]).unlink(missing_ok=True)
        try:
            execute(path, env)
        except Exception as err:  # a mismatch stops the notebook: report it, go on
            print(f"{path.stem}: {str(err).splitlines()[-1][:300]}")
        replays = store.read_log(env[store.REPLAY_LOG_ENV])
        failed += [r for r in replays if not r["ok"]]
        print(f"{path.stem}: {sum(r['ok'] for r in replays)} of {len(replays)} stored runs "
              f"replay whole within the tolerance")
    return 1 if failed else 0


def check_data():
    """Stop before hours of training unless the full data sets load (the store holds
    results on them only, ``bnutils.store``)."""
    import warnings

    from . import data

    for dataset in data.DATASETS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                source = data.fingerprint("train", dataset=dataset)["source"]
        except data.DataError as err:
            raise SystemExit(f"make results needs the full {dataset} data: {err}") from err
        if source != "full":
            raise SystemExit(f"make results needs the full {dataset} data, not the bundled "
                             f"subset: set {data.DATASETS[dataset].env} to the folder of "
                             f"its files, or connect to the internet")


def chapter_notebooks(chapter=None, folder=NOTEBOOKS):
    """The chapter notebooks, in order; ``chapter`` ("05" or "5") picks one."""
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if chapter is None or chapter == "":
        return paths
    wanted = f"{int(chapter):02d}_" if str(chapter).isdigit() else None
    chosen = [p for p in paths if wanted and p.name.startswith(wanted)]
    if not chosen:
        raise SystemExit(f"no notebook for CHAPTER={chapter}: the chapters are "
                         f"{', '.join(p.name[:2] for p in paths)}")
    return chosen


def main(argv=None):
    from .experiments.parallel import workers_default

    parser = argparse.ArgumentParser(prog="make results", description=__doc__.split("\n")[0])
    parser.add_argument("--chapter", default=os.environ.get("CHAPTER"),
                        help="one chapter, e.g. 06 (default: all)")
    parser.add_argument("--plan", action="store_true", help="print the plan and stop")
    parser.add_argument("--replay", action="store_true",
                        help="replay every stored run whole instead (make replay)")
    args = parser.parse_args(argv)
    folder = store.root() or ROOT / "results"
    folder.mkdir(exist_ok=True)
    if not (folder / store.MANIFEST).exists():
        store.write_manifest(folder, {"notebooks": {}})
    paths = chapter_notebooks(args.chapter)
    if args.replay:
        return replay_all(paths, folder)
    check_data()
    workers = workers_default()
    os.environ.update(store.NUMERICS)
    rates = measure_rates()
    rows = plan([p.stem for p in paths], folder, rates)
    print_plan(rows, [p.stem for p in paths], rates, workers)
    if args.plan:
        return 0
    logs = ROOT / "_build" / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "job.jsonl").unlink(missing_ok=True)
    start = time.time()
    with Progress(logs / "job.jsonl", rows, rates, workers, folder=folder) as progress:
        for path in paths:
            compute_notebook(path, folder, logs, rates)
            progress.settle(path.stem)
    gone = prune(folder)
    job = store.read_log(logs / "job.jsonl")
    computed = [r for r in job if r["event"] == "done"]
    print(f"make results: {len(computed)} runs computed "
          f"({_core(sum(r['seconds'] for r in computed))}), "
          f"{sum(r['event'] == 'rekey' for r in job)} re-keyed, {len(gone)} unread "
          f"entries deleted, in {_clock(time.time() - start)}. The store: "
          f"{sum(p.stat().st_size for p in folder.iterdir()) / 1e6:.1f} MB in {folder}. "
          f"Commit it (git add {folder.name}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
