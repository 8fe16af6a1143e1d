"""MNIST and Fashion-MNIST: download, verify, cache, load; mini-batches for training.

The four IDX files of a data set are looked up in a root folder (gzip-compressed or
not), downloaded from public mirrors when missing, and always verified against the
SHA-256 of their *uncompressed* bytes before use. Offline with nothing local, MNIST
falls back to a small real subset shipped inside ``bnutils`` (with a warning).
"""

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
import warnings
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

SUBSET_PATH = Path(__file__).with_name("resources") / "mnist-subset.npz"
IDX_MAGIC = {3: 2051, 1: 2049}  # ndim -> magic number of an IDX file of uint8


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


def load_mnist(split="train", root=None, download=True, subset=False, dataset="mnist"):
    """Load one split of MNIST (or Fashion-MNIST) as uint8 NumPy arrays.

    Returns ``images: (N, 28, 28) uint8`` and ``labels: (N,) uint8``.
    ``root``: the folder with the four IDX files; default ``default_root(dataset)``.
    ``download``: fetch missing files from the public mirrors.
    ``subset=True`` returns the small real MNIST subset bundled with ``bnutils``.
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = _spec(dataset)
    if subset:
        return load_subset(split)
    root = Path(root).expanduser() if root is not None else default_root(dataset)
    try:
        paths = [_ensure_file(spec, root, name, download) for name in FILES[split]]
    except DataError as err:
        if spec.name != "mnist" or not _offline(err):
            raise
        warnings.warn(
            f"{err}\nFalling back to the small MNIST subset bundled with bnutils "
            f"({_subset_size(split)} {split} images): results will differ from the full "
            f"data set. To use the full data set, put the four MNIST files in a folder "
            f"and set BNUTILS_DATA to it, or connect to the internet.",
            stacklevel=2,
        )
        return load_subset(split)
    images = _read_idx(paths[0], ndim=3)
    labels = _read_idx(paths[1], ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    return images, labels


def load_fashion_mnist(split="train", root=None, download=True):
    """Fashion-MNIST (Xiao et al., 2017): same format as MNIST, harder to classify."""
    return load_mnist(split, root=root, download=download, dataset="fashion-mnist")


def load_subset(split="train"):
    """The bundled stratified subset of real MNIST (see ``bnutils/resources/README.md``)."""
    with np.load(SUBSET_PATH) as z:
        return z[f"{split}_images"].copy(), z[f"{split}_labels"].copy()


def _subset_size(split):
    with np.load(SUBSET_PATH) as z:
        return len(z[f"{split}_labels"])


def _spec(dataset):
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}") from None


class _Offline(DataError):
    """No mirror could be reached (as opposed to a mirror serving bad bytes)."""


def _offline(err):
    return isinstance(err, _Offline)


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
    except (OSError, EOFError) as err:  # bad gzip header, truncated archive
        raise DataError(
            f"{path} is corrupt or truncated ({err}). Delete it and load again to re-download."
        ) from err


def _verify(path, expected):
    digest = hashlib.sha256(_uncompressed_bytes(path)).hexdigest()
    if digest != expected:
        raise DataError(
            f"checksum mismatch for {path}: SHA-256 of its uncompressed bytes is {digest}, "
            f"expected {expected}. The file is corrupt or not the original; delete it and "
            f"load again to re-download."
        )


def _download(spec, root, name):
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, delete=True)
        probe.close()
    except OSError as err:
        raise DataError(
            f"cannot write to the data folder {root} ({err}). Pass another root=, or set "
            f"{spec.env} to a writable folder."
        ) from err
    errors = []
    reached_any = False
    for base in spec.mirrors:
        url = f"{base}{name}.gz"
        try:
            tmp = _fetch(url, root)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            errors.append(f"{url}: {err}")
            continue
        reached_any = True
        try:
            _verify(tmp, spec.sha256[name])
        except DataError as err:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: served a bad file ({err})")
            continue
        final = root / (f"{name}.gz" if _is_gzip(tmp) else name)
        os.replace(tmp, final)
        return final
    kind = DataError if reached_any else _Offline
    raise kind(f"could not download {name} of {spec.name}:\n  " + "\n  ".join(errors))


def _fetch(url, folder, timeout=30):
    """Download ``url`` into a temporary file in ``folder``, with a progress bar."""
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]
            ) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return Path(tmp)


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
