"""Build configuration of the optional C extension ``netreactor._speedups``.

Everything else is in pyproject.toml. The extension is built against the
stable ABI (one ``abi3`` wheel for CPython 3.10+) and is optional: without a C
compiler or the Python headers, installation goes on and netreactor runs on its
pure-Python code (``netreactor.speedups.describe()`` says which is active).

    NETREACTOR_NO_EXTENSIONS=1 pip install .      # do not even try to build it
    python3 setup.py build_ext --inplace          # build it in a checkout
"""

from __future__ import annotations

import os
import sys
import sysconfig

from setuptools import Extension, setup  # type: ignore[import-untyped]
from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]

# Like the runtime switch (netreactor/speedups.py): any value but "" or "0".
NO_EXTENSIONS = os.environ.get("NETREACTOR_NO_EXTENSIONS", "") not in ("", "0")
# The stable ABI exists on CPython only, and not on free-threaded builds (which
# would also re-enable the GIL for a module that does not declare it): there
# the pure-Python code runs.
SUPPORTED = sys.implementation.name == "cpython" and not sysconfig.get_config_var("Py_GIL_DISABLED")


class OptionalBuildExt(build_ext):
    """build_ext that reports a failed build and carries on without the extension."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure means "no extension"
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(f"warning: netreactor._speedups not built ({exc}); "
              "netreactor will use its pure-Python code", file=sys.stderr)


extensions = [] if NO_EXTENSIONS or not SUPPORTED else [
    Extension(
        "netreactor._speedups",
        sources=["netreactor/_speedups.c"],
        py_limited_api=True,
        define_macros=[("Py_LIMITED_API", "0x030A0000")],
        optional=True,
    ),
]

options = {"bdist_wheel": {"py_limited_api": "cp310"}} if extensions else {}

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt}, options=options)
