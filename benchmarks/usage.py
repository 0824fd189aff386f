"""This process's resource usage: CPU seconds, and resident memory from Linux's /proc (the peak, VmHWM,
since the last reset)."""

from __future__ import annotations

import re
import resource
from pathlib import Path


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak() -> int:
    """Start the peak (VmHWM) afresh (Linux 4.0+); returns the resident memory now, in kB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


def read_peak() -> int:
    """The peak resident memory since the last reset (or the start), in kB."""
    return _status_kb("VmHWM")


def cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its children that have ended (a finished pool)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
