"""The committed results store, ``results/``: runs too long for a build, computed once.

``bnutils.cache.train_or_load`` looks a run up here first, then in the local cache
(``BNUTILS_RESULTS``). What it does with a run that neither holds depends on
``BNBOOK_TRAIN`` (``bnutils.config.train_mode``), read at every call:

- ``allow`` (the default: JupyterLab, Colab, a script): train it and cache it locally,
  with its progress shown. A learner who edits a cell or a setting changes the run's
  key (the configuration and the code), so the store never answers for it.
- ``forbid`` (``make book``, CI): stop, naming the run and the ``make results``
  command that computes it. The local cache is not read either: what a forbid-mode
  build shows is what a fresh clone shows.
- ``store`` (``make results``): train it and write it here, with its provenance.

**An entry** is a result in the cache's own format, ``<key>.npz`` (arrays) and
``<key>.json`` (the rest, and the metadata), never pickle. Its key is the cache's key,
so it serves exactly the code and configuration that computed it. Its JSON holds
``provenance``: the commit, Python, PyTorch and NumPy versions, the device and the
CPU or GPU model, threads, date, wall-clock seconds, the notebook that computed it,
and, when it was re-keyed, from which key and how it was verified (see below).
``manifest.json`` lists, per notebook, the entries its full-mode execution reads.

**Data.** An entry is computed on the full data sets (``make results`` refuses the
bundled MNIST subset) and records their checksums. It is served whatever data the
serving process can load: a build with no internet and no data folders reads it as
it is. The bundled subset never enters the store; and a process that has loaded the
subset keeps saying so (``bnutils.data.remember``), so what it trains itself is cached
as computed on the subset, never as on the full data.

**Fetching.** A pip install (Colab) has no ``results/``: ``fetch`` downloads an entry
that a notebook asks for from the published store (``URL``, the repository's main
branch), checks its arrays against the checksum in its metadata, and keeps it in
``FETCHED``; a run the published store lacks (another setting), or that cannot be
reached, trains there instead.

**Replay.** ``replay`` recomputes a stored run under the current code and compares it
with the entry. A prefix replay runs the same call with the same configuration, and
stops every training loop after ``n`` steps (``bnutils.config.step_limit``: loops go
through ``bnutils.progress``), so the learning-rate schedule and everything else that
depends on the run's length are the stored run's. ``n`` is ``REPLAY_STEPS`` where the
run logs a series over its first steps (a per-step loss, a trace), else the first
logged step after it. Then every value of the replayed result is matched against the
entry, within ``TOLERANCE``: a value that has a log axis (an axis along which the
replay is shorter) must equal the entry's first ``n`` logs; a value without one is an
end-of-run value (final accuracy, a divergence flag), which a prefix replay cannot
reproduce and a whole replay compares. Timings (keys ending in ``seconds``) are never
compared. No experiment declares anything: a replay that cannot line up a value
fails, loudly. A run whose prefix has no logged series to compare (it logs only at its
end), or that is no longer than ``n``, is replayed whole, except in a build (CI): there
its replay is logged as skipped, and the whole replays drawn over the commits check it
(a test keeps every such run among those drawn from). A replay runs with the
entry's numerics: the same device and kernels (``NUMERICS``, which ``make results``
and CI pin) and as many threads; elsewhere it is refused, not loosened, because small
differences grow exponentially in some of the book's runs (see ``TOLERANCE``).

**Re-keying.** A change of code that leaves the numbers alone (a docstring, a
refactor) changes the keys. In ``store`` mode, a run whose key is missing but whose
name and configuration match an entry of older code is replayed (prefix); if every
value matches, the entry is written under the new key, ``provenance["rekeyed"]``
saying from which key, at which commit, over how many steps, with the largest
difference. ``make results`` then replays one such entry of each experiment name and
length in full (``python -m bnutils.results``); if that fails, the name's re-keyed
entries are deleted and computed again. A change that acts on the numbers from the
first steps on fails the prefix replay; one that acts only later (a schedule, a final
evaluation) fails the whole replay of its name and length; CI replays every entry's prefix and one whole
entry per chapter, chosen anew for every commit among those that took at most
``WHOLE_MAX_SECONDS``; ``make replay`` replays every entry whole.
"""

import datetime
import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from . import config as _config
from . import data

