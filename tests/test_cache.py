"""bnutils.cache: results are computed once, reloaded exactly, and computed again whenever
anything that decides them changes: the configuration, the code and the values it uses,
the arguments bound to it, the bnutils version, the data."""

import dataclasses
import enum
import functools
import hashlib
import importlib.util
import inspect
import itertools
import json
import linecache
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bnutils
from bnutils import cache, data, models

CALLS = []  # what the experiments below were run with, in order


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a new process would: no experiment run, no data loaded."""
    CALLS.clear()
    monkeypatch.setattr(data, "_LOADED", {})
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])  # see _notebook


def _experiment(steps, lr):
    CALLS.append((steps, lr))
    rng = np.random.default_rng(steps)
    return {"step": np.arange(steps), "acc": rng.random(steps), "best": 0.5,
            "runs": {"a": {"curve": rng.random(3), "diverged": False}}, "note": "ok",
            "count": np.int64(3)}


def _echo(**config):
    CALLS.append(config)
    return {"n": len(CALLS)}


def _files(folder):
    return sorted(p.name for p in Path(folder).rglob("*") if p.is_file())


# --- storing and loading -------------------------------------------------------------


def test_second_call_loads_identical_result(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BNBOOK_PROGRESS", "live")  # a person watches: say where it came from
    first = cache.train_or_load("exp", {"steps": 5, "lr": 0.1}, _experiment, root=tmp_path)
    assert capsys.readouterr().out == ""  # computed for the first time: nothing to explain
    second = cache.train_or_load("exp", {"steps": 5, "lr": 0.1}, _experiment, root=tmp_path)
    assert CALLS == [(5, 0.1)]
    np.testing.assert_array_equal(first["acc"], second["acc"])
    np.testing.assert_array_equal(second["runs"]["a"]["curve"], first["runs"]["a"]["curve"])
    assert second["runs"]["a"]["diverged"] is False and second["best"] == 0.5
    assert second["note"] == "ok" and second["count"] == 3
    assert first.keys() == second.keys() == {"step", "acc", "best", "runs", "note", "count"}
    assert "loaded cached result exp-" in capsys.readouterr().out
    names = _files(tmp_path)
    assert len(names) == 2 and {Path(n).suffix for n in names} == {".npz", ".json"}


@pytest.mark.parametrize("mode", ["summary", "off"])
def test_quiet_by_default_where_nobody_watches(tmp_path, capsys, monkeypatch, mode):
    """A built page showed "loaded cached result ... from /work/..." (chapter 2)."""
    monkeypatch.setenv("BNBOOK_PROGRESS", mode)
    for _ in range(2):
        cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path)
    assert capsys.readouterr().out == "" and len(CALLS) == 1


def test_quiet_when_not_verbose(tmp_path, capsys):
    for _ in range(2):
        cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path,
                            verbose=False)
    assert capsys.readouterr().out == "" and len(CALLS) == 1


def test_results_are_stored_without_pickle(tmp_path):
    cache.train_or_load("exp", {"steps": 3, "lr": 0.1}, _experiment, root=tmp_path)
    (npz,) = tmp_path.glob("*.npz")
    with np.load(npz, allow_pickle=False) as z:  # would raise on object arrays
        assert set(z.files) == {"step", "acc", "runs/a/curve"}
    (meta,) = tmp_path.glob("*.json")
    doc = json.loads(meta.read_text())
    assert doc["name"] == "exp" and doc["config"] == {"lr": 0.1, "steps": 3}
    assert doc["code"] == cache.code_version(_experiment)
    assert doc["values"]["runs"] == {"a": {"diverged": False}}


def test_a_pickled_array_on_disk_is_never_unpickled(tmp_path, capsys):
    cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path)
    (npz,) = tmp_path.glob("*.npz")
    meta = npz.with_suffix(".json")
    assert meta.read_text().count("\n") > 10  # people read it: one entry a line
    np.savez(npz, step=np.array([print], dtype=object))  # as an older bnutils could write
    doc = json.loads(meta.read_text())
    meta.write_text(json.dumps({**doc, "npz_sha256": cache._file_sha256(npz)}))
    capsys.readouterr()
    again = cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path)
    assert "cannot be read (Object arrays cannot be loaded when allow_pickle=False)" in \
        capsys.readouterr().out
    assert again["step"].tolist() == [0, 1] and len(CALLS) == 2


def test_nested_root_that_does_not_exist_yet(tmp_path):
    root = tmp_path / "a" / "b" / "c"
    cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=root)
    assert len(list(root.glob("exp-*.npz"))) == 1


def test_unwritable_root_fails_before_running(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="cannot store results in .*BNUTILS_RESULTS"):
        cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=blocker / "r")
    assert CALLS == []


def test_results_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BNUTILS_RESULTS", str(tmp_path / "r"))
    assert cache.results_root() == tmp_path / "r"
    cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment)
    assert len(list((tmp_path / "r").glob("exp-*.npz"))) == 1
    monkeypatch.delenv("BNUTILS_RESULTS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.results_root() == tmp_path / "xdg" / "bnutils" / "results"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.results_root() == tmp_path / "home" / ".cache" / "bnutils" / "results"
    monkeypatch.setenv("BNUTILS_RESULTS", "")  # set but empty: the default
    assert cache.results_root() == tmp_path / "home" / ".cache" / "bnutils" / "results"


@pytest.mark.parametrize("damage, reason", [
    ("no json", "only one of its two files exists"),
    ("no npz", "only one of its two files exists"),
    ("other npz", "the stored files cannot be read (its arrays do not belong to its metadata)"),
    ("bad json", "the stored files cannot be read ("),
    ("bad npz", "the stored files cannot be read (File is not a zip file)"),
    ("old format", "the stored files cannot be read ('data')"),
])
def test_incomplete_or_damaged_files_are_computed_again(tmp_path, capsys, damage, reason):
    cache.train_or_load("other", {"steps": 4, "lr": 0.1}, _experiment, root=tmp_path)
    cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path)
    (npz,) = tmp_path.glob("exp-*.npz")
    meta = npz.with_suffix(".json")
    if damage == "no json":
        meta.unlink()
    elif damage == "no npz":
        npz.unlink()
    elif damage == "other npz":  # e.g. two processes writing the same key at once
        shutil.copy(next(tmp_path.glob("other-*.npz")), npz)
    elif damage == "bad json":
        meta.write_text(meta.read_text()[:-20])
    elif damage == "old format":  # written by an earlier bnutils
        doc = json.loads(meta.read_text())
        meta.write_text(json.dumps({k: v for k, v in doc.items() if k != "data"}))
    else:
        npz.write_bytes(npz.read_bytes()[:30])
        doc = json.loads(meta.read_text())
        meta.write_text(json.dumps({**doc, "npz_sha256": cache._file_sha256(npz)}))
    capsys.readouterr()
    again = cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path)
    assert CALLS == [(4, 0.1), (2, 0.1), (2, 0.1)]
    assert again["step"].tolist() == [0, 1]
    assert f"again: {reason}" in capsys.readouterr().out
    cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path)
    assert len(CALLS) == 3  # repaired: loaded from now on


def test_why_a_result_is_computed_again_is_said_unless_told_not_to(tmp_path, capsys):
    cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path)
    (npz,) = tmp_path.glob("exp-*.npz")
    for verbose, said in ((True, True), (None, True), (False, False)):
        npz.with_suffix(".json").unlink()
        capsys.readouterr()
        cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path,
                            verbose=verbose)
        out = capsys.readouterr().out
        assert ("again: only one of its two files exists" in out) is said, (verbose, out)


def test_line_endings_do_not_change_a_code_digest():
    assert cache._text_digest("x = 1\r\ny = 2\r\n") == cache._text_digest("x = 1\ny = 2\n")
    assert cache._text_digest("x = 1\n") != cache._text_digest("x = 2\n")


# --- refusing what cannot be keyed or stored ------------------------------------------


BAD_RESULTS = {
    "object": {"model": object()},
    "object array": {"ids": np.array([1, "a", None], dtype=object)},
    "tensor": {"t": torch.zeros(2)},
    "set": {"s": {1, 2}},
    "list": [np.zeros(2)],
    "slash": {"a/b": np.zeros(2)},
    "number key": {1: 0.5},
    "nested number key": {"d": {2: np.zeros(1)}},
}


def _bad(kind):
    return BAD_RESULTS[kind]


BAD_RESULT_ERRORS = {
    "object": "cannot store object in the results cache",
    "object array": "cannot store ids in the results cache: an array of Python objects",
    "tensor": "cannot store Tensor in the results cache",
    "set": "cannot store set in the results cache",
    "list": "the experiment must return a dict, got list",
    "slash": "result keys must be strings without '/': 'a/b'",
    "number key": "result keys must be strings without '/': 1",
    "nested number key": "result keys must be strings without '/': 2",
}


def test_unstorable_results_are_refused_and_leave_nothing(tmp_path):
    for kind, message in BAD_RESULT_ERRORS.items():
        with pytest.raises((TypeError, ValueError), match=re.escape(message)):
            cache.train_or_load("bad", {"kind": kind}, _bad, root=tmp_path)
    assert _files(tmp_path) == []  # no partial or temporary file
    ok = cache.train_or_load("bad", {}, lambda: {"ids": np.array(["a", "b"])}, root=tmp_path)
    assert ok["ids"].tolist() == ["a", "b"]  # a later good run is stored


def test_files_are_written_under_hidden_names_then_renamed(tmp_path, monkeypatch):
    renamed = []
    real = os.replace

    def replace(source, target):
        renamed.append((Path(source), Path(target)))
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path)
    assert [target.suffix for _, target in renamed] == [".npz", ".json"]
    for source, target in renamed:
        assert source.parent == target.parent == tmp_path  # same folder: an atomic rename
        assert source.name.startswith(f".{target.name}.") and source.suffix == ".tmp"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=tmp_path)
    assert _files(tmp_path) == []


def test_unkeyable_config_and_names_are_refused_before_running(tmp_path):
    import threading

    refused = [
        ({"lock": threading.Lock()}, "cannot key the results cache on config -> ['lock']: a "
                                     "lock, whose contents"),
        ({"ids": np.array([None, 1], dtype=object)},
         "cannot key the results cache on config -> ['ids']: an array of Python objects"),
        ({1: 2}, "config must be a dict of keyword arguments for fn, got {1: 2}"),
        ([("steps", 2)], "config must be a dict"),
    ]
    refused += [
        ({"s": {threading.Lock()}}, "cannot key the results cache on config -> ['s'] -> a set:"),
        ({"d": {1: threading.Lock()}}, "cannot key the results cache on config -> ['d'] -> [1]:"),
    ]
    for config, message in refused:
        with pytest.raises(TypeError, match=re.escape(message)):
            cache.train_or_load("exp", config, _echo, root=tmp_path)
    for name in ("a/b", "../up", "", "with space", 3):
        with pytest.raises(ValueError, match="must be letters"):
            cache.train_or_load(name, {}, _echo, root=tmp_path)
    assert CALLS == [] and _files(tmp_path) == []


def test_unkeyable_global_names_where_it_is(tmp_path):
    nb = _notebook("""
        import threading
        LOCK = threading.Lock()
        def run():
            with LOCK:
                return {"x": 1}
    """)
    with pytest.raises(TypeError, match="cannot key the results cache on fn -> run -> global LOCK"):
        cache.train_or_load("exp", {}, nb["run"], root=tmp_path)


# --- the configuration ------------------------------------------------------------------


def _key(config, fn=_echo):
    return cache.cache_key("exp", config, fn)


def test_changed_config_reruns_and_key_order_does_not_matter(tmp_path):
    for config in ({"steps": 5, "lr": 0.1}, {"lr": 0.1, "steps": 5}, {"steps": 5, "lr": 0.2},
                   {"steps": 5, "lr": 0.1, "extra": None}):
        cache.train_or_load("exp", config, _echo, root=tmp_path)
    assert CALLS == [{"steps": 5, "lr": 0.1}, {"steps": 5, "lr": 0.2},
                     {"steps": 5, "lr": 0.1, "extra": None}]
    assert _key({"a": 1, "b": 2}) == _key({"b": 2, "a": 1})
    assert len({_key({"x": v}) for v in (1, 1.0, True, "1", [1], None, {"1": 1})}) == 7
    assert _key({"x": {1: "a"}}) != _key({"x": {"1": "a"}})
    array = json.loads(json.dumps(cache._Describer()(np.zeros(2))))
    assert _key({"x": array}) != _key({"x": np.zeros(2)})


def test_arrays_and_tensors_in_the_config_are_keyed_by_content():
    a = np.arange(2000.0)
    b = a.copy()
    b[1000] += 1  # str() of both prints the same abbreviation
    assert str(a) == str(b)
    assert _key({"x": a}) != _key({"x": b})
    assert _key({"x": a}) == _key({"x": a.copy()})
    assert _key({"x": a}) != _key({"x": a.astype(np.float32)})
    assert _key({"x": a}) != _key({"x": a.reshape(40, 50)})
    assert _key({"x": a[::2]}) == _key({"x": np.ascontiguousarray(a[::2])})
    assert _key({"x": np.float32(0.5)}) != _key({"x": 0.5})
    assert _key({"x": np.float32(0.5)}) != _key({"x": np.float32(0.25)})
    assert _key({"x": np.array(0.5)}) != _key({"x": np.array(0.25)})
    t = torch.arange(2000.0)
    assert _key({"x": t}) != _key({"x": t.clone().index_fill_(0, torch.tensor([7]), -1.0)})
    assert _key({"x": t}) == _key({"x": t.clone().requires_grad_()})
    assert _key({"x": t}) != _key({"x": t.double()})
    assert _key({"x": t.bfloat16()}) != _key({"x": t.half()})


class Color(enum.Enum):
    RED = 1


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def test_how_a_configuration_is_stored():
    """The stored form of each kind of value: readable, and unambiguous where JSON is not."""
    loop = [1]
    loop.append(loop)
    config = {
        "steps": 5, "lr": 0.1, "flag": True, "none": None, "name": "bn", "sizes": (1, 2),
        "nested": {"a": [1.5]}, "odd keys": {1: "x", "__y": 2}, "ids": {3, 1, 2},
        "f32": np.float32(0.5), "i64": np.int64(7), "when": np.datetime64("2015-02-11"),
        "array": np.arange(3, dtype=np.int16), "scalar array": np.array(2.5),
        "tensor": torch.ones(2, dtype=torch.float16), "path": Path("a/b"),
        "np dtype": np.dtype("float32"), "torch dtype": torch.bfloat16,
        "device": torch.device("cpu"), "gen": torch.Generator().manual_seed(0),
        "span": range(1, 5, 2), "cut": slice(1, None), "raw": b"ab", "z": 1 - 2j,
        "color": Color.RED, "norm": nn.BatchNorm1d, "module": math, "sqrt": math.sqrt,
        "ufunc": np.exp, "partial": functools.partial(print, sep=","), "loop": loop,
        "memoised": functools.lru_cache(maxsize=None)(len), "dumps": json.dumps,
    }
    state = torch.Generator().manual_seed(0).get_state().numpy().tobytes()
    assert cache._Describer("config")(config) == {
        "steps": 5, "lr": 0.1, "flag": True, "none": None, "name": "bn", "sizes": [1, 2],
        "nested": {"a": [1.5]}, "odd keys": {"__dict__": [[1, "x"], ["__y", 2]]},
        "ids": {"__set__": [1, 2, 3]}, "f32": {"__numpy__": ["<f4", 0.5]},
        "i64": {"__numpy__": ["<i8", 7]},
        "when": {"__numpy__": ["<M8[D]", _sha(np.datetime64("2015-02-11").tobytes())]},
        "array": {"__ndarray__": ["<i2", [3], _sha(np.arange(3, dtype=np.int16).tobytes())]},
        "scalar array": {"__ndarray__": ["<f8", [], _sha(np.float64(2.5).tobytes())]},
        "tensor": {"__tensor__": ["torch.float16", [2], "cpu",
                                  _sha(np.ones(2, np.float16).tobytes())]},
        "path": {"__path__": "a/b"}, "np dtype": {"__dtype__": "float32"},
        "torch dtype": {"__dtype__": "torch.bfloat16"}, "device": {"__device__": "cpu"},
        "gen": {"__generator__": ["cpu", _sha(state)]}, "span": {"__range__": [1, 5, 2]},
        "cut": {"__slice__": [1, None, None]}, "raw": {"__bytes__": _sha(b"ab")},
        "z": {"__complex__": [1.0, -2.0]}, "color": {"__enum__": [_name(Color), "RED"]},
        "norm": {"__class__": "torch.nn.modules.batchnorm.BatchNorm1d"},
        "module": {"__module__": "math"}, "sqrt": {"__builtin__": "math.sqrt"},
        "ufunc": {"__named__": "numpy.ufunc:exp"},
        "partial": {"__partial__": [{"__builtin__": "builtins.print"}, [], {"sep": ","}]},
        "loop": [1, {"__cycle__": "list"}],
        "memoised": {"__wraps__": ["functools._lru_cache_wrapper", {"__builtin__": "builtins.len"}]},
        "dumps": {"__function__": "json.dumps"},
    }


def _name(obj):
    return f"{obj.__module__}.{obj.__qualname__}"


def test_paths_dtypes_and_other_values_in_the_config(tmp_path):
    config = {"root": Path("a/b"), "np_type": np.float32, "dtype": np.dtype("float64"),
              "torch_dtype": torch.float16, "device": torch.device("cpu"),
              "sizes": (1, 2), "ids": {3, 1, 2}, "span": range(3), "z": 1 + 2j, "raw": b"\x00",
              "gen": torch.Generator().manual_seed(1)}
    result = cache.train_or_load("exp", config, _echo, root=tmp_path)
    assert CALLS == [config]  # the experiment gets the values themselves
    assert cache.train_or_load("exp", config, _echo, root=tmp_path) == result
    (meta,) = tmp_path.glob("*.json")
    stored = json.loads(meta.read_text())["config"]
    assert stored["root"] == {"__path__": "a/b"} and stored["sizes"] == [1, 2]
    assert stored["np_type"] == {"__class__": "numpy.float32"}
    assert stored["torch_dtype"] == {"__dtype__": "torch.float16"}
    changes = {"root": Path("a/c"), "np_type": np.float64, "dtype": np.dtype("float32"),
               "torch_dtype": torch.bfloat16, "sizes": (1, 3), "ids": {1, 2}, "span": range(4),
               "z": 1 + 3j, "raw": b"\x01", "gen": torch.Generator().manual_seed(2)}
    keys = {_key({**config, k: v}) for k, v in changes.items()}
    assert len(keys) == len(changes) and _key(config) not in keys


# --- the code -------------------------------------------------------------------------


def _first(steps):
    CALLS.append("first")
    return {"x": np.zeros(steps)}


def _second(steps):  # same config, different code
    CALLS.append("second")
    return {"x": np.ones(steps)}


def test_key_and_version_formats():
    assert re.fullmatch(r"Figure1-A\.v2_b-[0-9a-f]{16}", _key_named("Figure1-A.v2_b"))
    assert re.fullmatch(re.escape(bnutils.__version__) + r"\+[0-9a-f]{12}",
                        cache.code_version(_first))


def _key_named(name):
    return cache.cache_key(name, {}, _first)


def test_cache_key_covers_the_code():
    assert cache.cache_key("exp", {"steps": 2}, _first) != cache.cache_key("exp", {"steps": 2},
                                                                            _second)
    assert cache.cache_key("exp", {}, _first).startswith("exp-")


def test_changed_code_or_version_reruns(tmp_path, monkeypatch):
    cache.train_or_load("exp", {"steps": 2}, _first, root=tmp_path)
    again = cache.train_or_load("exp", {"steps": 2}, _second, root=tmp_path)
    assert CALLS == ["first", "second"] and again["x"].tolist() == [1.0, 1.0]
    before = cache.code_version(_first)
    assert before.startswith(bnutils.__version__ + "+")
    monkeypatch.setattr("bnutils.__version__", "999.0")
    assert cache.code_version(_first) != before
    cache.train_or_load("exp", {"steps": 2}, _first, root=tmp_path)
    assert CALLS == ["first", "second", "first"]


def test_partial_arguments_are_keyed(tmp_path):
    def run(lr):
        return cache.train_or_load("exp", {"steps": 3}, functools.partial(_experiment, lr=lr),
                                   root=tmp_path)

    run(0.1)
    run(0.5)
    run(0.1)
    assert CALLS == [(3, 0.1), (3, 0.5)]
    version = cache.code_version
    assert version(functools.partial(_echo, 1)) != version(functools.partial(_echo, 2))
    assert version(functools.partial(_echo, a=1, b=2)) == version(functools.partial(_echo, b=2, a=1))
    assert version(functools.partial(_echo, a=1)) != version(functools.partial(_echo, b=1))


SHOWN = []


def _shown(steps):
    SHOWN.append(steps)
    for _ in bnutils.progress(range(steps), desc="run"):
        pass
    return {"x": np.arange(steps)}


def test_progress_bars_share_a_result(tmp_path, monkeypatch):
    """What a run shows is read from bnutils.config when it runs, not bound into it: a
    run with live bars and the same run with none (a prefill worker) share one entry."""
    SHOWN.clear()
    monkeypatch.setenv("BNBOOK_PROGRESS", "live")
    first = cache.train_or_load("bars", {"steps": 3}, _shown, root=tmp_path, verbose=False)
    monkeypatch.setenv("BNBOOK_PROGRESS", "off")
    again = cache.train_or_load("bars", {"steps": 3}, _shown, root=tmp_path, verbose=False)
    assert SHOWN == [3] and again["x"].tolist() == first["x"].tolist()
    assert len(list(tmp_path.glob("bars-*.json"))) == 1


def test_every_bound_argument_counts():
    """No argument is exempt from the key, ``progress`` included: a bound value that
    differs is another run as far as the cache can tell."""
    version = cache.code_version
    assert version(functools.partial(_echo, a=1, progress=True)) != \
        version(functools.partial(_echo, a=1, progress=False))

    def bound(progress):
        return lambda **c: _echo(**c, progress=progress)

    assert version(bound(True)) != version(bound(False))
    assert not hasattr(cache, "DISPLAY_ONLY")


def _helper(steps):
    return {"x": np.full(steps, 1.0)}


def _other_helper(steps):
    return {"x": np.zeros(steps)}


def _in_comprehension(steps):
    return {k: v for k, v in _helper(steps).items()}  # called in the iterable


def _in_comprehension_body(steps):
    return [_helper(s) for s in range(steps)][-1]  # called in the body


def _in_lambda_body(steps):
    return (lambda s: _helper(s))(steps)


def _in_nested_function(steps):
    def inner():
        return _helper(steps)

    return inner()


def _recursive(steps):
    return {"x": np.zeros(0)} if steps == 0 else _recursive(steps - 1)


def _ping(n):
    return _pong(n - 1) if n else {}


def _pong(n):
    return _ping(n - 1) if n else {}


@pytest.mark.parametrize("fn", [_in_comprehension, _in_comprehension_body, _in_lambda_body,
                                _in_nested_function])
def test_called_functions_are_followed(fn, monkeypatch):
    before = cache.code_version(fn)
    monkeypatch.setattr(sys.modules[__name__], "_helper", _other_helper)
    assert cache.code_version(fn) != before  # the called function's code counts


def _checked(steps):
    assert steps > 0, "pytest compiles this module itself (it rewrites asserts)"
    return {"x": np.zeros(steps)}


def test_a_test_module_with_asserts_is_not_taken_for_an_edited_one(tmp_path):
    assert cache.train_or_load("exp", {"steps": 2}, _checked, root=tmp_path)["x"].shape == (2,)


def test_recursive_experiments_have_a_version(tmp_path):
    assert cache.code_version(_recursive) != cache.code_version(_ping)
    assert cache.code_version(_ping) == cache.code_version(_ping)
    assert cache.train_or_load("exp", {"steps": 3}, _recursive, root=tmp_path)["x"].shape == (0,)


def test_bnutils_functions_a_notebook_calls_are_followed(monkeypatch):
    nb = _notebook("""
        from bnutils import models
        def run():
            return models.mlp(784, (3,), 10)
    """)
    before = cache.code_version(nb["run"])
    monkeypatch.setattr(models, "mlp", lambda *a, **k: None)
    assert cache.code_version(nb["run"]) != before


def _import(path, name, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


MODULE = """
from pathlib import Path

