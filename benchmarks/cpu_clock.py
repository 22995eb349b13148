"""CPU time of a benchmark's child process: the honest clock where runs share cores."""

from __future__ import annotations

import os
import subprocess


def wait_cpu(process: subprocess.Popen) -> float:
    """Wait for ``process``; its CPU seconds (user + system, its waited-for children included).
    Raises where it failed (its log says why)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args} failed ({process.returncode}); see its log")
    return usage.ru_utime + usage.ru_stime
