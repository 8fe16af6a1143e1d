"""The committed results store, results/: complete provenance, the cache's format (no
pickle), full data, verified re-keys, a manifest that lists every entry, at most 50 MB.

What a full build reads and replays is checked after CI's build of the book
(tests/test_store_build.py); these checks need no build."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from bnutils import cache, store

ROOT = Path(__file__).resolve().parents[1]
FOLDER = Path(os.environ.get(store.STORE_ENV) or ROOT / "results")


def _entries():
    return store.read_entries(FOLDER)


def test_the_store_is_in_the_checkout():
    assert (FOLDER / store.MANIFEST).exists()
    assert store.root() == FOLDER


def test_the_store_holds_entries_and_its_manifest_only():
    allowed = {store.MANIFEST, "README.md"}
    for path in FOLDER.iterdir():
        assert path.name in allowed or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{16}"
                                                    r"\.(json|npz)", path.name), path.name
    keys = {p.stem for p in FOLDER.glob("*.npz")}
    assert keys == set(_entries()), "every entry is a .json and a .npz"


def test_the_store_is_at_most_50_mb():
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    assert size <= store.MAX_BYTES, f"the store holds {size / 1e6:.1f} MB"


@pytest.mark.parametrize("key", sorted(_entries()))
def test_an_entry_is_readable_without_pickle_and_has_its_provenance(key):
    used, result = cache._read(FOLDER / f"{key}.npz", FOLDER / f"{key}.json")
    with np.load(FOLDER / f"{key}.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    doc = _entries()[key]
    assert key == f"{doc['name']}-{key.rsplit('-', 1)[1]}"
    prov = doc["provenance"]
    missing = [k for k in store.PROVENANCE if prov.get(k) is None]
    assert not missing, f"{key}: provenance lacks {missing}"
    assert prov["numerics"]["device"] == prov["device"]
    assert used and all(d["data"]["source"] == "full" for d in used), \
        f"{key}: computed on the bundled subset"
    events = prov.get("rekeyed", [])
    for event in events:
        assert event["from"] and event["commit"] and event["replay"]["compared"] > 0
    # The stored numbers are the original computation's: a whole replay under the
    # code of the latest key, compared with them, vouches for every key before it.
    if events:
        assert events[-1]["replay"]["whole"] or events[-1]["whole_check"], \
            f"{key}: re-keyed after a prefix replay, never checked whole"


def test_the_manifest_lists_every_entry_and_only_entries():
    manifest = store.read_manifest(FOLDER)["notebooks"]
    listed = {k for keys in manifest.values() for k in keys}
    assert listed == set(_entries()), (
        f"unread entries: {sorted(set(_entries()) - listed)}; "
        f"listed but missing: {sorted(listed - set(_entries()))}")
    for notebook in manifest:
        assert (ROOT / "notebooks" / f"{notebook}.ipynb").exists(), notebook


def test_make_and_ci_pin_the_numerics_that_replays_need():
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"^NUMERICS\s*:=\s*(.*)$", makefile, re.M).group(1).split()
    assert dict(p.split("=", 1) for p in pinned) == store.NUMERICS
    assert json.loads(json.dumps(store.TOLERANCE)) == store.TOLERANCE


def _recipe(makefile, target):
    return re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)


def test_the_book_and_the_tests_build_from_the_store_with_training_forbidden():
    makefile = (ROOT / "Makefile").read_text()
    builds = [line for target in ("book", "test") for line in
              _recipe(makefile, target).splitlines() if "$(JB) build" in line]
    assert len(builds) == 2 and all("$(FORBID)" in b and "BNBOOK_QUICK=0" in b for b in builds)
    assert "$(REPLAY)" in builds[1], "make test replays what its build reads"
    assert re.search(r"^FORBID\s*:=\s*BNBOOK_TRAIN=forbid$", makefile, re.M)
    assert "tests/test_store_build.py" in _recipe(makefile, "test")