import numpy as np

HIDDEN = {hidden}
HERE = Path(__file__).parent  # differs between checkouts: must not enter the key


def run(steps, here=HERE, *, where=HERE):
    return {{"h": np.full(steps, HIDDEN), "here": len(here.parts) + len(where.parts)}}
"""


def test_module_source_is_in_the_key(tmp_path, monkeypatch):
    versions = {}
    for folder, hidden in (("a", 50), ("b", 50), ("c", 60)):
        path = tmp_path / folder / "experiment_module.py"
        path.parent.mkdir()
        path.write_text(MODULE.format(hidden=hidden))
        module = _import(path, "experiment_module", monkeypatch)
        versions[folder] = cache.code_version(module.run)
    assert versions["a"] == versions["b"]  # same code, another folder
    assert versions["a"] != versions["c"]  # a module constant changed


SETTINGS = """
from pathlib import Path


class Settings:
    hidden = {hidden}
    here = Path(__file__).parent  # differs between checkouts: must not enter the key
"""

USES_SETTINGS = """
from settings_module import Settings


def run(steps):
    return {{"h": Settings.hidden, "here": str(Settings.here)}}
"""


BOUND = """
from functools import partial
from pathlib import Path

HERE = Path(__file__).parent  # differs between checkouts: must not enter the key


