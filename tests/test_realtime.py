"""The control loop's real-time set-up (robot_stack/realtime.py) on this machine's kernel, in
a process of its own: mlockall and scheduling policies would outlive a test here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SET_UP = """
import errno, json, os
import numpy as np
from robot_stack import realtime

before = realtime.memory_kb("VmLck")
buffer = np.ones(64 << 17)  # 64 MiB mapped before the lock
try:
    realtime.set_fifo(10)
    realtime.lock_memory()
except OSError as e:
    if e.errno not in (errno.EPERM, errno.ENOMEM):  # ENOMEM: over RLIMIT_MEMLOCK
        raise
    print(json.dumps({"permitted": False, "error": str(e)}))
else:
    print(json.dumps({"permitted": True, "before_kb": before, "after_kb": realtime.memory_kb("VmLck"),
                      "policy": os.sched_getscheduler(0), "fifo": os.SCHED_FIFO,
                      "priority": os.sched_getparam(0).sched_priority}))
"""


def test_fifo_and_locked_memory():
    out = subprocess.run([sys.executable, "-c", SET_UP], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    if not report["permitted"]:
        pytest.skip(f"no CAP_SYS_NICE or CAP_IPC_LOCK here: {report['error']}")
    assert (report["policy"], report["priority"]) == (report["fifo"], 10)
    assert report["before_kb"] == 0
    assert report["after_kb"] >= 64 << 10  # the buffer and everything else mapped
