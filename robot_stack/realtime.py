"""Real-time set-up of a control thread on Linux, as ros2_control's realtime_tools does it.

- `set_fifo`: SCHED_FIFO for a thread, so that normal tasks cannot delay it.
- `lock_memory`: every page mapped so far locked in RAM (mlockall MCL_CURRENT): the libraries'
  code, the model and the buffers warm-up allocated. Traced with ftrace in the policy node's
  first seconds at 1 kHz: the control thread sat 1.4 ms in uninterruptible sleep on a page
  fault that read code from disk. Memory mapped later is not locked (MCL_FUTURE would also
  lock the large address-space reservations GPU runtimes make).

Both need privileges (CAP_SYS_NICE, CAP_IPC_LOCK: root, or rtprio and memlock limits in
/etc/security/limits.conf) and raise OSError without them; callers warn and go on.
"""
from __future__ import annotations

import ctypes
import os

MCL_CURRENT = 1


def set_fifo(priority: int) -> None:
    """SCHED_FIFO at `priority` for the calling thread."""
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))


def lock_memory() -> None:
    """Locks every page this process has mapped in RAM (reading in those not yet there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def memory_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in kB: VmLck (the size of the
    locked mappings, address reservations included), VmRSS (resident)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/self/status")
