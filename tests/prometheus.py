"""Prometheus from Debian's package on 127.0.0.1, for tests that scrape a real daemon."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.gitservers import free_port, wait_for_port
from tests.system import ensure_debian


class Prometheus:
    """One Prometheus server. `config(port)` returns its configuration, given the
    port it will listen on; files the configuration names (rules) are copied into
    `workdir` beside it by the caller."""

    def __init__(self, workdir: Path, config: Any) -> None:
        binary = ensure_debian("prometheus", "prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config(self.port)))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/`path`: its `data`, after checking the status is success."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def value(self, expr: str) -> float | None:
        """The value of an instant query with at most one series; None when empty."""
        result = self.api("query", query=expr)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
