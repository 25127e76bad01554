"""Real file-system faults for tests: a small tmpfs that fills up or is remounted read-only."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(directory: Path, size: str):
    """A tmpfs of `size` (mount's syntax: 2m, 160k) mounted at a new `directory`; the test is
    skipped where mounting is not permitted. Unmounted lazily, so a file a failed test left
    open cannot keep it mounted."""
    directory.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mount.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)