class Runner:
    def __init__(self, here):
        self.here = here

    def step(self):
        return str(self.here)


def _join(a, b=None):
    return str(a) + str(b)


step = Runner(HERE).step
joined = partial(_join, HERE, b=HERE)
lookup = {{"here": HERE}}.get


def run(steps):
    return {{"a": step(), "b": joined(), "c": str(lookup("here")), "n": {n}}}
"""


def test_values_bound_in_a_module_are_keyed_by_its_source(tmp_path, monkeypatch):
    versions = {}
    for folder, n in (("a", 1), ("b", 1), ("c", 2)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "bound_module.py").write_text(BOUND.format(n=n))
        module = _import(tmp_path / folder / "bound_module.py", "bound_module", monkeypatch)
        versions[folder] = cache.code_version(module.run)
    assert versions["a"] == versions["b"] != versions["c"]


def test_a_class_of_another_module_is_keyed_by_its_source(tmp_path, monkeypatch):
    versions = {}
    for folder, hidden in (("a", 50), ("b", 50), ("c", 60)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "settings_module.py").write_text(SETTINGS.format(hidden=hidden))
        _import(tmp_path / folder / "settings_module.py", "settings_module", monkeypatch)
        (tmp_path / folder / "uses_settings.py").write_text(USES_SETTINGS.format())
        module = _import(tmp_path / folder / "uses_settings.py", "uses_settings", monkeypatch)
        versions[folder] = cache.code_version(module.run)
    assert versions["a"] == versions["b"] != versions["c"]


def test_a_module_a_notebook_uses_is_keyed_by_its_source(tmp_path, monkeypatch):
    versions = {}
    for folder, hidden in (("a", 50), ("b", 50), ("c", 60)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "settings_module.py").write_text(
            f"from pathlib import Path\nHIDDEN = {hidden}\nHERE = Path(__file__).parent\n")
        module = _import(tmp_path / folder / "settings_module.py", "settings_module", monkeypatch)
        nb = _notebook("def run():\n    return {'h': sm.HIDDEN, 'here': str(sm.HERE)}")
        nb["sm"] = module
        versions[folder] = cache.code_version(nb["run"])
        assert cache._Describer()(module) == {
            "__module__": "settings_module",
            "source": _sha((tmp_path / folder / "settings_module.py").read_bytes())}
    assert versions["a"] == versions["b"] != versions["c"]


@dataclasses.dataclass
class Point:  # its __init__ is made by exec(): no line of this file is its source
    x: float = 0.0


def test_a_dataclass_of_a_module_has_a_key():
    assert cache.code_version(Point) == cache.code_version(Point)


def test_a_read_only_results_folder_fails_before_running(tmp_path, read_only):
    folder = read_only(tmp_path / "ro")
    with pytest.raises(OSError, match="cannot store results in .*ro"):
        cache.train_or_load("exp", {"steps": 2, "lr": 0.1}, _experiment, root=folder)
    assert CALLS == []


def test_a_module_edited_after_its_import_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "experiment_module.py"
    path.write_text(MODULE.format(hidden=50))
    module = _import(path, "experiment_module", monkeypatch)
    before = cache.code_version(module.run)
    for edit in ("HIDDEN = 60", "HIDDEN = 70 - 20", "HIDDEN = 50\n\n\ndef added():\n    pass"):
        path.write_text(MODULE.format(hidden=50).replace("HIDDEN = 50", edit))
        with pytest.raises(RuntimeError, match="experiment_module.py has changed since it was "
                                               "imported.*Restart the kernel"):
            cache.code_version(module.run)
    monkeypatch.syspath_prepend(tmp_path)  # where reload finds it
    importlib.reload(module)
    assert module.added and cache.code_version(module.run) != before


def test_a_function_edited_before_the_file_is_read_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "experiment_module.py"
    path.write_text(MODULE.format(hidden=50))
    module = _import(path, "experiment_module", monkeypatch)
    path.write_text(MODULE.format(hidden=50).replace("len(here.parts)", "0"))
    with pytest.raises(RuntimeError, match="experiment_module.py has changed since it was imported"):
        cache.code_version(module.run)


# --- notebooks --------------------------------------------------------------------------

_CELLS = itertools.count()


def _notebook(source, namespace=None):
    """Run ``source`` as Jupyter runs a cell: in ``__main__``, a module without a file,
    with the cell's text in linecache. ``namespace=None`` starts a new kernel."""
    if namespace is None:
        kernel = types.ModuleType("__main__")
        sys.modules["__main__"] = kernel  # as ipykernel does
        namespace = kernel.__dict__
    source = textwrap.dedent(source)
    filename = f"/tmp/ipykernel_0/{next(_CELLS)}.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return namespace


