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
    for manifest in sandbox.config.glob("*.yaml"):
        text = manifest.read_text().replace(DEMO_ROOT, str(sandbox.root))
        manifest.write_text(text)
    (sandbox.config / "files" / "logrotate.conf").write_text("weekly\n")
    first = sandbox.run("apply", check=0)
    assert "6 created" in first.stdout
    assert (sandbox.root / "srv/app/config.ini").read_text().count("port = 8080") == 1
    assert (sandbox.root / "srv/current").readlink() == Path("app")
    second = sandbox.run("apply", check=0)
    assert "6 unchanged" in second.stdout
    sandbox.run("plan", check=0)
