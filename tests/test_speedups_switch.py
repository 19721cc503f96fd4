"""netreactor.speedups: which path runs, and why (runs with and without the C extension)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from netreactor import speedups

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILT = any((ROOT / "netreactor").glob("_speedups*.so")) or speedups.active()
PROBE = ("from netreactor import speedups, codec; "
         "print(speedups.active(), type(codec.LengthFieldCodec(4).decoder()).__module__, speedups.describe())")


def probe(env_value=None, path=None) -> str:
    env = dict(os.environ)
    env.pop("NETREACTOR_NO_EXTENSIONS", None)
    if env_value is not None:
        env["NETREACTOR_NO_EXTENSIONS"] = env_value
    if path is not None:
        env["PYTHONPATH"] = str(path)
    # -S: no site-packages, so no editable-install finder can supply another
    # copy of netreactor (or of its extension) than the one under test.
    out = subprocess.run([sys.executable, "-S", "-c", PROBE], env=env, cwd=path or ROOT, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_describe_matches_active():
    assert speedups.active() is (speedups.module() is not None)
    assert speedups.describe().startswith("C speedups active" if speedups.active() else "pure Python (")


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_environment_variable_forces_the_pure_path(value):
    assert probe(value) == f"False netreactor.codec pure Python (NETREACTOR_NO_EXTENSIONS={value})"


@pytest.mark.skipif(not BUILT, reason="the C extension is not built here")
@pytest.mark.parametrize("value", ["0", "", None])
def test_an_empty_or_zero_variable_keeps_the_c_path(value):
    assert probe(value) == "True netreactor._speedups C speedups active (netreactor._speedups)"


def copy_package(tmp_path: pathlib.Path) -> pathlib.Path:
    shutil.copytree(ROOT / "netreactor", tmp_path / "netreactor",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return tmp_path


def test_without_the_extension_the_pure_path_runs(tmp_path):
    assert probe(path=copy_package(tmp_path)) == "False netreactor.codec pure Python (extension not built)"


def test_a_stale_extension_is_not_used(tmp_path):
    root = copy_package(tmp_path)
    (root / "netreactor" / "_speedups.py").write_text("API_VERSION = 0\n")
    assert probe(path=root) == ("False netreactor.codec pure Python (extension is stale: API 0, this code needs "
                                f"{speedups.API_VERSION}; rebuild it)")


def test_a_broken_extension_is_not_used(tmp_path):
    root = copy_package(tmp_path)
    (root / "netreactor" / "_speedups.py").write_text("import no_such_module_here\n")
    assert probe(path=root) == ("False netreactor.codec pure Python (extension failed to load: "
                                "No module named 'no_such_module_here')")