NOTEBOOK = """
import numpy as np
import torch
from torch import nn
from bnutils import norms

HIDDEN = 50
UNUSED = 1
x_train = torch.arange(2000.0)
NAMES = {"b", "a", "c"}

class Noisy(nn.Module):
    scale = 2.0

    def forward(self, x):
        return self.scale * x + torch.ones(HIDDEN)

METHODS = {
    "gn": ("Group Norm", lambda d: norms.GroupNorm(10, d)),
    "noisy": ("noisy", lambda d: Noisy()),
}

def helper(n):
    return n * HIDDEN

def run(method, steps):
    layer = METHODS[method][1](HIDDEN)
    return {"x": np.full(steps, helper(len(NAMES))), "mean": float(x_train.mean())}
"""


def _versions_after(*edits):
    """The code version of a notebook's ``run``, then after each edit of one cell."""
    nb = _notebook(NOTEBOOK)
    versions = [cache.code_version(nb["run"])]
    for edit in edits:
        _notebook(edit, nb)
        versions.append(cache.code_version(nb["run"]))
    return versions


def test_notebook_globals_classes_and_tables_of_lambdas_are_keyed():
    edits = [
        "HIDDEN = 60",
        "x_train = x_train.clone(); x_train[1000] += 1",
        "NAMES = NAMES | {'d'}",
        "Noisy.scale = 3.0",
        """
        class Noisy(nn.Module):
            scale = 3.0

            def forward(self, x):
                return self.scale * x - torch.ones(HIDDEN)
        """,
        'METHODS["gn"] = ("Group Norm", lambda d: norms.GroupNorm(5, d))',
        "def helper(n):\n    return n + HIDDEN",
    ]
    versions = _versions_after(*edits)
    assert len(set(versions)) == len(versions)


