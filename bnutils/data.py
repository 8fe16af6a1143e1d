"""MNIST and Fashion-MNIST: download, verify, cache, load; mini-batches for training.

The four IDX files of a data set are looked up in a root folder (gzip-compressed or
not), downloaded from public mirrors when missing, and always verified against the
SHA-256 of their *uncompressed* bytes before use. A mirror that fails in any way (down,
not speaking HTTP, cutting the file short, serving a damaged or wrong file, or taking
longer than ``DEADLINE`` seconds) is skipped for the next; nothing partial is kept.
Offline with nothing local, each data set falls back to a small real subset of it
shipped inside ``bnutils`` (with a warning).

Every load is remembered with a fingerprint of what it loaded (``loaded``): the data
set, full or subset, and the checksums. ``bnutils.cache`` stores it with a result and
computes the result again when the same load would now give other data.
"""

import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import generator as make_generator


@dataclass(frozen=True)
class Dataset:
    name: str
    env: str  # environment variable naming the folder that holds the files
    mirrors: tuple  # base URLs, tried in order
    sha256: dict  # uncompressed file name -> SHA-256 of its bytes
    mean: float  # training-set pixel mean / 255 (tests recompute it)
    std: float  # training-set pixel std / 255


FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASETS = {
    "mnist": Dataset(
        name="mnist",
        env="BNUTILS_DATA",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mean=0.1307,
        std=0.3081,
    ),
    "fashion-mnist": Dataset(
        name="fashion-mnist",
        env="BNUTILS_FASHION_DATA",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mean=0.2860,
        std=0.3530,
    ),
}

SUBSETS = Path(__file__).with_name("resources")  # <name>-subset.npz per data set
IDX_MAGIC = {3: 2051, 1: 2049}  # ndim -> magic number of an IDX file of uint8
READ_TIMEOUT = 30  # seconds a mirror may stay silent before it is given up
DEADLINE = 300  # seconds one file may take from one mirror, however it trickles in
# what a mirror that is down, cut off or not speaking HTTP raises
_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


class DataError(RuntimeError):
    """A data file is missing, corrupt, or cannot be fetched; the message says what to do."""


def default_root(dataset="mnist"):
    """The folder a data set is read from: its environment variable, else the user cache."""
    spec = _spec(dataset)
    env = os.environ.get(spec.env)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    return Path(cache).expanduser() / "bnutils" / spec.name


def shown_path(path):
    """``path`` as a page prints it, without the folders of the machine that ran it:
    ``~/...`` under the home folder, else relative to the repository when the two share
    a top folder (``../shared/mnist``), else as given (a system folder such as
    ``/usr/share/datasets``)."""
    path = Path(path).expanduser().resolve()
    home = Path.home().resolve()
    if path == home or home in path.parents:
        return "~/" + path.relative_to(home).as_posix()
    repo = Path(__file__).resolve().parents[1]
    common = Path(os.path.commonpath([path, repo]))
    if (repo / "pyproject.toml").exists() and common != Path(common.anchor):
        return Path(os.path.relpath(path, repo)).as_posix()
    return path.as_posix()