STORE_ENV = "BNBOOK_STORE"  # the store's folder (default: results/ of this checkout)
READS_ENV = "BNBOOK_READS"  # a file: one line per entry served (what a build reads)
REPLAY_ENV = "BNBOOK_REPLAY"  # a seed (the commit): replay what is served, see chosen_whole
WHOLE_ENV = "BNBOOK_REPLAY_WHOLE"  # comma-separated keys to replay whole
REPLAY_LOG_ENV = "BNBOOK_REPLAY_LOG"  # a file: one line per replay
JOB_LOG_ENV = "BNBOOK_JOB_LOG"  # a file: runs started and finished (make results)
NO_REKEY_ENV = "BNBOOK_NO_REKEY"  # comma-separated names to compute, never re-key
MANIFEST = "manifest.json"
# A pip install (Colab) has no results/: it fetches the entries it reads from the
# published store, verifies them, and keeps them in FETCHED (see ``fetch``).
# BNBOOK_STORE_URL="" turns fetching off. A test keeps the address equal to the
# repository of _config.yml.
URL_ENV = "BNBOOK_STORE_URL"
URL = "https://raw.githubusercontent.com/batchnorm-book/batchnorm-book/main/results/"
FETCHED = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "bnutils" / "store"

# The one place that says how close a replay must come. Replays run with the entry's
# numerics (NUMERICS, the device, the number of threads), meant to give the same bits
# on every machine of the class; the tolerance only absorbs what is left (a loss that
# another CPU computes differs by ~2e-7 after 600 steps). It cannot absorb more: under
# other numerics (ATEN_CPU_CAPABILITY=default) Figure 1's baseline at rate 2 drifts
# apart exponentially from step ~300 (sigmoid inputs 0.06 apart at step 500, test
# accuracy 1.8 points at 1,000), chapter 6's bn_x5 CNN from its first steps (accuracy
# 2 points at step 65); and the CNN on two threads is another class than on one.
TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}
# The numerics class of make results and of CI's replays: the same kernels on every
# x86-64 machine with AVX2 (PyTorch's vectorised kernels, MKL's conditional numerical
# reproducibility, oneDNN's instruction set). On an AVX2 machine pinning changes
# neither the speed nor the bits (chapter 6's CNN, 60 steps, compared bit for bit).
NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
REPLAY_STEPS = 50  # a prefix replay's steps (or up to the first log after them); below the
# 100-step trace of chapters 6-7, which is then a series the prefix compares
# CI draws its whole replays among the entries that took at most this long to compute,
# so that nine chapters' whole replays add a few minutes to .ci/run (25 minutes on 2
# cores in all); longer ones (Figure 1's 50,000-step stacks) are replayed whole by make
# replay, and by CI only their first steps. Every run longer than this logs something
# that a prefix compares (``train_stacked`` trains a cut run on to its next log), and a
# test of the build says so
WHOLE_MAX_SECONDS = 90
MAX_BYTES = 50_000_000  # the whole store, JSON and arrays
PROVENANCE = ("commit", "dirty", "python", "torch", "numpy", "device", "machine",
              "threads", "numerics", "date", "seconds", "notebook")


class MissingResult(RuntimeError):
    """A run that the store lacks, where training is forbidden."""


class ReplayMismatch(RuntimeError):
    """A stored run that the current code does not reproduce."""


class StoreError(RuntimeError):
    """A store that cannot be read or written as it should."""