def test_notebook_keys_survive_a_restart_and_ignore_unrelated_globals():
    first = _versions_after("UNUSED = 2", "scale = 5.0", "steps = 3")  # not globals of run
    restarted = _versions_after()
    assert len(set(first)) == 1 and restarted == first[:1]


def test_notebook_class_definitions_are_keyed():
    nb = _notebook(NOTEBOOK)
    before = cache.code_version(nb["Noisy"])
    _notebook("def _f(self):\n    return 1\nNoisy.extra = _f", nb)
    assert cache.code_version(nb["Noisy"]) != before


def _make(kind):
    return lambda steps, kind=kind: {"kind": kind}


def test_defaults_made_at_run_time_in_a_module_are_keyed():
    versions = {cache.code_version(_make(k)) for k in ("bn", "noisy", "bn")}
    assert len(versions) == 2


def test_defaults_are_keyed_as_they_were_when_defined():
    nb = _notebook("H = 1\ndef run(h=H):\n    return h\ndef kw(*, h=H):\n    return h\n")
    before = [cache.code_version(nb["run"]), cache.code_version(nb["kw"])]
    nb["H"] = 2  # the defaults stay 1: the keys too
    assert [cache.code_version(nb["run"]), cache.code_version(nb["kw"])] == before
    _notebook("H = 2\ndef run(h=H):\n    return h\ndef kw(*, h=H):\n    return h\n", nb)
    after = [cache.code_version(nb["run"]), cache.code_version(nb["kw"])]
    assert after[0] != before[0] and after[1] != before[1]


