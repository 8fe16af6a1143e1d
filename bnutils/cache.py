"""Cache experiment results on disk, keyed by everything that decides them.

Long runs go through ``train_or_load(name, config, fn)``: the first call runs
``fn(**config)`` and stores its result (NumPy arrays in ``.npz``, everything else in
JSON, never pickle); a later call loads it instead, as long as nothing it depends on
has changed. The key covers

- the configuration, arrays and tensors by their contents (key order does not matter);
- the code: ``fn`` itself with the arguments a ``functools.partial`` binds, its default
  arguments and closure, and, followed recursively, everything it names: functions and
  classes of a notebook, of ``bnutils`` or of your own modules, with the whole source of
  the modules they live in, and, for code that has no source file (a notebook), the
  values of the globals it uses (``HIDDEN = 50``, a table of lambdas, a tensor of data);
- the ``bnutils`` version.

What a run shows is not part of it: experiments read whether to draw progress bars
from ``bnutils.config`` when they run (``BNBOOK_PROGRESS``), so no argument, closure or
``functools.partial`` binds it, and a run with live bars and the same run without them
share one result. Every bound argument counts.

Library code (PyTorch, NumPy, the standard library) counts by its name only.
The data is checked as well: ``bnutils.data`` remembers what this process has loaded;
a result records it, and is computed again when loading the same now would give other
files (the bundled MNIST subset offline instead of the full data set, or the reverse).

Before the local cache, ``train_or_load`` asks the committed store ``results/``
(``bnutils.store``), under the same key; ``BNBOOK_TRAIN`` decides whether a run that
neither holds is trained (``allow``, the default), refused (``forbid``: the book build)
or trained into the store (``store``: ``make results``).
"""

import dis
import enum
import functools
import hashlib
import importlib.machinery
import inspect
import json
import os
import re
import site
import sys
import sysconfig
import tempfile
import types
import zipfile
from pathlib import Path, PurePath

import numpy as np
import torch

from . import data, store
from .config import progress_mode, train_mode


def results_root():
    """``BNUTILS_RESULTS`` if set, else ``~/.cache/bnutils/results``."""
    env = os.environ.get("BNUTILS_RESULTS")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "bnutils" / "results"


def train_or_load(name, config, fn, root=None, verbose=None):
    """Return ``fn(**config)``: from the store, from the cache, or computed (and cached).

    ``verbose``: say where a result came from ("loaded cached result ...") and why one
    is computed again. By default the first only where a person watches
    (``progress_mode() == "live"``), never in the book's build or the tests, whose
    pages must not show the machine's paths; ``False`` says neither.

    ``fn`` must return a dict whose values are NumPy arrays (stored in ``.npz``),
    JSON values (numbers, strings, lists) or dicts of those, nested, with string keys.
    What cannot be keyed or stored is refused before ``fn`` runs where it can be: the
    name, the configuration and the code; the result's values when ``fn`` returns.
    """
    folder = Path(root) if root is not None else results_root()
    key, stored_config, code = _key(name, config, fn)
    shown = verbose if verbose is not None else progress_mode() == "live"
    if store.replaying():  # a stored run being recomputed: nothing to look up or keep
        return fn(**config)
    served = store.serve(key, name, config, fn, shown)
    if served is not None:
        return served
    mode = train_mode()
    if mode == "forbid":
        raise store.missing(name, key)
    if mode == "store":
        description = {"name": name, "config": stored_config, "code": code}
        return store.compute(key, name, config, fn, description, shown)
    npz, meta = folder / f"{key}.npz", folder / f"{key}.json"
    result, why = _load(npz, meta)
    if result is not None:
        if shown:
            print(f"loaded cached result {key} from {folder}")
        return result
    if why and verbose is not False:
        print(f"computing {key} again: {why}")
    _check_writable(folder)
    result = fn(**config)
    # all data this process holds counts, as a run may use data loaded before it started
    # (a notebook global, a memoised loader)
    doc = {"name": name, "config": stored_config, "code": code, "data": data.loaded()}
    _store(npz, meta, result, doc)
    return _read(npz, meta)[1]


