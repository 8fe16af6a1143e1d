"""Fixtures shared by several test files."""

import os
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)`` creates ``folder`` read-only (for root too: its writes there fail)."""
    def make(folder):
        folder.mkdir()
        folder.chmod(0o555)
        if os.geteuid() == 0:  # root writes anywhere: make the write fail as it would for a user
            real = tempfile.TemporaryFile

            def refuse(*args, dir=None, **kwargs):
                if Path(dir) == folder:
                    raise PermissionError(13, "Permission denied", str(folder))
                return real(*args, dir=dir, **kwargs)

            monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
        return folder
    return make