def test_code_made_on_the_fly_is_keyed_by_its_values(tmp_path):
    binary = tmp_path / "compiled.so"
    binary.write_bytes(b"\x7fELF\xff\xfe\x00")
    namespaces = [{"__name__": "compiled", "__file__": str(binary)},  # no Python source
                  {"__name__": "made_on_the_fly"},  # no module of that name
                  {}]  # no name at all
    for namespace in namespaces:
        exec("H = 1\ndef run():\n    return H\n", namespace)
        before = cache.code_version(namespace["run"])
        namespace["H"] = 2
        assert cache.code_version(namespace["run"]) != before


def test_bnutils_is_followed_where_it_is_installed(monkeypatch):
    nb = _notebook("from bnutils import models\ndef run():\n    return models.mlp()\n")
    before = cache.code_version(nb["run"])
    installed = str(Path(bnutils.__file__).parents[1].resolve()) + os.sep  # as in site-packages
    libraries = cache._library_folders()  # torch stays a library wherever .venv is
    monkeypatch.setattr(cache, "_library_folders", lambda: (*libraries, installed))
    assert cache.code_version(nb["run"]) == before
    monkeypatch.setattr(models, "mlp", lambda: None)
    assert cache.code_version(nb["run"]) != before


def test_an_object_of_ours_with_a_name_is_keyed_by_its_state():
    nb = _notebook("""
        class Step:
            def __init__(self, lr):
                self.__name__, self.lr = "step", lr

            def __call__(self, steps):
                return {"lr": self.lr}
    """)
    assert cache.code_version(nb["Step"](0.1)) != cache.code_version(nb["Step"](0.2))


def test_notebook_defaults_and_closures_are_keyed():
    nb = _notebook("""
        def make(kind):
            return lambda steps, kind=kind: {"kind": kind}
        def closure(hidden):
            def run(steps):
                return {"h": hidden}
            return run
    """)
    versions = {cache.code_version(nb["make"](k)) for k in ("bn", "noisy", "bn")}
    assert len(versions) == 2
    assert cache.code_version(nb["closure"](50)) != cache.code_version(nb["closure"](60))


def test_bound_methods_builtins_and_decorated_functions_are_followed():
    nb = _notebook("""
        import functools, torch
        TABLE = {"hidden": 50}

        class Runner:
            def __init__(self, hidden):
                self.hidden = hidden

            def run(self, steps):
                return {"h": self.hidden}

        def helper(steps):
            return {"steps": steps, "h": TABLE["hidden"]}

        @torch.no_grad()
        def decorated(steps):
            return helper(steps)

        memoised = functools.lru_cache(maxsize=None)(helper)
    """)
    callables = {"method": nb["Runner"](50).run, "builtin method": nb["TABLE"].get,
                 "decorated": nb["decorated"], "memoised": nb["memoised"]}
    before = {name: cache.code_version(fn) for name, fn in callables.items()}
    assert cache.code_version(nb["Runner"](50).run) == before["method"]
    assert cache.code_version(nb["Runner"](60).run) != before["method"]  # self counts
    runner = nb["Runner"](50)
    assert cache.code_version(runner.run) != cache.code_version(runner.__init__)  # the method
    nb["TABLE"]["hidden"] = 60
    _notebook("def helper(steps):\n    return {'steps': steps + 1}", nb)
    nb["Runner"].run = nb["helper"]
    after = {name: cache.code_version(fn) for name, fn in callables.items()}
    assert [name for name in callables if after[name] == before[name]] == []


def test_code_without_source_is_keyed_by_its_bytecode():
    def compiled(body):
        namespace = {"__name__": "__main__"}
        exec(compile(f"def run():\n    {body}\n", "<no source>", "exec"), namespace)
        return cache.code_version(namespace["run"])

    assert compiled("return 1") == compiled("return 1")
    assert compiled("return (lambda: 1)()") == compiled("return (lambda: 1)()")  # nested code
    assert len({compiled("return 1"), compiled("return 2"), compiled("return a()"),
                compiled("return b()"), compiled("return (lambda: 2)()"),
                compiled("return x in {'a', 'b'}")}) == 6