def cache_key(name, config, fn):
    """A file-name-safe key for experiment ``fn`` named ``name``, run with ``config``."""
    return _key(name, config, fn)[0]


def code_version(fn):
    """The ``bnutils`` version and a digest of ``fn``: its code and everything it uses."""
    from . import __version__

    return f"{__version__}+{_digest(_Describer()(fn))[:12]}"


def _key(name, config, fn):
    """The key, the configuration as stored, and the code version: refuses what it cannot key."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"name {name!r} must be letters, digits, '.', '_' or '-' (it names files)")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TypeError(f"config must be a dict of keyword arguments for fn, got {config!r}")
    stored = _Describer("config")(dict(sorted(config.items())))
    code = code_version(fn)
    return f"{name}-{_digest([stored, code])[:16]}", stored, code


def _digest(description):
    return hashlib.sha256(json.dumps(description).encode()).hexdigest()


# --- describing a value and the code behind it ---------------------------------------

_SCALARS = (type(None), bool, int, float, str)


class _Describer:
    """Turns a value into JSON that changes whenever the value, or the code it runs, does.

    ``sourced=True`` describes a value defined in a module whose source is already part
    of the description: only the code it refers to is followed, its data is skipped.
    """

    def __init__(self, where="fn"):
        self.where = [where]  # what is being described, for error messages
        self.active = set()  # ids of the objects being described: a repeat is a cycle
        self.done = {}  # (id, sourced) -> (object, description); keeps the object alive

    def __call__(self, value, sourced=False):
        if isinstance(value, _SCALARS):
            return None if sourced else value
        if id(value) in self.active:
            return {"__cycle__": type(value).__name__}
        if (id(value), sourced) not in self.done:
            self.active.add(id(value))
            try:
                self.done[id(value), sourced] = (value, self._describe(value, sourced))
            finally:
                self.active.discard(id(value))
        return self.done[id(value), sourced][1]

    def _describe(self, value, sourced):
        for kinds, method in _HANDLERS:
            if isinstance(value, kinds):
                return method(self, value, sourced)
        if callable(value) and hasattr(value, "__wrapped__"):  # functools.lru_cache and kin
            return {"__wraps__": [_name(type(value)), self(value.__wrapped__, sourced)]}
        if _is_library(type(value).__module__) and hasattr(value, "__name__"):  # np.exp
            return None if sourced else {"__named__": f"{_name(type(value))}:{value.__name__}"}
        if sourced:
            return None
        if hasattr(value, "__dict__"):
            return {"__object__": [self(type(value)), self.at(type(value).__name__, vars(value))]}
        raise TypeError(
            f"cannot key the results cache on {' -> '.join(self.where)}: a "
            f"{type(value).__name__}, whose contents the cache cannot read. Put what it "
            f"depends on into the config (numbers, strings, lists, dicts, arrays, tensors)."
        )

    def at(self, where, value, sourced=False):
        self.where.append(where)
        try:
            return self(value, sourced)
        finally:
            self.where.pop()

    # data

    def data(self, value, sourced):
        if sourced:
            return None
        if isinstance(value, np.generic):
            item = value.item()
            return {"__numpy__": [value.dtype.str, item if isinstance(item, _SCALARS)
                                  else _array_digest(np.asarray(value))]}
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise TypeError(f"cannot key the results cache on {' -> '.join(self.where)}: "
                                f"an array of Python objects (dtype {value.dtype})")
            return {"__ndarray__": [value.dtype.str, list(value.shape), _array_digest(value)]}
        if isinstance(value, torch.Tensor):
            return {"__tensor__": [str(value.dtype), list(value.shape), value.device.type,
                                   _tensor_digest(value)]}
        tag, plain = _plain(value)
        return {f"__{tag}__": plain}

    def container(self, value, sourced):
        if isinstance(value, (set, frozenset)):
            items = sorted((self.at("a set", v, sourced) for v in value), key=json.dumps)
            described = {"__set__": items}
        elif not isinstance(value, dict):
            items = [self.at(f"[{i}]", v, sourced) for i, v in enumerate(value)]
            described = items
        elif all(isinstance(k, str) and not k.startswith("__") for k in value):
            described = {k: self.at(f"[{k!r}]", v, sourced) for k, v in value.items()}
            items = list(described.values())
        else:
            pairs = [[self(k, sourced), self.at(f"[{k!r}]", v, sourced)] for k, v in value.items()]
            described, items = {"__dict__": pairs}, [d for pair in pairs for d in pair]
        if sourced and not any(items):  # data only, and the module's source says it all
            return None
        return described

    # code

    def partial(self, value, sourced):
        keywords = dict(sorted(value.keywords.items()))
        return {"__partial__": [self(value.func, sourced),
                                self.at("partial args", value.args, sourced),
                                self.at("partial keywords", keywords, sourced)]}

    def method(self, value, sourced):
        return {"__method__": [self(value.__func__, sourced),
                               self.at("self", value.__self__, sourced)]}

    def builtin(self, value, sourced):
        owner = value.__self__
        if owner is None or isinstance(owner, types.ModuleType):
            return None if sourced else {"__builtin__": f"{value.__module__}.{value.__qualname__}"}
        return {"__builtin__": [value.__qualname__, self.at("self", owner, sourced)]}

    def function(self, value, sourced):
        name = f"{value.__module__}.{value.__qualname__}"
        if _is_library(value.__module__):  # a decorated function of ours has our module
            return None if sourced else {"__function__": name}
        text = _module_text(value.__globals__)
        if text is not None and _edited_since_import(value, text):
            _refuse_edited(value.__code__.co_filename)
        in_source = text is not None and "<locals>" not in value.__qualname__
        self.where.append(value.__qualname__)
        try:
            return {"__function__": name, "source": _source_digest(value),
                    "module": text and _text_digest(text),
                    "defaults": self(value.__defaults__, in_source),
                    "kwdefaults": self(value.__kwdefaults__, in_source),
                    "closure": self.closure(value),
                    "globals": self.names(value.__code__, value.__globals__, text is not None)}
        finally:
            self.where.pop()

    def closure(self, fn):
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True))
        return {name: self.at(name, _cell_value(cell)) for name, cell in cells.items()}

    def names(self, code, namespace, sourced):
        """The globals ``code`` loads, and the attributes it reads from our modules."""
        described, attributes = {}, _names(code, _ATTRIBUTE_OPS)
        for name in sorted(_names(code, _GLOBAL_OPS)):
            if name not in namespace:
                continue  # a builtin
            value = namespace[name]
            described[name] = self.at(f"global {name}", value, sourced)
            if isinstance(value, types.ModuleType) and not _is_library(value.__name__):
                described[f"{name}.*"] = {a: self(getattr(value, a), True)
                                          for a in sorted(attributes) if hasattr(value, a)}
        return described

    def cls(self, value, sourced):
        name = _name(value)
        if _is_library(value.__module__):
            return None if sourced else {"__class__": name}
        text = _module_text(_class_namespace(value))
        in_source = text is not None
        members = {k: self.at(f"{value.__qualname__}.{k}", _unbound(v), in_source)
                   for k, v in vars(value).items() if not _skipped(k)}
        return {"__class__": name, "module": text and _text_digest(text),
                "bases": [self(b) for b in value.__bases__], "members": members}

    def module(self, value, sourced):
        if _is_library(value.__name__):
            return None if sourced else {"__module__": value.__name__}
        text = _module_text(vars(value))
        return {"__module__": value.__name__, "source": text and _text_digest(text)}


_HANDLERS = (
    ((np.generic, np.ndarray, torch.Tensor, np.dtype, torch.dtype, torch.device,
      torch.Generator, PurePath, enum.Enum, range, slice, bytes, bytearray, complex),
     _Describer.data),
    ((list, tuple, dict, set, frozenset), _Describer.container),
    (functools.partial, _Describer.partial),
    (types.MethodType, _Describer.method),
    (types.BuiltinFunctionType, _Describer.builtin),
    (types.FunctionType, _Describer.function),
    (type, _Describer.cls),
    (types.ModuleType, _Describer.module),
)
_GLOBAL_OPS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"}
_ATTRIBUTE_OPS = {"LOAD_ATTR", "LOAD_METHOD"}


def _plain(value):
    """A tag and JSON for the small data types that are not JSON themselves."""
    if isinstance(value, (bytes, bytearray)):
        return "bytes", hashlib.sha256(value).hexdigest()
    if isinstance(value, complex):
        return "complex", [value.real, value.imag]
    if isinstance(value, (range, slice)):
        return type(value).__name__, [value.start, value.stop, value.step]
    if isinstance(value, enum.Enum):
        return "enum", [_name(type(value)), value.name]
    if isinstance(value, PurePath):
        return "path", value.as_posix()
    if isinstance(value, torch.device):
        return "device", value.type
    if isinstance(value, torch.Generator):
        return "generator", [value.device.type, _tensor_digest(value.get_state())]
    return "dtype", str(value)  # "float32", "torch.float32"


def _array_digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _tensor_digest(tensor):
    flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(flat.numpy()).hexdigest()


def _name(obj):
    return f"{obj.__module__}.{obj.__qualname__}"


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return "<empty cell>"


def _class_namespace(cls):
    """The globals of the module or notebook that defines ``cls``."""
    for member in vars(cls).values():
        if isinstance(_unbound(member), types.FunctionType):
            return _unbound(member).__globals__
    return getattr(sys.modules.get(cls.__module__), "__dict__", {})


def _unbound(member):
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    if isinstance(member, property):
        return [member.fget, member.fset, member.fdel]
    return member


def _skipped(name):
    """Class attributes that are no part of what it does: its line (Python 3.13), ABC's cache."""
    return name in ("__firstlineno__", "_abc_impl")


