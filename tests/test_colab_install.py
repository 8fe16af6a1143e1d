"""The Colab path: a notebook's setup cell installs bnutils when it is missing.

A fresh virtual environment sees the project's dependencies (torch, numpy, jupyter)
through a ``.pth`` file but not ``bnutils``; ``BNUTILS_INSTALL_SOURCE`` points the setup
cell at this checkout instead of the repository URL. The setup notebook must then
install bnutils into the fresh environment and run to the end.
"""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python(env_dir):
    return env_dir / "bin" / "python"


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory):
    env_dir = tmp_path_factory.mktemp("colab") / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = subprocess.run([_python(env_dir), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the project's dependencies, without running the .pth hooks that make bnutils importable
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def test_setup_cell_installs_bnutils_and_notebook_runs(bare_env, tmp_path):
    py = _python(bare_env)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    missing = subprocess.run([py, "-c", "import bnutils"], capture_output=True, env=env,
                             cwd=tmp_path)
    assert missing.returncode != 0, "the fresh environment must start without bnutils"

    # offline: build with the setuptools at hand, and find the dependencies installed
    env.update(BNUTILS_INSTALL_SOURCE=str(ROOT), BNBOOK_QUICK="1",
               PIP_NO_BUILD_ISOLATION="false", PIP_NO_INDEX="1")
    execute = (
        "import sys, nbformat, nbclient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "nbclient.NotebookClient(nb, kernel_name='python3', timeout=600).execute()\n"
    )
    run = subprocess.run([py, "-c", execute, str(ROOT / "notebooks" / "00_setup.ipynb")],
                         env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    where = subprocess.run([py, "-c", "import bnutils; print(bnutils.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path,
                           env=env).stdout
    assert str(bare_env) in where, f"bnutils was not installed into the fresh environment: {where}"
    assert sys.prefix not in where
