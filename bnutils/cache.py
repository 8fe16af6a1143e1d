"""Cache experiment results on disk, keyed by their configuration and by the code.

Long runs go through ``train_or_load``: the first call runs the experiment and stores
its result (NumPy arrays in ``.npz``, everything else in JSON, never pickle). A later
call loads it instead when the configuration, the ``bnutils`` version and the source of
the experiment (the module that defines it, or the function itself when it is defined
in a notebook) are unchanged. Changing a shared helper that alters results means
bumping ``bnutils.__version__``.
"""

import functools
import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np


def results_root():
    """``BNUTILS_RESULTS`` if set, else ``~/.cache/bnutils/results``."""
    env = os.environ.get("BNUTILS_RESULTS")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "bnutils" / "results"


def code_version(fn):
    """The ``bnutils`` version and a digest of the code that ``fn`` runs.

    That code is ``fn`` itself (unwrapped from ``functools.partial``), the functions of
    its own module or notebook that it calls by name, recursively, and, for a function
    of a module, that module's whole source.
    """
    from . import __version__

    digest = hashlib.sha256("".join(_sources(fn, set())).encode()).hexdigest()[:12]
    return f"{__version__}+{digest}"


def _sources(fn, seen):
    while isinstance(fn, functools.partial):
        fn = fn.func
    if fn in seen:
        return []
    seen.add(fn)
    try:
        parts = [inspect.getsource(fn)]
    except (OSError, TypeError):  # no source to be found: key on the version alone
        return []
    module = inspect.getmodule(fn)
    path = getattr(module, "__file__", None)
    if path and module.__name__ != "__main__":
        parts.append(Path(path).read_text())
    for name in sorted(_names(fn.__code__)):
        called = fn.__globals__.get(name)
        if inspect.isfunction(called) and called.__module__ == fn.__module__:
            parts += _sources(called, seen)
    return parts


def _names(code):
    """Global names used by ``code`` and by the lambdas and comprehensions inside it."""
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _names(const)
    return names


def cache_key(name, config, fn):
    """A file-name-safe key for experiment ``fn`` named ``name``, run with ``config``."""
    blob = json.dumps({"config": config, "code": code_version(fn)}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def train_or_load(name, config, fn, root=None, verbose=True):
    """Return ``fn(**config)``, from the cache when it has been computed before.

    ``fn`` must return a dict whose values are NumPy arrays (stored in ``.npz``),
    JSON-serialisable values (numbers, strings, lists), or dicts of those, nested.
    """
    folder = Path(root) if root is not None else results_root()
    key = cache_key(name, config, fn)
    npz, meta = folder / f"{key}.npz", folder / f"{key}.json"
    if npz.exists() and meta.exists():
        if verbose:
            print(f"loaded cached result {key} from {folder}")
        return _read(npz, meta)
    result = fn(**config)
    _write(folder, npz, meta, result, name, config, fn)
    return _read(npz, meta)


def _split(tree, prefix=""):
    """Separate the arrays of a nested dict (flat keys ``a/b``) from the other values."""
    arrays, other = {}, {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"result keys may not contain '/': {key!r}")
        if isinstance(value, np.ndarray):
            arrays[prefix + key] = value
        elif isinstance(value, dict):
            sub_arrays, sub_other = _split(value, f"{prefix}{key}/")
            arrays.update(sub_arrays)
            other[key] = sub_other
        else:
            other[key] = value
    return arrays, other


def _merge(arrays, other):
    tree = other
    for flat, value in arrays.items():
        *parents, leaf = flat.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _write(folder, npz, meta, result, name, config, fn):
    arrays, other = _split(result)
    folder.mkdir(parents=True, exist_ok=True)
    # write to temporary names first so an interrupted run leaves no half result
    tmp_npz, tmp_meta = npz.with_suffix(".tmp.npz"), meta.with_suffix(".tmp.json")
    np.savez_compressed(tmp_npz, **arrays)
    doc = {"name": name, "config": config, "code": code_version(fn), "values": other}
    tmp_meta.write_text(json.dumps(doc, indent=1, default=_jsonable))
    os.replace(tmp_npz, npz)
    os.replace(tmp_meta, meta)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in the results cache; "
                    f"return NumPy arrays or JSON values")


def _read(npz, meta):
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return _merge(arrays, json.loads(meta.read_text())["values"])