def _names(code, ops):
    """Names that ``code``, and the lambdas, comprehensions and functions inside it, load."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ops}
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _names(const, ops)
    return names


def _source_digest(fn):
    """The function's source text, or, for code without source, its bytecode and names."""
    try:
        return _text_digest(inspect.getsource(fn))
    except (OSError, TypeError):
        return _text_digest(repr(_code_parts(fn.__code__)))


def _code_parts(code):
    consts = [_code_parts(c) if inspect.iscode(c) else
              sorted(map(repr, c)) if isinstance(c, frozenset) else repr(c)
              for c in code.co_consts]
    return [code.co_code.hex(), code.co_names, code.co_varnames, consts]


def _text_digest(text):
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


_TEXTS = {}  # module file -> (its module's spec, its text when first read)


def _module_text(namespace):
    """The source of the module with globals ``namespace``; None for a notebook."""
    path = namespace.get("__file__")
    if not path or not str(path).endswith(".py"):
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
    spec, first = _TEXTS.get(path, (None, text))
    if spec is namespace.get("__spec__") and text != first:  # edited, not reloaded
        _refuse_edited(path)
    _TEXTS[path] = (namespace.get("__spec__"), text)
    return text


def _refuse_edited(path):
    raise RuntimeError(f"{path} has changed since it was imported: the code that would run is "
                       f"not the code in the file. Restart the kernel (or reload the module) "
                       f"and run again.")


