"""This process's resident memory, from Linux's /proc: the peak (VmHWM) since the last reset."""

from __future__ import annotations

import re
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