def root():
    """The store's folder: ``BNBOOK_STORE``, else ``results/`` of the checkout that holds
    ``bnutils`` (an editable install), or None where there is none (a pip install)."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    folder = Path(__file__).resolve().parents[1] / "results"
    return folder if (folder / MANIFEST).exists() else None


def _files(key, folder):
    return folder / f"{key}.npz", folder / f"{key}.json"


# --- serving --------------------------------------------------------------------------


def serve(key, name, config, fn, verbose=False):
    """The stored result of run ``key``, or None when the store lacks it.

    The read is recorded (``BNBOOK_READS``) and, when asked (``BNBOOK_REPLAY``), the run
    is replayed first; a replay that does not match raises ``ReplayMismatch``.
    """
    from . import cache

    folder = root() or fetch(key)
    if folder is None:
        return None
    npz, meta = _files(key, folder)
    if not meta.exists():
        return None
    try:
        used, result = cache._read(npz, meta)
    except (OSError, ValueError, KeyError) as err:
        raise StoreError(f"the stored result {folder.name}/{key} cannot be read ({err}); "
                         f"restore it (git checkout -- {folder.name}) or compute it again "
                         f"with make results") from err
    data.remember(used)
    _append(READS_ENV, {"key": key, "name": name, "notebook": _config.notebook()})
    _append(JOB_LOG_ENV, {"event": "read", "key": key, "name": name,
                          "notebook": _config.notebook()})
    whole = _replay_whole(key)
    if whole is not None and not _replayed(key, whole):
        report = replay(fn, config, result, whole=whole, like=_provenance(meta),
                        fall_back=False)
        _append(REPLAY_LOG_ENV, {"key": key, "name": name, "notebook": _config.notebook(),
                                 **report})
        if not report["ok"]:
            raise ReplayMismatch(f"the stored run {name} ({key}) is not what the code "
                                 f"computes now: {_summary(report)}. Compute it again "
                                 f"with {command(name)}.")
    if verbose and _config.train_mode() == "allow":  # a learner: say why nothing trained
        print(f"{name}: the book's stored result ({folder.name}/{key}, computed "
              f"{_provenance(meta).get('date', '?')[:10]}); change a setting to train "
              f"your own")
    return result


def fetch(key):
    """Where there is no store here (a pip install, Colab): download entry ``key`` of the
    published store (``URL``) into ``FETCHED``, verified, and return that folder; None
    when the published store has no such entry, fetching is off (``BNBOOK_STORE_URL``
    empty) or the address cannot be reached, so that the run trains here instead."""
    import urllib.error
    import warnings

    url = os.environ.get(URL_ENV, URL)
    npz, meta = _files(key, FETCHED)
    if not url or (npz.exists() and meta.exists()):
        return FETCHED if url else None
    try:
        FETCHED.mkdir(parents=True, exist_ok=True)
        meta_part = data._fetch(f"{url}{key}.json", FETCHED)
    except urllib.error.HTTPError as err:
        if err.code != 404:
            warnings.warn(f"the book's results store ({url}) answered {err.code} for {key}: "
                          f"training the run here instead", stacklevel=3)
        return None  # 404: a run the book does not store (another setting): train it
    except data._NETWORK_ERRORS as err:
        warnings.warn(f"the book's results store ({url}) cannot be reached ({err}): "
                      f"training the run here instead", stacklevel=3)
        return None
    try:
        expected = json.loads(meta_part.read_text())["npz_sha256"]
    except (ValueError, KeyError) as err:
        data._remove(meta_part)
        raise StoreError(f"the book's results store ({url}) served a damaged entry {key}: "
                         f"its metadata cannot be read ({err})") from err
    try:
        npz_part = data._fetch(f"{url}{key}.npz", FETCHED)
    except data._NETWORK_ERRORS as err:
        data._remove(meta_part)
        warnings.warn(f"the book's results store ({url}) did not deliver {key}.npz ({err}): "
                      f"training the run here instead", stacklevel=3)
        return None
    if data._file_sha256(npz_part) != expected:
        data._remove(meta_part)
        data._remove(npz_part)
        raise StoreError(f"the book's results store ({url}) served a damaged entry {key}: "
                         f"its arrays do not match the checksum in its metadata")
    os.replace(npz_part, npz)
    os.replace(meta_part, meta)  # last: an entry with its metadata is complete
    return FETCHED


def missing(name, key):
    """The error for a run that the store lacks while training is forbidden."""
    return MissingResult(
        f"the results store has no run {name} ({key}), and this build may not train "
        f"({_config.TRAIN_ENV}={_config.train_mode()}). Compute it with\n\n"
        f"    {command(name)}\n\nthen build again (or set {_config.TRAIN_ENV}=allow to "
        f"train it here without storing it).")


def command(name):
    """The ``make results`` command that computes run ``name``: the notebook running
    now, else those that read runs of this name before."""
    chapters = [_chapter(nb) for nb in [_config.notebook()] if nb]
    if not chapters:
        folder = root()
        entries = read_entries(folder) if folder else {}
        notebooks = read_manifest(folder)["notebooks"] if folder else {}
        chapters = sorted({_chapter(nb) for nb, keys in notebooks.items()
                           for k in keys if entries.get(k, {}).get("name") == name})
    if len(chapters) == 1 and chapters[0]:
        return f"make results CHAPTER={chapters[0]}"
    return "make results"


def _chapter(notebook):
    digits = notebook.split("_")[0]
    return digits if digits.isdigit() else None


# --- computing into the store (make results) ------------------------------------------


def compute(key, name, config, fn, description, verbose=False):
    """``store`` mode: re-key an entry of older code that replays equal, else train.

    ``description``: the cache's record (``name``, ``config``, ``code``). Returns the
    result as it reads back from the store.
    """
    from . import cache

    folder = root()
    if folder is None:
        raise StoreError(f"no results store here: set {STORE_ENV} to its folder, or run "
                         f"make results in a checkout of the book")
    cache._check_writable(folder)
    if name not in _listed(NO_REKEY_ENV):
        result = _rekey(key, name, config, fn, description, folder)
        if result is not None:
            return result
    _refuse_subset(name)  # before hours of training where it can tell
    _append(JOB_LOG_ENV, {"event": "start", "key": key, "name": name,
                          "config": description["config"], "notebook": _config.notebook()})
    _deterministic()
    start = time.perf_counter()
    result = fn(**config)
    seconds = time.perf_counter() - start
    used = _refuse_subset(name)
    doc = {**description, "data": used, "provenance": provenance(seconds)}
    cache._store(*_files(key, folder), result, doc)
    _append(JOB_LOG_ENV, {"event": "done", "key": key, "name": name, "seconds": seconds,
                          "notebook": _config.notebook()})
    _append(READS_ENV, {"key": key, "name": name, "notebook": _config.notebook()})
    if verbose:
        print(f"{name}: computed into the store ({folder.name}/{key}) in {seconds:.0f} s")
    return cache._read(*_files(key, folder))[1]


def _refuse_subset(name):
    """The data this process holds, unless some of it is the bundled subset."""
    used = data.loaded()
    subset = [d["data"]["dataset"] for d in used if d["data"]["source"] == "subset"]
    if subset:
        raise StoreError(f"{name} would rest on the bundled subset of {', '.join(subset)}: "
                         f"the store holds results on the full data sets only. Set "
                         f"BNUTILS_DATA to the folder of the MNIST files (or connect to "
                         f"the internet) and run make results again.")
    return used


def _rekey(key, name, config, fn, description, folder):
    """Write the entry of older code for the same run under ``key`` if it replays equal."""
    from . import cache

    old = _stale(folder, name, description["config"], key)
    if old is None:
        return None
    old_key, old_doc = old
    used, stored = cache._read(*_files(old_key, folder))
    report = replay(fn, config, stored, like=old_doc.get("provenance"))
    _append(REPLAY_LOG_ENV, {"key": key, "from": old_key, "name": name,
                             "notebook": _config.notebook(), **report})
    if not report["ok"]:
        print(f"{name}: the stored run {old_key} of older code does not replay equal "
              f"({_summary(report)}); computing it")
        return None
    here = provenance(None)
    event = {"from": old_key, "commit": here["commit"], "dirty": here["dirty"],
             "date": here["date"], "machine": here["machine"],
             "replay": {k: report[k] for k in ("steps", "whole", "compared", "max_diff")},
             "tolerance": TOLERANCE, "whole_check": None}
    prov = dict(old_doc["provenance"])
    prov["rekeyed"] = [*prov.get("rekeyed", []), event]
    doc = {**description, "data": used, "provenance": prov}
    cache._store(*_files(key, folder), stored, doc)
    _append(JOB_LOG_ENV, {"event": "rekey", "key": key, "from": old_key, "name": name,
                          "config": description["config"], "notebook": _config.notebook()})
    _append(READS_ENV, {"key": key, "name": name, "notebook": _config.notebook()})
    what = "whole run replays" if report["whole"] else f"first {report['steps']} steps replay"
    print(f"{name}: re-keyed the stored run {old_key} (its {what} equal, largest "
          f"difference {report['max_diff']:.1e})")
    return cache._read(*_files(key, folder))[1]


def _stale(folder, name, stored_config, key):
    """The newest entry with this name and configuration but another key (older code)."""
    found = [(k, doc) for k, doc in read_entries(folder).items()
             if k != key and doc.get("name") == name and doc.get("config") == stored_config]
    if not found:
        return None
    return max(found, key=lambda kd: kd[1].get("provenance", {}).get("date", ""))


def provenance(seconds):
    """Where, when and with what a run was computed, for its entry."""
    cuda = torch.cuda.is_available() and _config.device().type == "cuda"
    commit, dirty = _commit()
    return {
        "commit": commit, "dirty": dirty,
        "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__,
        "device": "cuda" if cuda else "cpu",
        "machine": torch.cuda.get_device_name() if cuda else _cpu_model(),
        "threads": torch.get_num_threads(),
        "numerics": numerics(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": None if seconds is None else round(seconds, 3),
        "notebook": _config.notebook(),
        # the training rates make results measured at its start: they scale the
        # seconds above to another machine in the next plan
        "rates": json.loads(os.environ.get("BNBOOK_RATES") or "null"),
    }


def numerics():
    """What decides the bits of a run besides the code: the device's kernels."""
    if torch.cuda.is_available() and _config.device().type == "cuda":
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return {"device": "cpu", "capability": torch.backends.cpu.get_cpu_capability(),
            **{k: os.environ.get(k) for k in NUMERICS if k != "ATEN_CPU_CAPABILITY"}}


