"""After CI's build of the full book from the store (``make test``): it read every entry
of the store and nothing else, and replayed every entry (its first steps; one whole
run per chapter, drawn by the commit) to the tolerance of ``bnutils.store``.

Run after the build: ``BNBOOK_STORE_LOGS=_build/store/logs pytest
tests/test_store_build.py`` with the build's ``BNBOOK_REPLAY`` (``make test`` does).
"""

import os
from pathlib import Path

import pytest

from bnutils import store

LOGS = os.environ.get("BNBOOK_STORE_LOGS")
pytestmark = pytest.mark.skipif(not LOGS, reason="set BNBOOK_STORE_LOGS to a build's logs")
FOLDER = store.root()


@pytest.fixture(scope="module")
def build():
    manifest = store.read_manifest(FOLDER)["notebooks"]
    reads = store.read_log(Path(LOGS) / "reads.jsonl")
    replays = store.read_log(Path(LOGS) / "replays.jsonl")
    return manifest, reads, replays


def test_the_build_read_every_entry_and_only_those(build):
    manifest, reads, _ = build
    for notebook, keys in manifest.items():
        read = {r["key"] for r in reads if r["notebook"] == notebook}
        assert read == set(keys), (
            f"{notebook}: the manifest lists {sorted(set(keys) - read)} which the build did "
            f"not read; the build read {sorted(read - set(keys))} which it does not list. "
            f"Run make results CHAPTER={notebook[:2]} (it rewrites the manifest).")
    assert {r["notebook"] for r in reads} <= set(manifest)


def test_every_entry_was_replayed_and_matched(build):
    manifest, _, replays = build
    failed = [r for r in replays if not r["ok"]]
    assert not failed, f"replays that do not match: {failed}"
    replayed = {r["key"] for r in replays}
    missing = {k for keys in manifest.values() for k in keys} - replayed
    assert not missing, f"entries the build did not replay: {sorted(missing)}"
    checked = {r["key"] for r in replays if r["whole"] or r["compared"]}
    skipped = {r["key"] for r in replays if r.get("skipped")} - checked
    assert replayed == checked | skipped
    # a run no prefix can check is checked whole when the commits' draw picks it: it
    # must be among the runs the draw picks from
    entries = store.read_entries(FOLDER)
    too_long = [k for k in skipped
                if (entries[k]["provenance"].get("seconds") or 0) > store.WHOLE_MAX_SECONDS]
    assert not too_long, f"runs that CI never checks: {too_long}"


def test_one_whole_run_per_chapter_was_replayed(build):
    manifest, _, replays = build
    seed = os.environ.get(store.REPLAY_ENV)
    assert seed, f"set {store.REPLAY_ENV} as the build had it"
    whole = {r["key"] for r in replays if r["whole"] and r["ok"]}
    for notebook in manifest:
        chosen = store.chosen_whole(notebook, seed, FOLDER)
        assert chosen in whole, f"{notebook}: {chosen} was not replayed whole"