def _order_dependent_strings():
    """Two strings that a set holds in the order they were put in (they share a slot)."""
    for a, b in itertools.combinations((f"s{i}" for i in range(100)), 2):
        if list(frozenset([a, b])) != list(frozenset([b, a])):
            return a, b
    raise AssertionError("no two strings share a slot")


def test_set_order_does_not_enter_a_key():
    a, b = _order_dependent_strings()
    assert _key({"x": {a, b}}) == _key({"x": {b, a}})

    def compiled(body):
        namespace = {"__name__": "__main__"}
        exec(compile(f"def run(x):\n    {body}\n", "<no source>", "exec"), namespace)
        return cache.code_version(namespace["run"])

    assert compiled(f"return x in {{{a!r}, {b!r}}}") == compiled(f"return x in {{{b!r}, {a!r}}}")


def test_a_class_key_does_not_depend_on_its_line():
    source = "class Noisy:\n    def forward(self, x):\n        return x\n"
    versions = {cache.code_version(_notebook("\n" * lines + source)["Noisy"])
                for lines in (0, 5)}
    assert len(versions) == 1


def test_how_code_is_described():
    """What the key of a function or a class of a notebook is made of."""
    nb = _notebook("""
        HIDDEN = 50

        class Base:
            def forward(self, x):
                return x

        class Noisy(Base):
            scale = 2.0

        def run(steps, lr=0.1):
            return {"h": Noisy().forward(HIDDEN) * steps * lr}
    """)
    describe = cache._Describer()
    function = describe(nb["run"])
    assert set(function) == {"__function__", "source", "module", "defaults", "kwdefaults",
                             "closure", "globals"}
    assert function["__function__"] == "__main__.run" and function["module"] is None
    assert function["defaults"] == [0.1] and function["globals"]["HIDDEN"] == 50
    assert function["source"] == _sha(inspect.getsource(nb["run"]).encode())
    cls = function["globals"]["Noisy"]
    assert cls == {"__class__": "__main__.Noisy", "module": None,
                   "bases": [describe(nb["Base"])], "members": {
                       "__module__": "__main__", "scale": 2.0, "__doc__": None}}
    base = describe(nb["Base"])
    assert base["bases"] == [{"__class__": "builtins.object"}]
    assert base["members"]["forward"]["__function__"] == "__main__.Base.forward"
    assert describe([1].copy) == {"__builtin__": ["list.copy", [1]]}
    method = describe(Holder(2).run)
    assert method == {"__method__": [describe(Holder.run), {"__object__": [
        describe(Holder), {"value": 2}]}]}
    module_function = describe(_experiment)
    assert module_function["module"] == _sha(Path(__file__).read_bytes())
    assert module_function["defaults"] is None and module_function["closure"] == {}
    assert module_function["globals"]["np"] is None  # a library module of a module's code


def test_base_classes_and_class_attributes_of_a_notebook_are_keyed():
    nb = _notebook("""
        import abc

        class Base:
            def forward(self, x):
                return x

        class Noisy(Base):
            pass

        class Settings:  # data only: no method tells where it was defined
            hidden = 50

        class Abstract(abc.ABC):
            @abc.abstractmethod
            def step(self):
                pass
    """)
    versions = [cache.code_version(nb[name]) for name in ("Noisy", "Settings", "Abstract")]
    _notebook("def forward(self, x):\n    return 2 * x\nBase.forward = forward", nb)
    nb["Settings"].hidden = 60
    nb["Abstract"].extra = 1
    after = [cache.code_version(nb[name]) for name in ("Noisy", "Settings", "Abstract")]
    assert all(a != b for a, b in zip(versions, after, strict=True))


class Holder:
    def __init__(self, value):
        self.value = value

    def run(self):
        return {}


def _guarded(lock):
    def run():
        with lock:
            return {}

    return run


def test_an_unkeyable_value_bound_to_fn_names_where_it_is():
    import threading

    lock = threading.Lock()
    where = {
        functools.partial(_echo, lock): "fn -> partial args -> [0]",
        functools.partial(_echo, x=lock): "fn -> partial keywords -> ['x']",
        Holder(lock).run: "fn -> self -> Holder -> ['value']",
        [lock].copy: "fn -> self -> [0]",
        _guarded(lock): "fn -> _guarded.<locals>.run -> lock",
    }
    for fn, path in where.items():
        with pytest.raises(TypeError, match=re.escape(f"cannot key the results cache on {path}:")):
            cache.code_version(fn)


def test_a_class_from_nowhere_has_a_key():
    loose = type("Loose", (), {"x": 1, "__module__": "not_a_module"})
    assert cache.code_version(loose) != cache.code_version(type("Loose", (), {"x": 2}))


def test_an_unkeyable_class_attribute_names_where_it_is():
    nb = _notebook("""
        import threading

        class Guarded:
            lock = threading.Lock()

        def run():
            return {"x": Guarded.lock.locked()}
    """)
    with pytest.raises(TypeError, match=re.escape("fn -> run -> global Guarded -> Guarded.lock")):
        cache.code_version(nb["run"])


def test_self_referencing_values_have_a_key():
    nb = _notebook("TABLE = {'a': 1}\nTABLE['self'] = TABLE\ndef run():\n    return TABLE")
    assert cache.code_version(nb["run"]).startswith(bnutils.__version__)


# --- the data ---------------------------------------------------------------------------


@pytest.fixture
def offline_mnist(monkeypatch, tmp_path):
    """An MNIST folder that starts empty, with no mirror reachable; real files to copy in."""
    source = data.default_root("mnist")
    if not any(source.glob("t10k-labels-idx1-ubyte*")):
        pytest.skip(f"no local MNIST files in {source}; set BNUTILS_DATA")
    spec = dataclasses.replace(data.DATASETS["mnist"], mirrors=("http://127.0.0.1:9/",))
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    folder = tmp_path / "mnist"
    folder.mkdir()

    def provide(available):
        for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            if available:
                shutil.copy(next(source.glob(name[:-3] + "*")), folder / name)
            else:
                (folder / name).unlink()

    return folder, provide


