"""The mutation report's check that a module's earlier run still matches the tree
(``tests/mutation/mutate.py --report``): a report built from outdated runs would credit
today's code with yesterday's score."""

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "mutate", Path(__file__).parent / "mutation" / "mutate.py")
mutate = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(mutate)


def _tree(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def tree(tmp_path):
    files = {"bnutils/__init__.py": "", "bnutils/bn.py": "X = 1\n",
             "bnutils/store.py": "Y = 1\n", "bnutils/plot/figs.py": "Z = 1\n",
             "tests/test_bn_forward.py": "from bnutils.bn import X\n\ndef test_x():\n    assert X\n",
             "tests/test_other.py": "def test_y():\n    pass\n"}
    root = _tree(tmp_path / "root", files)
    folder = _tree(tmp_path / "run", {k: v for k, v in files.items() if k != "tests/test_other.py"})
    return root, folder


def test_an_unchanged_tree_has_nothing_changed_and_other_tests_do_not_count(tree):
    root, folder = tree
    assert mutate.changed_since(folder, root) == []


def test_changed_added_and_removed_files_of_bnutils_are_all_found(tree):
    root, folder = tree
    (root / "bnutils" / "store.py").write_text("Y = 2\n")
    (root / "bnutils" / "plot" / "new.py").write_text("")
    (root / "bnutils" / "plot" / "figs.py").unlink()
    (root / "tests" / "test_bn_forward.py").write_text("# a new test\n")
    assert mutate.changed_since(folder, root) == [
        "bnutils/plot/figs.py", "bnutils/plot/new.py", "bnutils/store.py",
        "tests/test_bn_forward.py"]


def test_the_modules_a_test_file_loads_are_listed(tree):
    _, folder = tree
    assert mutate.loaded_modules(folder, ["test_bn_forward.py"]) == [
        "bnutils/__init__.py", "bnutils/bn.py"]


def test_a_change_outdates_a_run_only_where_its_tests_can_see_it():
    loaded = ["bnutils/__init__.py", "bnutils/bn.py", "bnutils/config.py"]
    assert mutate.stale("bn", ["bnutils/store.py"], loaded) == []
    assert mutate.stale("bn", ["bnutils/config.py", "bnutils/store.py"], loaded) == [
        "bnutils/config.py"]
    assert mutate.stale("bn", ["tests/test_bn_backward.py"], []) == ["tests/test_bn_backward.py"]
    assert mutate.stale("bn", ["tests/conftest.py"], []) == ["tests/conftest.py"]
    assert mutate.stale("bn", ["bnutils/bn.py"], []) == ["bnutils/bn.py"]
    # the cache's tests reach the store lazily: any change to bnutils outdates them
    assert mutate.stale("cache", ["bnutils/store.py"], []) == ["bnutils/store.py"]