def _edited_since_import(fn, text):
    """Whether the code of ``fn`` is not what its module's file compiles to now.

    It catches an edited function even when the file was first read after the edit.
    """
    if fn.__code__.co_filename != fn.__globals__.get("__file__"):
        return False  # made by exec() or a decorator: there is nothing to compare
    if not isinstance(fn.__globals__.get("__loader__"), importlib.machinery.SourceFileLoader):
        return False  # compiled by another loader (pytest's rewrites asserts)
    return fn.__code__ not in _code_objects(text, fn.__code__.co_filename)


@functools.lru_cache(maxsize=64)
def _code_objects(text, filename):
    """Every code object that compiling ``text`` gives: functions, lambdas, comprehensions."""
    found, todo = set(), [compile(text, filename, "exec", dont_inherit=True)]
    while todo:
        code = todo.pop()
        found.add(code)
        todo += [c for c in code.co_consts if inspect.iscode(c)]
    return found


@functools.cache
def _library_folders():
    paths = sysconfig.get_paths()
    folders = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders.update(site.getsitepackages() + [site.getusersitepackages()])
    return tuple(str(Path(f).resolve()) + os.sep for f in folders)


def _is_library(module_name):
    """Whether a module is someone else's code (counted by name) rather than ours."""
    if module_name is None:
        return False  # code made by exec(): follow it
    if module_name.split(".")[0] in ("bnutils", "__main__"):
        return False
    module = sys.modules.get(module_name)
    if module is None:
        return False  # not importable: code made on the fly, so follow it
    path = getattr(module, "__file__", None)
    return path is None or str(Path(path).resolve()).startswith(_library_folders())


