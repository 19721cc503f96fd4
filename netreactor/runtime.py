"""Facts about the interpreter and the machine that several layers need."""

from __future__ import annotations

import os
import sys
from typing import List

__all__ = ["gil_enabled", "usable_cpus"]


def gil_enabled() -> bool:
    """False on a free-threaded CPython build running without the GIL."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def usable_cpus() -> List[int]:
    """The CPUs this process may run on (``sched_getaffinity`` where it exists)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))
