"""The bundled demo config applies, then a second run finds nothing to do."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import Sandbox

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo"
DEMO_ROOT = "/tmp/reconciler-demo"


def test_demo_applies_and_second_apply_is_a_no_op(sandbox: Sandbox) -> None:
    shutil.rmtree(sandbox.config)
    text = ""
    shutil.copytree(DEMO, sandbox.config)
    for manifest in sandbox.config.rglob("*.yaml"):  # bundles included
        text = manifest.read_text().replace(DEMO_ROOT, str(sandbox.root))
        manifest.write_text(text)
    (sandbox.config / "files" / "logrotate.conf").write_text("weekly\n")
    first = sandbox.run("apply", "--allow-commands", check=0)
    assert "13 created" in first.stdout  # 7 written out, 2 x 3 from the site bundle
    sites = sandbox.root / "srv/sites"
    assert "listen 127.0.0.1:8081;" in (sites / "docs/server.conf").read_text()
    assert "listen 127.0.0.1:8082;" in (sites / "blog/server.conf").read_text()
    assert "<title>The blog</title>" in (sites / "blog/index.html").read_text()
    assert (sandbox.root / "srv/app/config.ini").read_text().count("port = 8080") == 1
    assert (sandbox.root / "srv/current").readlink() == Path("app")
    reloads = sandbox.root / "srv/app/reloads.log"
    assert reloads.read_text().count("reloaded") == 1
    second = sandbox.run("apply", "--allow-commands", check=0)
    assert "13 unchanged" in second.stdout
    sandbox.run("plan", "--allow-commands", check=0)
    (sandbox.root / "srv/app/config.ini").write_text("port = 1\n")  # by hand: healed, reloaded
    third = sandbox.run("apply", "--allow-commands", check=0)
    assert "1 healed" in third.stdout and "1 updated" in third.stdout, third.stdout
    assert reloads.read_text().count("reloaded") == 2
    refused = sandbox.run("validate", check=1)  # commands are the operator's choice
    assert "--allow-commands" in refused.stderr
