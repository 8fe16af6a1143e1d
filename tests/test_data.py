"""bnutils.data: real MNIST files, the download path over a local HTTP server, bad input."""

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socketserver
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bnutils import data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "mnist"


@pytest.fixture(scope="module")
def mnist_root():
    """The folder with the real MNIST files (CI: BNUTILS_DATA=../shared/mnist)."""
    root = data.default_root("mnist")
    if not (root / "t10k-labels-idx1-ubyte.gz").exists() and SHARED.exists():
        root = SHARED
    if not any(root.glob("t10k-labels-idx1-ubyte*")):
        pytest.skip(f"no local MNIST files in {root}; set BNUTILS_DATA")
    return root


def _damaged(raw):
    """``raw`` as a gzip file whose header is fine but whose compressed body is not."""
    blob = gzip.compress(raw, mtime=0)  # a 10-byte header: the body starts at byte 10
    return blob[:10] + b"\xff" * 20 + blob[30:]


def _serve(folder, kind="good"):
    """A local mirror of ``folder`` on 127.0.0.1 that serves files of the given kind.

    good: the files; missing: 404; corrupt: another valid gzip file; damaged: a gzip
    file with a broken body; cut, cut-chunked: close the connection in the middle of the
    body (announced by its length, or in chunks); slow:
    a byte every 50 ms; not-http: answers in no known protocol.
    """
    if kind == "not-http":
        class Raw(socketserver.StreamRequestHandler):
            def handle(self):
                self.rfile.readline()
                self.wfile.write(b"HELLO THERE\r\n\r\n")

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Raw)
        server.daemon_threads = True
    else:
        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send_head(self):
                if kind in ("good", "missing"):
                    return super().send_head()
                body = {"corrupt": gzip.compress(b"\x00" * 1000),
                        "damaged": _damaged(b"\x00" * 1000)}.get(kind, b"\x1f" * 1000)
                self.send_response(200)
                if kind == "cut-chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"%x\r\n" % len(body) + body[:100])
                    return None
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "cut":
                    self.wfile.write(body[:100])
                elif kind == "slow":
                    with contextlib.suppress(OSError):  # until the client hangs up
                        for byte in body:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(0.05)
                else:
                    self.wfile.write(body)
                return None

        root = folder if kind != "missing" else tempfile.mkdtemp()
        handler = functools.partial(Handler, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture
def mirrors(mnist_root, monkeypatch):
    """Point MNIST's mirror list at local servers; yields ``use(*kinds)`` (see ``_serve``)."""
    servers = {}

    def use(*kinds):
        urls = []
        for kind in kinds:
            if kind == "unreachable":
                urls.append("http://127.0.0.1:9/")
                continue
            if kind not in servers:
                servers[kind] = _serve(mnist_root, kind)
            urls.append(servers[kind][1])
        spec = dataclasses.replace(data.DATASETS["mnist"], mirrors=tuple(urls))
        monkeypatch.setitem(data.DATASETS, "mnist", spec)

    yield use
    for server, _ in servers.values():
        server.shutdown()
        server.socket.close()


@pytest.fixture(autouse=True)
def fresh_record(monkeypatch):
    """What a test loads is not remembered by the process after it (see bnutils.cache)."""
    monkeypatch.setattr(data, "_LOADED", {})


def test_real_files_match_published_sanity_figures(mnist_root):
    x, y = data.load_mnist("train", root=mnist_root, download=False)
    xt, yt = data.load_mnist("test", root=mnist_root, download=False)
    assert x.shape == (60_000, 28, 28) and x.dtype == np.uint8
    assert xt.shape == (10_000, 28, 28) and yt.shape == (10_000,)
    assert y[:5].tolist() == [5, 0, 4, 1, 9]
    assert yt[:5].tolist() == [7, 2, 1, 0, 4]
    scaled = x / 255.0
    spec = data.DATASETS["mnist"]
    assert scaled.mean() == pytest.approx(spec.mean, abs=5e-5)
    assert scaled.std() == pytest.approx(spec.std, abs=5e-5)


def test_uncompressed_files_are_accepted(mnist_root, tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((mnist_root / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    shutil.copy(mnist_root / "t10k-images-idx3-ubyte.gz", tmp_path)
    _, y = data.load_mnist("test", root=tmp_path, download=False)
    assert y[:5].tolist() == [7, 2, 1, 0, 4]


def test_download_from_local_mirror_writes_verified_files(mirrors, tmp_path):
    mirrors("good")
    x, y = data.load_mnist("test", root=tmp_path / "cache")
    assert x.shape == (10_000, 28, 28) and y[:5].tolist() == [7, 2, 1, 0, 4]
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert files == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # no .part left


def test_download_skips_corrupt_and_unreachable_mirrors(mirrors, tmp_path):
    mirrors("unreachable", "corrupt", "good")
    _, y = data.load_mnist("test", root=tmp_path)
    assert len(y) == 10_000


def test_only_corrupt_mirrors_is_an_error_not_a_fallback(mirrors, tmp_path):
    mirrors("corrupt")
    with pytest.raises(data.DataError, match="served a bad file"):
        data.load_mnist("test", root=tmp_path)
    assert not any(tmp_path.iterdir())  # the bad download was not kept


def test_offline_falls_back_to_bundled_subset_with_warning(mirrors, tmp_path):
    mirrors("unreachable")
    with pytest.warns(UserWarning, match="BNUTILS_DATA"):
        x, y = data.load_mnist("train", root=tmp_path)
    assert x.shape == (5000, 28, 28)
    assert np.bincount(y).tolist() == [500] * 10  # stratified


def test_offline_fashion_mnist_falls_back_to_its_subset(monkeypatch, tmp_path):
    spec = dataclasses.replace(data.DATASETS["fashion-mnist"], mirrors=("http://127.0.0.1:9/",))
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", spec)
    with pytest.warns(UserWarning, match="fashion-mnist subset bundled") as caught:
        x, y = data.load_fashion_mnist("test", root=tmp_path)
    assert "BNUTILS_FASHION_DATA" in str(caught[0].message)
    xs, ys = data.load_subset("test", "fashion-mnist")
    np.testing.assert_array_equal(x, xs)
    np.testing.assert_array_equal(y, ys)
    assert data.loaded()[-1]["data"]["source"] == "subset"
    assert not np.array_equal(xs, data.load_subset("test")[0])  # not MNIST's


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_bundled_subset_is_real_data(dataset, mnist_root):
    root = mnist_root if dataset == "mnist" else data.default_root(dataset)
    if not (root / "t10k-labels-idx1-ubyte.gz").exists() and dataset != "mnist":
        pytest.skip(f"no {dataset} files in {root}")
    for split, n in (("train", 5000), ("test", 1000)):
        xs, ys = data.load_mnist(split, subset=True, dataset=dataset)
        x, y = data.load_mnist(split, root=root, download=False, dataset=dataset)
        with np.load(data.subset_path(dataset)) as z:
            index = z[f"{split}_index"]
        assert len(xs) == n
        np.testing.assert_array_equal(xs, x[index])
        np.testing.assert_array_equal(ys, y[index])


def test_missing_file_without_download_says_where(tmp_path):
    with pytest.raises(data.DataError, match=r"not found in .*BNUTILS_DATA"):
        data.load_mnist("test", root=tmp_path, download=False)


def test_truncated_file_is_reported(mnist_root, tmp_path):
    blob = (mnist_root / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    shutil.copy(mnist_root / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(data.DataError, match="corrupt or truncated.*re-download"):
        data.load_mnist("test", root=tmp_path, download=False)


def test_checksum_mismatch_is_reported(mnist_root, tmp_path):
    shutil.copy(mnist_root / "t10k-images-idx3-ubyte.gz", tmp_path)
    labels = gzip.decompress((mnist_root / "t10k-labels-idx1-ubyte.gz").read_bytes())
    tampered = labels[:-1] + bytes([(labels[-1] + 1) % 10])  # one label changed
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(tampered))
    with pytest.raises(data.DataError, match="checksum mismatch.*t10k-labels"):
        data.load_mnist("test", root=tmp_path, download=False)


def test_wrong_idx_header_is_reported(tmp_path):
    path = tmp_path / "x.gz"
    labels_magic, one = b"\x00\x00\x08\x01", b"\x00\x00\x00\x01"
    path.write_bytes(gzip.compress(labels_magic + one * 3 + b"\x07"))  # a labels file
    with pytest.raises(data.DataError, match="wrong IDX header"):
        data._read_idx(path, ndim=3)
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x05" + b"\x01\x02"))
    with pytest.raises(data.DataError, match="header says shape"):
        data._read_idx(path, ndim=1)


def test_unwritable_cache_folder_is_reported(mirrors, tmp_path):
    mirrors("good")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(data.DataError, match="cannot write to the data folder"):
        data.load_mnist("test", root=blocker / "mnist")


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("validation")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_mnist("train", dataset="cifar10")


def test_published_checksums_are_the_ones_in_the_shared_readme():
    readme = data.default_root("mnist") / "README.md"
    if not readme.exists():
        readme = SHARED / "README.md"
    if not readme.exists():
        pytest.skip("no shared/mnist README")
    text = readme.read_text()
    for name, digest in data.DATASETS["mnist"].sha256.items():
        assert f"{digest}  {name}" in text


def test_fashion_mnist_loads_when_present():
    root = data.default_root("fashion-mnist")
    if not any(root.glob("t10k-labels-idx1-ubyte*")):
        pytest.skip(f"no local Fashion-MNIST files in {root}; set BNUTILS_FASHION_DATA")
    x, y = data.load_fashion_mnist("train", root=root, download=False)
    assert x.shape == (60_000, 28, 28) and np.bincount(y).tolist() == [6000] * 10
    spec = data.DATASETS["fashion-mnist"]
    assert (x / 255.0).mean() == pytest.approx(spec.mean, abs=5e-5)
    assert (x / 255.0).std() == pytest.approx(spec.std, abs=5e-5)


def test_to_tensors_standardises_and_shapes():
    x, y = data.load_mnist("train", subset=True)
    xf, yf = data.to_tensors(x, y)
    assert xf.shape == (5000, 784) and xf.dtype == torch.float32 and yf.dtype == torch.int64
    assert abs(xf.mean().item()) < 0.05 and abs(xf.std().item() - 1) < 0.05
    xi, _ = data.to_tensors(x, y, flatten=False)
    assert xi.shape == (5000, 1, 28, 28)


def test_batches_are_reproducible_and_cover_an_epoch():
    x = torch.arange(100).float().unsqueeze(1)
    y = torch.arange(100)
    a, b = data.batches(x, y, 10, seed=3), data.batches(x, y, 10, seed=3)
    first = [next(a)[1] for _ in range(10)]
    assert torch.equal(torch.cat(first).sort().values, y)  # each example once per epoch
    assert all(torch.equal(f, next(b)[1]) for f in first)
    assert not torch.equal(next(a)[1], first[0])  # a new permutation next epoch
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(x, y, 0))


def test_train_val_split_is_disjoint():
    x = torch.arange(50).float().unsqueeze(1)
    (xtr, ytr), (xv, yv) = data.train_val_split(x, torch.arange(50), n_val=10, seed=1)
    assert len(xv) == 10 and len(xtr) == 40
    assert set(ytr.tolist()).isdisjoint(yv.tolist())


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_subset_file_layout(dataset):
    with np.load(data.subset_path(dataset)) as z:
        assert sorted(z.files) == sorted(
            f"{s}_{k}" for s in ("train", "test") for k in ("images", "labels", "index")
        )
        assert z["train_images"].dtype == np.uint8 and z["train_index"].max() < 60_000
        assert (np.bincount(z["train_labels"]) == 500).all()
        assert (np.bincount(z["test_labels"]) == 100).all()


# --- damaged files, broken mirrors, deadlines ---------------------------------------


def _files(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_damaged_gzip_body_is_reported(mnist_root, tmp_path):
    raw = gzip.decompress((mnist_root / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(_damaged(raw))
    shutil.copy(mnist_root / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte.gz is corrupt or truncated "
                                             r"\(Error -3.*\). Delete it and load again"):
        data.load_mnist("test", root=tmp_path, download=False)


def test_damaged_gzip_from_a_mirror_is_not_kept(mirrors, tmp_path):
    mirrors("damaged", "good")
    _, y = data.load_mnist("test", root=tmp_path / "a")
    assert len(y) == 10_000
    assert _files(tmp_path / "a") == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    mirrors("damaged")
    with pytest.raises(data.DataError, match=r"served a bad file \(corrupt or truncated: Error -3"):
        data.load_mnist("test", root=tmp_path / "b")
    assert _files(tmp_path / "b") == []


@pytest.mark.parametrize("kind", ["not-http", "cut", "cut-chunked", "slow"])
def test_a_broken_mirror_is_skipped(mirrors, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(data, "DEADLINE", 1.0)
    mirrors(kind, "good")
    start = time.monotonic()
    _, y = data.load_mnist("test", root=tmp_path)
    assert len(y) == 10_000 and time.monotonic() - start < 20
    assert _files(tmp_path) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_only_broken_mirrors_mean_offline(mirrors, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEADLINE", 1.0)
    mirrors("not-http", "cut", "cut-chunked", "slow", "unreachable")
    start = time.monotonic()
    with pytest.warns(UserWarning) as caught:
        _, y = data.load_mnist("test", root=tmp_path)
    assert len(y) == 1000 and time.monotonic() - start < 20  # the bundled subset
    message = str(caught[0].message)
    for reason in ("BadStatusLine", "IncompleteRead", "longer than 1.0 s", "Connection refused",
                   "download t10k-images-idx3-ubyte.gz yourself and put it in", "BNUTILS_DATA"):
        assert reason in message
    assert _files(tmp_path) == []  # no .part left


def test_fashion_mnist_subset_is_asked_for_by_name():
    x, y = data.load_mnist("train", subset=True, dataset="fashion-mnist")
    assert x.shape == (5000, 28, 28) and len(y) == 5000
    path = data.subset_path("fashion-mnist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.fingerprint("test", dataset="fashion-mnist", subset=True) == {
        "dataset": "fashion-mnist", "split": "test", "source": "subset",
        "sha256": {"fashion-mnist-subset.npz": digest}}
    xt, _ = data.mnist_tensors("test", dataset="fashion-mnist", subset=True)
    assert xt.shape == (1000, 784)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.subset_path("cifar")


def test_empty_read_only_folder_offline_falls_back(mirrors, tmp_path, read_only):
    folder = read_only(tmp_path / "ro")
    mirrors("unreachable")
    with pytest.warns(UserWarning, match="which is read-only, and no mirror can be reached"):
        x, _ = data.load_mnist("test", root=folder)
    assert len(x) == 1000 and _files(folder) == []
    for kind in ("good", "missing"):  # a mirror answers: that is no reason to fall back
        mirrors(kind)
        with pytest.raises(data.DataError, match="cannot write to the data folder"):
            data.load_mnist("test", root=folder)


def test_loads_are_remembered_with_their_fingerprint(mirrors, tmp_path):
    mirrors("good")
    data.load_mnist("test", root=tmp_path)
    data.load_mnist("test", root=tmp_path)
    data.load_mnist("train", subset=True)
    full, subset = data.loaded()
    assert full["args"] == {"split": "test", "root": str(tmp_path), "download": True,
                            "subset": False, "dataset": "mnist"}
    spec = data.DATASETS["mnist"]
    assert full["data"] == {"dataset": "mnist", "split": "test", "source": "full", "sha256": {
        n: spec.sha256[n] for n in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}}
    assert data.fingerprint(**full["args"]) == full["data"]
    digest = hashlib.sha256(data.subset_path().read_bytes()).hexdigest()
    assert subset["data"] == {"dataset": "mnist", "split": "train", "source": "subset",
                              "sha256": {"mnist-subset.npz": digest}}
    data.remember([{**full, "data": subset["data"]}])  # a later entry for the same call wins
    assert len(data.loaded()) == 2 and data.loaded()[0]["data"] == subset["data"]
    data.loaded()[0]["data"] = None  # a copy: the record is not changed through it
    assert data.loaded()[0]["data"] == subset["data"]


def test_a_changed_file_is_verified_again(mnist_root, tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_root / name, tmp_path)
    data.load_mnist("test", root=tmp_path, download=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    stat = labels.stat()
    labels.write_bytes(gzip.compress(bytes(raw), mtime=0))
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.load_mnist("test", root=tmp_path, download=False)


def test_bad_split_everywhere():
    for call in (data.load_subset, data.fingerprint, data.load_mnist):
        with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
            call("validation")


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("BNUTILS_FASHION_DATA", str(tmp_path / "f"))
    assert data.default_root("fashion-mnist") == tmp_path / "f"
    monkeypatch.delenv("BNUTILS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_root() == tmp_path / "xdg" / "bnutils" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_root("fashion-mnist") != tmp_path / "home"  # its variable is set
    monkeypatch.delenv("BNUTILS_FASHION_DATA")
    assert data.default_root("fashion-mnist") == tmp_path / "home/.cache/bnutils/fashion-mnist"


def test_interrupted_download_leaves_nothing(mirrors, tmp_path, monkeypatch):
    mirrors("good")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    for where in ("waiting", "verifying"):
        with monkeypatch.context() as m:
            if where == "waiting":
                m.setattr(threading.Thread, "join", interrupt)
            else:
                m.setattr(data, "_sha256", interrupt)
            with pytest.raises(KeyboardInterrupt):
                data.load_mnist("test", root=tmp_path)
        time.sleep(0.5)  # the abandoned download thread notices and stops
        assert _files(tmp_path) == []


def test_roots_are_remembered_expanded(mirrors, tmp_path, monkeypatch):
    mirrors("good")
    monkeypatch.setenv("HOME", str(tmp_path))
    data.load_mnist("test", root="~/mnist")
    assert data.loaded()[0]["args"]["root"] == str(tmp_path / "mnist")


def test_tensors_on_a_device_and_batches_keeping_the_rest():
    x, y = data.mnist_tensors("test", subset=True, flatten=False, device="cpu")
    assert x.shape == (1000, 1, 28, 28) and x.device.type == "cpu" and y.dtype == torch.int64
    xs = torch.arange(10).float().unsqueeze(1)
    it = data.batches(xs, torch.arange(10), 4, seed=0, drop_last=False)
    sizes = [len(next(it)[1]) for _ in range(6)]
    assert sizes == [4, 4, 2, 4, 4, 2]
    it = data.batches(xs, torch.arange(10), 4, seed=0)
    assert [len(next(it)[1]) for _ in range(4)] == [4, 4, 4, 4]
    for bad in (0, 11):
        with pytest.raises(ValueError, match="batch_size must be between 1 and 10"):
            next(data.batches(xs, torch.arange(10), bad))
    next(data.batches(xs, torch.arange(10), 10))  # the whole set is one batch
    for n_val in (0, 10):
        with pytest.raises(ValueError, match="n_val must be between 1 and 9"):
            data.train_val_split(xs, torch.arange(10), n_val)
    (_, ytr), (_, yv) = data.train_val_split(xs, torch.arange(10), 9)
    assert len(ytr) == 1 and len(yv) == 9
    (_, a), _ = data.train_val_split(xs, torch.arange(10), 3, seed=1)
    (_, b), _ = data.train_val_split(xs, torch.arange(10), 3, seed=2)
    assert not torch.equal(a, b)  # the seed decides the split


def test_shown_path_hides_the_machines_folders(monkeypatch, tmp_path):
    """Chapter 0 prints the data folder: never as an absolute path of the machine."""
    repo = Path(data.__file__).resolve().parents[1]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.shown_path(tmp_path / ".cache" / "bnutils" / "mnist") == "~/.cache/bnutils/mnist"
    assert data.shown_path("~/mnist") == "~/mnist"
    assert data.shown_path(repo / "_cache" / "mnist") == "_cache/mnist"
    assert data.shown_path(repo.parent / "shared" / "mnist") == "../shared/mnist"
    if len(repo.parents) > 2:  # the repository two folders below a top folder
        assert data.shown_path(repo.parents[1] / "shared") == "../../shared"
    assert data.shown_path("/usr/share/datasets/fashion-mnist") == \
        "/usr/share/datasets/fashion-mnist"  # a system folder, the same on every machine
