"""Every python block of the docs below runs (with certificate files made for
the test where a block reads them), so a doc example cannot rot."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def blocks(name):
    text = (DOCS / name).read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def in_pki_dir(tls_pki, tmp_path, monkeypatch):
    """A working directory holding cert.pem, key.pem and ca.pem, as the examples expect."""
    for src, dst in (("server.pem", "cert.pem"), ("server.key", "key.pem"), ("ca.pem", "ca.pem")):
        shutil.copy(tls_pki[src], tmp_path / dst)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tls_doc_blocks_run(in_pki_dir, capsys):
    found = blocks("tls.md")
    assert len(found) >= 3
    namespace = {"__name__": "tls_md"}
    for i, block in enumerate(found):
        exec(compile(block, f"tls.md[block {i}]", "exec"), namespace)
    # The client block defines fetch(): run it against the server block's engine.
    import netreactor as nr
    from netreactor.tls import server_context

    class Echo(nr.EventHandler):
        def on_traffic(self, conn):
            conn.write(conn.read())

    with nr.Engine(Echo(), "tls://127.0.0.1:0", tls=server_context("cert.pem", "key.pem")) as engine:
        namespace["fetch"](engine.addresses[0])
    out = capsys.readouterr().out
    assert "tls://127.0.0.1:" in out and "localhost" in out
    assert os.path.exists("cert.pem")


def test_timeouts_doc_blocks_run(tmp_path):
    import subprocess
    import sys

    found = blocks("timeouts.md")
    assert len(found) >= 2
    env = dict(os.environ)
    root = str(DOCS.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    outputs = []
    for i, code in enumerate(found):
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"docs/timeouts.md block {i} failed:\n{code}\n{r.stdout}\n{r.stderr}"
        outputs.append(r.stdout)
    assert "closed: ReadTimeoutError" in outputs[0] and "slow line refused" in outputs[0]
    assert "'open': 2" in outputs[1] and "'holds': 2" in outputs[1]