def load_mnist(split="train", root=None, download=True, subset=False, dataset="mnist"):
    """Load one split of MNIST (or Fashion-MNIST) as uint8 NumPy arrays.

    Returns ``images: (N, 28, 28) uint8`` and ``labels: (N,) uint8``.
    ``root``: the folder with the four IDX files; default ``default_root(dataset)``.
    ``download``: fetch missing files from the public mirrors.
    ``subset=True`` returns the small real subset of the data set bundled with
    ``bnutils`` (``subset_path``).
    Every call is remembered (see ``loaded``), so that ``bnutils.cache`` can tell which
    data a result was computed on.
    """
    paths = _locate(split, root, download, subset, dataset)
    args = {"split": split, "root": _as_text(root), "download": download, "subset": subset,
            "dataset": dataset}
    _LOADED[_args_key(args)] = {"args": args, "data": _fingerprint(dataset, split, paths)}
    if paths is None:
        return load_subset(split, dataset)
    images = _read_idx(paths[0], ndim=3)
    labels = _read_idx(paths[1], ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    return images, labels


def load_fashion_mnist(split="train", root=None, download=True):
    """Fashion-MNIST (Xiao et al., 2017): same format as MNIST, harder to classify."""
    return load_mnist(split, root=root, download=download, dataset="fashion-mnist")


def subset_path(dataset="mnist"):
    """The file of the subset of ``dataset`` bundled with ``bnutils``."""
    return SUBSETS / f"{_spec(dataset).name}-subset.npz"


def load_subset(split="train", dataset="mnist"):
    """The bundled stratified subset of real MNIST or Fashion-MNIST (see
    ``bnutils/resources/README.md``)."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with np.load(subset_path(dataset), allow_pickle=False) as z:
        return z[f"{split}_images"].copy(), z[f"{split}_labels"].copy()


# --- which data a run used: for bnutils.cache --------------------------------------

_LOADED = {}  # every load_mnist call of this process: its arguments -> what it loaded


def loaded():
    """The data this process has loaded so far, one entry per ``load_mnist`` call.

    Each entry is ``{"args": ..., "data": ...}``: the arguments, which ``fingerprint``
    takes to tell what the same call would load now, and that fingerprint at the time.
    """
    return [dict(entry) for entry in _LOADED.values()]


def remember(entries):
    """Count ``entries`` (as ``loaded`` returns them) as loaded by this process.

    ``bnutils.cache`` calls it for the data behind a result it loads from disk. Where
    this process loaded the bundled subset itself, that record stays: what it computes
    may rest on the subset, and must never pass for a result on the full data.
    """
    for entry in entries:
        held = _LOADED.get(_args_key(entry["args"]))
        if held is None or held["data"]["source"] != "subset":
            _LOADED[_args_key(entry["args"])] = entry


def _args_key(args):
    return tuple(sorted(args.items()))


def fingerprint(split="train", root=None, download=True, subset=False, dataset="mnist"):
    """What ``load_mnist`` with these arguments loads now, without reading the images.

    Returns ``{"dataset", "split", "source", "sha256"}``: ``source`` is ``"full"`` (the
    published files, verified against ``sha256``) or ``"subset"`` (the bundled file,
    asked for or fallen back to offline). It may download, as ``load_mnist`` would.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warns when the data is loaded
        paths = _locate(split, root, download, subset, dataset)
    return _fingerprint(dataset, split, paths)


def _fingerprint(dataset, split, paths):
    spec = _spec(dataset)
    if paths is None:
        path = subset_path(dataset)
        return {"dataset": spec.name, "split": split, "source": "subset",
                "sha256": {path.name: _file_sha256(path)}}
    return {"dataset": spec.name, "split": split, "source": "full",
            "sha256": {name: spec.sha256[name] for name in FILES[split]}}


def _as_text(root):
    return None if root is None else str(Path(root).expanduser())


def _file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- finding, verifying and downloading the files ----------------------------------


def _locate(split, root, download, subset, dataset):
    """The verified image and label files of ``split``, or None for the bundled subset."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = _spec(dataset)
    if subset:
        return None
    root = Path(root).expanduser() if root is not None else default_root(dataset)
    try:
        return [_ensure_file(spec, root, name, download) for name in FILES[split]]
    except _Offline as err:
        warnings.warn(
            f"{err}\nFalling back to the small {spec.name} subset bundled with bnutils "
            f"({_subset_size(split, dataset)} {split} images): results will differ from "
            f"the full data set. To use the full data set, put its four files in a "
            f"folder and set {spec.env} to it, or connect to the internet.",
            stacklevel=3,
        )
        return None


def _subset_size(split, dataset="mnist"):
    with np.load(subset_path(dataset), allow_pickle=False) as z:
        return len(z[f"{split}_labels"])


def _spec(dataset):
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}") from None


class _Offline(DataError):
    """No mirror could deliver the file (as opposed to a mirror serving bad bytes)."""


def _ensure_file(spec, root, name, download):
    """Path of a verified copy of ``name`` in ``root``, downloading it if allowed."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.exists():
            _verify(candidate, spec.sha256[name])
            return candidate
    if not download:
        raise DataError(
            f"{name}(.gz) of {spec.name} not found in {root}. Pass download=True, or put the "
            f"file there, or set {spec.env} to the folder that has it."
        )
    return _download(spec, root, name)


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _uncompressed_bytes(path):
    # decide by content, not by name: a mirror may serve either form
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:  # bad header, truncated or damaged body
        raise DataError(
            f"{path} is corrupt or truncated ({err}). Delete it and load again to re-download."
        ) from err


_VERIFIED = {}  # (path, size, mtime) -> SHA-256: each file is hashed once per process


def _sha256(path):
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = hashlib.sha256(_uncompressed_bytes(path)).hexdigest()
    return _VERIFIED[key]


def _verify(path, expected):
    digest = _sha256(path)
    if digest != expected:
        raise DataError(
            f"checksum mismatch for {path}: SHA-256 of its uncompressed bytes is {digest}, "
            f"expected {expected}. The file is corrupt or not the original; delete it and "
            f"load again to re-download."
        )


def _download(spec, root, name):
    """Fetch ``name`` into ``root`` from the first mirror that serves it intact."""
    if not _can_write(root):
        if not _reachable(spec, name):
            raise _Offline(f"{name} of {spec.name} is not in {root}, which is read-only, "
                           f"and no mirror can be reached.")
        raise DataError(f"cannot write to the data folder {root}. Pass another root=, or set "
                        f"{spec.env} to a writable folder.")
    errors, reached = [], False
    for base in spec.mirrors:
        url = f"{base}{name}.gz"
        try:
            part = _fetch(url, root)
        except _NETWORK_ERRORS as err:
            errors.append(f"{url}: {type(err).__name__}: {err}")
            continue
        reached = True
        problem = _problem(part, spec.sha256[name])
        if problem:
            _remove(part)
            errors.append(f"{url}: served a bad file ({problem})")
            continue
        final = root / (f"{name}.gz" if _is_gzip(part) else name)
        os.replace(part, final)
        return final
    kind = DataError if reached else _Offline
    raise kind(
        f"could not download {name} of {spec.name}:\n  " + "\n  ".join(errors)
        + f"\nCheck the internet connection, or download {name}.gz yourself and put it "
        f"in {root} (or set {spec.env} to the folder that has it)."
    )


def _problem(path, expected):
    """What is wrong with a downloaded file, or None when it is the original."""
    try:
        digest = _sha256(path)
    except DataError as err:
        return f"corrupt or truncated: {err.__cause__}"
    except BaseException:
        _remove(path)
        raise
    if digest != expected:
        return f"checksum mismatch: SHA-256 of its uncompressed bytes is {digest}"
    return None


def _can_write(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _reachable(spec, name):
    """Whether any mirror answers at all (asked only when the data folder is read-only)."""
    for base in spec.mirrors:
        request = urllib.request.Request(f"{base}{name}.gz", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=READ_TIMEOUT):
                return True
        except urllib.error.HTTPError:
            return True  # a server answered, if only with an error
        except _NETWORK_ERRORS:
            continue
    return False


def _remove(path):
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:  # still open elsewhere (Windows): its writer removes it
        pass


def _fetch(url, folder):
    """Download ``url`` into a new ``.part`` file in ``folder`` within ``DEADLINE`` s.

    A helper thread does the copying, so that a mirror sending a byte now and then
    (each read well within ``READ_TIMEOUT``) cannot hold the loader past the deadline.
    """
    fd, name = tempfile.mkstemp(dir=folder, suffix=".part")
    part, stop, failures = Path(name), threading.Event(), []
    worker = threading.Thread(target=_copy, args=(url, os.fdopen(fd, "wb"), part, stop, failures),
                              daemon=True)
    try:
        worker.start()
        worker.join(DEADLINE)
        if worker.is_alive():
            failures.append(TimeoutError(f"the download took longer than {DEADLINE} s"))
        if failures:
            raise failures[0]
    except BaseException:
        stop.set()
        _remove(part)
        raise
    return part


def _copy(url, out, part, stop, failures):
    """Copy ``url`` into the open file ``out``, with a progress bar; stop when ``stop`` is set."""
    from tqdm.auto import tqdm

    try:
        with out, urllib.request.urlopen(url, timeout=READ_TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
                while not stop.is_set() and (chunk := response.read1(1 << 16)):
                    out.write(chunk)
                    bar.update(len(chunk))
            if response.length:  # the server closed the connection early
                raise http.client.IncompleteRead(b"", response.length)
    except BaseException as err:  # reported by the thread that waits for this one
        failures.append(err)
    if stop.is_set():
        _remove(part)


def _read_idx(path, ndim):
    data = _uncompressed_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes)")
    magic, *shape = struct.unpack(f">{1 + ndim}I", data[:header])
    if magic != IDX_MAGIC[ndim]:
        raise DataError(
            f"{path}: wrong IDX header (magic number {magic}, expected {IDX_MAGIC[ndim]} "
            f"for a {ndim}-d uint8 array). Is it the right file?"
        )
    if len(data) != header + int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {tuple(shape)} but the file has "
                        f"{len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


# --- tensors and mini-batches -------------------------------------------------------


def to_tensors(images, labels, flatten=True, dataset="mnist", device=None):
    """Standardised float32 inputs and int64 labels, ready for a model.

    ``images: (N, 28, 28) uint8`` become ``(N, 784)`` (``flatten``) or ``(N, 1, 28, 28)``,
    scaled to [0, 1] then standardised with the training-set mean and std of ``dataset``.
    """
    spec = _spec(dataset)
    x = torch.as_tensor(images, dtype=torch.float32).div_(255.0).sub_(spec.mean).div_(spec.std)
    x = x.reshape(len(x), -1) if flatten else x.unsqueeze(1)
    y = torch.as_tensor(labels, dtype=torch.int64)
    return x.to(device), y.to(device)


def mnist_tensors(split="train", flatten=True, dataset="mnist", device=None, **load_kwargs):
    """``load_mnist`` followed by ``to_tensors``: the usual one-liner in the notebooks."""
    images, labels = load_mnist(split, dataset=dataset, **load_kwargs)
    return to_tensors(images, labels, flatten=flatten, dataset=dataset, device=device)


def train_val_split(x, y, n_val, seed=0):
    """Split off ``n_val`` random examples for validation: ``(x_tr, y_tr), (x_val, y_val)``."""
    if not 0 < n_val < len(x):
        raise ValueError(f"n_val must be between 1 and {len(x) - 1}, got {n_val}")
    perm = torch.randperm(len(x), generator=make_generator(seed)).to(x.device)
    val, tr = perm[:n_val], perm[n_val:]
    return (x[tr], y[tr]), (x[val], y[val])


def batches(x, y, batch_size, seed=0, drop_last=True):
    """Endless shuffled mini-batches ``(xb, yb)``: a new permutation every epoch.

    The order depends only on ``seed``, so two networks trained with the same seed see
    the same examples in the same order. Batches live on the device of ``x``.
    """
    if batch_size < 1 or batch_size > len(x):
        raise ValueError(f"batch_size must be between 1 and {len(x)}, got {batch_size}")
    g = make_generator(seed)
    while True:
        perm = torch.randperm(len(x), generator=g).to(x.device)
        stop = len(x) - len(x) % batch_size if drop_last else len(x)
        for i in range(0, stop, batch_size):
            idx = perm[i : i + batch_size]
            yield x[idx], y[idx]