def _deterministic():
    """On a GPU: kernels that give the same bits every time (no TF32, no autotuning)."""
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _commit():
    """The checkout's commit, and whether its code (bnutils, notebooks) has changes."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--",
                                                  "bnutils", "notebooks"))
    except (OSError, subprocess.CalledProcessError):
        return None, None


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- replaying ------------------------------------------------------------------------


def replay(fn, config, stored, whole=False, like=None, fall_back=True):
    """Compute ``fn(**config)`` again, its first steps or (``whole``) all, and compare.

    The prefix is the first ``REPLAY_STEPS`` steps when the result logs something over
    them (a per-step series), else up to the first logged step after them
    (``prefix_steps``), else the whole run (see the module's docstring). With
    ``fall_back=False`` (a build's replays, which must fit CI's time), a run that no
    prefix can check is not replayed whole: the report says ``skipped`` and why, and
    only the whole replays that CI draws over the commits check it.
    ``like``: the entry's provenance; the replay runs on as many threads, and is
    refused (``ok`` False) where the numerics differ from the entry's: no tolerance
    spans two numerics classes (see ``TOLERANCE``).
    Returns a report: ``ok``, ``whole``, ``steps`` (the prefix; None when whole),
    ``compared`` (values matched), ``series`` (of those, logged series), ``trained``
    (series that reach past their first entry; all of them when the run logs no step
    at 0, since their first entry then follows some training), ``max_diff`` (the
    largest absolute difference), ``problems`` (what did not match) and ``seconds``.
    Nothing is read from or written to the store or the cache meanwhile.
    """
    like = like or {}
    if like.get("numerics") and like["numerics"] != numerics():
        return {"ok": False, "whole": bool(whole), "steps": None, "compared": 0,
                "series": 0, "trained": 0, "max_diff": 0.0, "seconds": 0.0, "problems": [
                    f"computed with the numerics {like['numerics']}, this process has "
                    f"{numerics()}: replay it where they are the same"]}
    start = time.perf_counter()
    prefixes = [s for s in (REPLAY_STEPS, prefix_steps(stored)) if s is not None]
    tries = [None] if whole else prefixes + [None] * fall_back
    logged = _find_steps(stored)
    for steps in dict.fromkeys(tries):  # in order, once each
        if steps is not None and logged is not None and steps >= int(np.max(logged)):
            continue  # no shorter than the run
        try:
            replayed = _run(fn, config, steps, like)
        except Exception:
            if steps is None or (logged is not None and not _before_first_log(steps, logged)):
                raise
            continue  # cut before its first log, a loop has nothing to return: go on
        found = compare(replayed, stored, whole=steps is None)
        if steps is None or found["problems"] or found["trained"]:
            return {"ok": not found["problems"], "whole": steps is None, "steps": steps,
                    **found, "seconds": round(time.perf_counter() - start, 3)}
    return {"ok": True, "whole": False, "steps": None, "compared": 0, "series": 0,
            "trained": 0, "max_diff": 0.0, "problems": [],
            "skipped": "it logs nothing before its end that a prefix could compare",
            "seconds": round(time.perf_counter() - start, 3)}


def _before_first_log(steps, logged):
    """Whether a prefix of ``steps`` ends before the run's first logged step after 0."""
    later = [] if logged is None or steps is None else [s for s in logged if s > 0]
    return bool(later) and steps < min(later)


def _run(fn, config, steps, like):
    """``fn(**config)`` with training loops cut at ``steps`` (None: not cut), on the
    entry's number of threads, with nothing read from or written to a cache."""
    global _REPLAYING
    _deterministic()
    threads = torch.get_num_threads()
    before, _REPLAYING = _REPLAYING, True
    try:
        torch.set_num_threads(like.get("threads") or threads)
        if steps is None:
            return fn(**config)
        with _config.step_limit(steps):
            return fn(**config)
    finally:
        _REPLAYING = before
        torch.set_num_threads(threads)


_REPLAYING = False  # a replay is running: train_or_load computes, never reads or writes


def replaying():
    """True while ``replay`` runs: a run it makes is computed, not looked up or stored."""
    return _REPLAYING


def prefix_steps(stored):
    """The first logged step at or after ``REPLAY_STEPS`` (``REPLAY_STEPS`` when the
    result logs no ``step``); None when that is the run's last step: the whole run."""
    logged = _find_steps(stored)
    if logged is None:
        return REPLAY_STEPS
    later = [int(s) for s in logged if s >= REPLAY_STEPS]
    if not later or later[0] >= int(np.max(logged)):
        return None
    return later[0]


def _find_steps(tree):
    """The steps a prefix is chosen from: the first 1-D integer ``step`` array."""
    return next((v for k, v in _step_arrays(tree) if k == "step" and isinstance(v, np.ndarray)
                 and v.ndim == 1 and v.dtype.kind in "iu" and len(v)), None)


def compare(replayed, stored, whole):
    """Match a replayed result against a stored one (see the module's docstring).

    Returns ``{"compared", "series", "trained", "max_diff", "problems"}`` (see
    ``replay``).
    """
    found = {"compared": 0, "series": 0, "trained": 0, "max_diff": 0.0, "problems": []}
    _compare(replayed, stored, whole, "", found)
    if found["series"] and not found["trained"] and _logs_after_start(replayed):
        found["trained"] = found["series"]  # its one log already follows some training
    return found


def _logs_after_start(tree):
    """Whether ``tree`` logs steps (``step``, ``*_step``) and none at step 0 or before:
    then a series' first entry holds a trained state, not the one before training."""
    steps = [a for a in (np.asarray(v) for _, v in _step_arrays(tree)) if a.dtype.kind in "iu"]
    return bool(steps) and all(s.size and s.min() > 0 for s in steps)


def _step_arrays(tree):
    """``(key, value)`` for each ``step`` or ``*_step`` under ``tree``: a level's own
    before those of the dictionaries in it, which come in order."""
    for key, value in tree.items():
        if not isinstance(value, dict) and (key == "step" or key.endswith("_step")):
            yield key, value
    for value in tree.values():
        if isinstance(value, dict):
            yield from _step_arrays(value)


def _compare(new, old, whole, path, found):
    if isinstance(old, (str, bool, type(None))) or isinstance(new, (str, bool, type(None))):
        if whole:  # a flag, a name: an end-of-run value at most
            found["compared"] += 1
            if new != old or type(new) is not type(old):
                found["problems"].append(f"{path}: {new!r}, stored {old!r}")
        return
    if isinstance(old, dict) or isinstance(new, dict):
        if not (isinstance(old, dict) and isinstance(new, dict)):
            found["problems"].append(f"{path or 'the result'}: a dict in one, not the other")
            return
        if set(new) != set(old):
            found["problems"].append(f"{path or 'the result'}: keys differ "
                                     f"({sorted(set(new) ^ set(old))})")
            return
        for k in sorted(old):
            if not k.endswith("seconds"):  # timings: never the same twice
                _compare(new[k], old[k], whole, f"{path}/{k}" if path else k, found)
        return
    try:
        a, b = np.asarray(new), np.asarray(old)
    except ValueError:  # a ragged list: element by element
        a = b = None
    if a is None or a.dtype.hasobject or b.dtype.hasobject:
        if not (isinstance(new, list) and isinstance(old, list)):
            found["problems"].append(f"{path}: cannot compare {type(new).__name__} "
                                     f"with {type(old).__name__}")
        elif whole and len(new) != len(old):
            found["problems"].append(f"{path}: {len(new)} items, stored {len(old)}")
        elif whole:
            for i, (x, y) in enumerate(zip(new, old, strict=True)):
                _compare(x, y, whole, f"{path}[{i}]", found)
        return
    if a.shape == b.shape:
        if whole:
            _match(a, b, path, found)
        return  # an end-of-run value: a prefix cannot reproduce it
    axes = [i for i in range(a.ndim) if a.ndim == b.ndim and a.shape[i] != b.shape[i]]
    if whole or len(axes) != 1 or a.shape[axes[0]] > b.shape[axes[0]]:
        found["problems"].append(f"{path}: shape {a.shape}, stored {b.shape}")
        return
    _match(a, np.take(b, range(a.shape[axes[0]]), axis=axes[0]), path, found)
    found["series"] += 1
    found["trained"] += a.shape[axes[0]] > 1  # more than its first log (see compare)


def _match(a, b, path, found):
    found["compared"] += 1
    numbers = a.dtype.kind in "biufc" and b.dtype.kind in "biufc"
    if not (numbers and (a.dtype.kind in "fc" or b.dtype.kind in "fc")):
        if not np.array_equal(a, b):  # counts, flags, names: exactly
            found["problems"].append(f"{path}: differs")
        return
    a, b = a.astype(np.float64), b.astype(np.float64)
    same_kind = (np.isnan(a) == np.isnan(b)) & (np.isposinf(a) == np.isposinf(b)) \
        & (np.isneginf(a) == np.isneginf(b))
    if not same_kind.all():
        found["problems"].append(f"{path}: NaN or infinite where the stored run is not, "
                                 f"or the reverse")
        return
    finite = np.isfinite(a)
    diff = np.abs(a[finite] - b[finite])
    if diff.size:
        found["max_diff"] = max(found["max_diff"], float(diff.max()))
        bound = TOLERANCE["atol"] + TOLERANCE["rtol"] * np.abs(b[finite])
        if np.any(diff > bound):
            i = int(np.argmax(diff - bound))
            found["problems"].append(f"{path}: differs by up to {diff.max():.2e} (e.g. "
                                     f"{a[finite][i]:.6g} against {b[finite][i]:.6g})")


def _summary(report):
    problems = report["problems"]
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    what = "whole run" if report["whole"] else f"first {report['steps']} steps"
    return f"{what}: {'; '.join(problems[:3])}{more}"


def _replay_whole(key):
    """None: no replay of ``key``; else whether to replay it whole."""
    if key in _listed(WHOLE_ENV) or "*" in _listed(WHOLE_ENV):
        return True
    seed = os.environ.get(REPLAY_ENV)
    if not seed:
        return None
    notebook = _config.notebook()
    return notebook is not None and key == chosen_whole(notebook, seed)


def chosen_whole(notebook, seed, folder=None):
    """The entry of ``notebook`` that CI replays whole for ``seed`` (the commit): each
    commit draws another among those computed in at most ``WHOLE_MAX_SECONDS`` (the
    cheapest if none was), so that over commits every one of them is checked."""
    folder = folder or root()
    keys = sorted(read_manifest(folder)["notebooks"].get(notebook, [])) if folder else []
    if not keys:
        return None
    entries = read_entries(folder)

    def seconds(key):
        return entries.get(key, {}).get("provenance", {}).get("seconds") or 0.0

    short = [k for k in keys if seconds(k) <= WHOLE_MAX_SECONDS] or [min(keys, key=seconds)]
    digest = hashlib.sha256(f"{seed}:{notebook}".encode()).hexdigest()
    return short[int(digest, 16) % len(short)]


def _replayed(key, whole):
    """Whether this job replayed ``key`` already (whole, or at least its prefix)."""
    return any(r["key"] == key and (r["whole"] or not whole)
               for r in read_log(os.environ.get(REPLAY_LOG_ENV)))


# --- the store's files ----------------------------------------------------------------


def read_entries(folder):
    """``{key: metadata}`` of every entry in ``folder`` (the JSON part)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))
            if p.name != MANIFEST}


def read_manifest(folder):
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {"notebooks": {}}
    return json.loads(path.read_text())


def write_manifest(folder, manifest):
    notebooks = {nb: sorted(set(keys)) for nb, keys in sorted(manifest["notebooks"].items())
                 if keys}
    path = Path(folder) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps({**manifest, "notebooks": notebooks}, indent=1) + "\n")
    os.replace(tmp, path)


def _provenance(meta):
    try:
        return json.loads(Path(meta).read_text()).get("provenance", {})
    except (OSError, ValueError):
        return {}


def read_log(path):
    """The records of a JSON-lines log (``BNBOOK_READS`` and the others); [] if none."""
    if not path or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _append(env, record):
    """Add ``record`` to the log that ``env`` names, if set. One short write per record:
    several processes (the workers of ``prefill``) append to one log."""
    path = os.environ.get(env)
    if not path:
        return
    line = (json.dumps({**record, "time": time.time()}) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _listed(env):
    return {v.strip() for v in os.environ.get(env, "").split(",") if v.strip()}


__all__ = ["MissingResult", "ReplayMismatch", "StoreError", "TOLERANCE", "REPLAY_STEPS",
           "compare", "cost", "cost_text", "prefix_steps", "provenance", "replay", "root",
           "serve"]


# --- what a page says about its runs --------------------------------------------------


def cost(notebook=None, folder=None):
    """Where the stored runs of ``notebook`` (None: of every notebook) came from.

    Returns ``{"runs", "seconds", "core_seconds", "commits", "first", "last",
    "machines", "devices", "rekeyed"}``: ``seconds`` is the wall-clock time of the runs
    added up, ``core_seconds`` that time times each run's threads; ``first`` and
    ``last`` are the dates (YYYY-MM-DD) of the oldest and newest; ``rekeyed`` counts the
    runs carried over to newer code by a replay. None without a store or its runs.
    """
    folder = Path(folder) if folder else root()
    if folder is None:
        return None
    listed = read_manifest(folder)["notebooks"]
    keys = {k for nb, ks in listed.items() if notebook in (None, nb) for k in ks}
    entries = read_entries(folder)
    provs = [entries[k]["provenance"] for k in sorted(keys) if k in entries]
    if not provs:
        return None
    dates = sorted(p["date"][:10] for p in provs if p.get("date"))
    return {
        "runs": len(provs),
        "seconds": sum(p.get("seconds") or 0.0 for p in provs),
        "core_seconds": sum((p.get("seconds") or 0.0) * (p.get("threads") or 1)
                            for p in provs),
        "commits": sorted({p["commit"][:7] for p in provs if p.get("commit")}),
        "first": dates[0] if dates else None, "last": dates[-1] if dates else None,
        "machines": sorted({p["machine"] for p in provs if p.get("machine")}),
        "devices": sorted({p["device"] for p in provs if p.get("device")}),
        "rekeyed": sum(bool(p.get("rekeyed")) for p in provs),
    }


def cost_text(notebook=None, folder=None):
    """``cost`` in words for a page, e.g. "24 stored runs, computed by make results on
    2026-12-06 at commit 42b8f7e, on AMD EPYC 7B13 (one CPU thread per run): 41
    core-minutes in all"."""
    c = cost(notebook, folder)
    if c is None:
        return "trained during this build (no results store holds them)"
    when = f"on {c['first']}" if c["first"] == c["last"] else \
        f"between {c['first']} and {c['last']}"
    s = "s" if len(c["commits"]) > 1 else ""
    kind = " and ".join("a GPU" if d == "cuda" else "one CPU thread per run"
                        if c["core_seconds"] == c["seconds"] else "CPU threads"
                        for d in c["devices"])
    text = (f"{c['runs']} stored runs, computed by make results {when} at "
            f"commit{s} {', '.join(c['commits']) or '(unknown)'}, on "
            f"{' and '.join(c['machines'])} ({kind}): {_duration(c['core_seconds'])} "
            f"in all")
    if c["rekeyed"]:
        text += (f" ({c['rekeyed']} of them carried over to later code after a replay "
                 f"matched)")
    return text


def _duration(seconds):
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} core-hours"
    return f"{max(1, round(seconds / 60))} core-minutes"