OFFLINE_FALLBACK = pytest.mark.filterwarnings("ignore:could not download")


def _count_labels(root):
    _, y = data.load_mnist("test", root=root)
    CALLS.append(len(y))
    return {"n": len(y)}


def _count_nothing():
    CALLS.append("ran")
    return {"n": 0}


@OFFLINE_FALLBACK
def test_a_result_on_the_offline_subset_is_not_served_as_full_mnist(offline_mnist, capsys):
    folder, provide = offline_mnist
    results = folder.parent / "results"

    def run():
        return cache.train_or_load("labels", {"root": str(folder)}, _count_labels, root=results)

    assert run()["n"] == 1000  # offline: the bundled subset
    provide(True)
    capsys.readouterr()
    assert run()["n"] == 10_000
    out = capsys.readouterr().out
    assert "computed on the bundled subset of mnist (test)" in out
    assert "gives the full mnist (test)" in out
    assert run()["n"] == 10_000
    provide(False)
    assert run()["n"] == 1000  # and the full result is not served offline either
    assert CALLS == [1000, 10_000, 1000]


@OFFLINE_FALLBACK
def test_data_loaded_before_the_run_counts(offline_mnist, tmp_path):
    folder, provide = offline_mnist
    data.load_mnist("test", root=folder)  # a notebook's global, or a memoised loader
    cache.train_or_load("exp", {}, _count_nothing, root=tmp_path)
    (meta,) = tmp_path.glob("*.json")
    (used,) = json.loads(meta.read_text())["data"]
    assert used["data"]["source"] == "subset" and used["args"]["root"] == str(folder)
    cache.train_or_load("exp", {}, _count_nothing, root=tmp_path)
    provide(True)
    cache.train_or_load("exp", {}, _count_nothing, root=tmp_path)
    assert CALLS == ["ran", "ran"]


def _outer(root, results):
    inner = cache.train_or_load("inner", {"root": root}, _count_labels, root=results)
    return {"n": inner["n"] + 1}


@OFFLINE_FALLBACK
def test_data_behind_a_cached_inner_result_counts(offline_mnist, tmp_path, monkeypatch):
    folder, provide = offline_mnist
    config = {"root": str(folder), "results": str(tmp_path)}
    cache.train_or_load("inner", {"root": str(folder)}, _count_labels, root=tmp_path)
    monkeypatch.setattr(data, "_LOADED", {})  # a new process: the inner result is cached
    assert cache.train_or_load("outer", config, _outer, root=tmp_path)["n"] == 1001
    assert CALLS == [1000]
    provide(True)
    monkeypatch.setattr(data, "_LOADED", {})
    assert cache.train_or_load("outer", config, _outer, root=tmp_path)["n"] == 10_001


@OFFLINE_FALLBACK
def test_data_that_cannot_be_loaded_now_means_computing_again(offline_mnist, tmp_path, capsys):
    folder, provide = offline_mnist
    provide(True)
    cache.train_or_load("labels", {"root": str(folder)}, _count_labels, root=tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    capsys.readouterr()
    with pytest.raises(data.DataError, match="checksum mismatch for .*t10k-labels"):
        cache.train_or_load("labels", {"root": str(folder)}, _count_labels, root=tmp_path)
    assert "the full mnist (test), which it was computed on, cannot be loaded now (checksum " \
           "mismatch" in capsys.readouterr().out
    assert CALLS == [10_000]


# --- slow: other processes -------------------------------------------------------


KEY_SCRIPT = """
import functools, sys
sys.path[:0] = [sys.argv[1], {tests!r}]  # the bnutils to use, then the tests
import bnutils
from bnutils import cache
from bnutils.experiments import figure1, figure3
from test_cache import NOTEBOOK, _notebook
nb = _notebook(NOTEBOOK)
print(bnutils.__file__)
print(cache.cache_key("exp", {{"ids": {{"x", "y", "z"}}, "method": "gn"}}, nb["run"]))
print(cache.code_version(functools.partial(sys.modules["bnutils.experiments.figure1"]._runs,
                                           units=4)))
print(cache.code_version(lambda **c: figure3.run_config(**c, evals=2)))
exec(compile("def f(x):\\n    return x in {{'bn', 'ln', 'gn', 'in'}}", "<no source>", "exec"))
print(cache.code_version(f))  # a frozenset of strings: its order depends on the hash seed
"""


def test_keys_are_the_same_in_another_process_checkout_and_hash_seed(tmp_path):
    """No memory address, set order or path of the checkout gets into a key."""
    copy = tmp_path / "elsewhere"
    shutil.copytree(Path(bnutils.__file__).parent, copy / "bnutils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = KEY_SCRIPT.format(tests=str(Path(__file__).parent))
    outputs = []
    for seed, folder in (("1", Path(bnutils.__file__).parents[1]), ("2", copy)):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script, str(folder)], env=env,
                             capture_output=True, text=True, check=True)
        outputs.append(out.stdout.strip().splitlines()[-5:])
    assert outputs[0][0] == str(Path(bnutils.__file__))
    assert outputs[1][0] == str(copy / "bnutils" / "__init__.py")
    assert outputs[0][1:] == outputs[1][1:]


# --- values of a module whose source is part of the key (sourced) -----------------------

_ENCODER = json.JSONEncoder()


@pytest.mark.parametrize("value, described", [
    (np.exp, None),  # a library callable by name
    (len, None),  # a builtin
    (json.dumps, None),  # a library function
    (functools.partial(json.dumps, indent=1), {"__partial__": [None, None, None]}),
    (functools.lru_cache(json.dumps),
     {"__wraps__": ["functools._lru_cache_wrapper", None]}),
    (_ENCODER.encode, {"__method__": [None, None]}),
])
def test_a_sourced_value_adds_no_library_code_or_data_to_a_key(value, described):
    """A module-level value of a module whose text is in the key: the library code and
    the data it refers to are named by that text already, and a library's internals
    must not move a key (only our code and the run's data do)."""
    assert cache._Describer()(value, sourced=True) == described
    assert cache._Describer()(value) not in (None, described)  # unsourced: described


def _uses_numpy(x):
    return np.exp(x) + np.float64(1.0)


def test_attributes_read_from_a_library_module_are_not_listed():
    described = cache._Describer()(_uses_numpy)
    assert set(described["globals"]) == {"np"}  # no "np.*": numpy is not followed
