"""Which implementation of the per-frame functions runs: the C extension or pure Python.

The codecs and protocol parsers (:mod:`netreactor.codec`,
:mod:`netreactor.protocols.resp`, :mod:`netreactor.protocols.http1`) have an
optional C twin for their hot loops in ``netreactor._speedups``: built by
``pip install .`` where a C compiler exists, against the stable ABI (one build
for every CPython from 3.10). Both are one behaviour -- the same frames,
errors and messages, proven by differential tests -- so the choice only
changes speed. Where the extension is missing (no compiler, a fresh clone run
in place) the pure-Python code runs; ``NETREACTOR_NO_EXTENSIONS=1`` (any value
but empty or ``0``) forces it, as ``AIOHTTP_NO_EXTENSIONS`` does for aiohttp.

The choice is made once, at import: set the variable before importing
netreactor.

    >>> from netreactor import speedups
    >>> speedups.active(), speedups.describe()
    (True, 'C speedups active (netreactor._speedups)')
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional

__all__ = ["ENV_VAR", "API_VERSION", "active", "describe", "module"]

#: The environment variable that forces the pure-Python path.
ENV_VAR = "NETREACTOR_NO_EXTENSIONS"
#: The interface version this Python code expects of the extension; a build
#: from other sources (a stale in-place build) is not used.
API_VERSION = 1


def _load() -> tuple[Optional[ModuleType], str]:
    if os.environ.get(ENV_VAR, "") not in ("", "0"):
        return None, f"pure Python ({ENV_VAR}={os.environ[ENV_VAR]})"
    name = f"{__package__}._speedups"
    try:
        _speedups = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None, "pure Python (extension not built)"
        return None, f"pure Python (extension failed to load: {exc})"
    except ImportError as exc:  # built for another platform or interpreter, or broken
        return None, f"pure Python (extension failed to load: {exc})"
    version = getattr(_speedups, "API_VERSION", None)
    if version != API_VERSION:
        return None, (f"pure Python (extension is stale: API {version}, this code needs "
                      f"{API_VERSION}; rebuild it)")
    return _speedups, "C speedups active (netreactor._speedups)"


_module, _description = _load()


def module() -> Optional[ModuleType]:
    """The C extension module when it is in use, else ``None``."""
    return _module


def active() -> bool:
    """True when the C speedups are in use."""
    return _module is not None


def describe() -> str:
    """One line saying which path runs and why, for ``netreactor check`` and ``--version``."""
    return _description