# --- storing and loading results ------------------------------------------------------


def _check_writable(folder):
    """Fail before a long run, not after it, when its result could not be stored."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OSError(f"cannot store results in {folder} ({err}); set BNUTILS_RESULTS or "
                      f"pass root= to a writable folder") from err


def _store(npz, meta, result, doc):
    """Write ``result`` as ``npz`` + ``meta``: all or nothing, never a partial file."""
    if not isinstance(result, dict):
        raise TypeError(f"the experiment must return a dict, got {type(result).__name__}")
    arrays, values = _split(result)
    doc = {**doc, "values": values}
    temporary = []
    try:
        for path in (npz, meta):  # hidden files next to the final ones: renaming is atomic
            temporary.append(_temporary(path))
        with open(temporary[0], "wb") as f:
            np.savez_compressed(f, **arrays)
        doc["npz_sha256"] = _file_sha256(temporary[0])  # ties the two files together
        temporary[1].write_text(json.dumps(doc, indent=1, default=_jsonable))
        os.replace(temporary[0], npz)
        os.replace(temporary[1], meta)
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)


def _temporary(path):
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _load(npz, meta):
    """``(result, None)`` from the cache, or ``(None, why it must be computed)``."""
    if not (npz.exists() and meta.exists()):
        return None, "only one of its two files exists" if npz.exists() or meta.exists() else None
    try:
        used, result = _read(npz, meta)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        return None, f"the stored files cannot be read ({err})"
    changed = _data_changed(used)
    if changed:
        return None, changed
    data.remember(used)  # the data behind it is now part of this process
    return result, None


def _read(npz, meta):
    """The data a stored result was computed on, and the result."""
    doc = json.loads(meta.read_text())
    if doc["npz_sha256"] != _file_sha256(npz):
        raise ValueError("its arrays do not belong to its metadata")
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return doc["data"], _merge(arrays, doc["values"])


def _split(tree, prefix=""):
    """Separate the arrays of a nested dict (flat keys ``a/b``) from the other values."""
    arrays, other = {}, {}
    for key, value in tree.items():
        if not isinstance(key, str) or "/" in key:
            raise ValueError(f"result keys must be strings without '/': {key!r}")
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:  # NumPy would pickle it
                raise TypeError(f"cannot store {prefix}{key} in the results cache: an array of "
                                f"Python objects; return numbers, strings or nested dicts")
            arrays[prefix + key] = value
        elif isinstance(value, dict):
            sub_arrays, sub_other = _split(value, f"{prefix}{key}/")
            arrays.update(sub_arrays)
            other[key] = sub_other
        else:
            other[key] = value
    return arrays, other


def _merge(arrays, other):
    """Put the arrays back into the nested dict (``_split`` kept every dict there)."""
    for flat, value in arrays.items():
        *parents, leaf = flat.split("/")
        node = other
        for p in parents:
            node = node[p]
        node[leaf] = value
    return other


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in the results cache; "
                    f"return NumPy arrays or JSON values")


def _file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- which data a result was computed on ----------------------------------------------

def _data_changed(used):
    """Why the data behind a cached result differs from what loads now, or None."""
    for entry in used:
        was = entry["data"]
        try:
            now = data.fingerprint(**entry["args"])
        except data.DataError as err:
            return f"{_describe_data(was)}, which it was computed on, cannot be loaded now ({err})"
        if now != was:
            return (f"it was computed on {_describe_data(was)}, but loading the data now "
                    f"gives {_describe_data(now)}")
    return None


def _describe_data(fingerprint):
    kind = "the bundled subset of" if fingerprint["source"] == "subset" else "the full"
    return f"{kind} {fingerprint['dataset']} ({fingerprint['split']})"
