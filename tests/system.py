"""Debian packages the tests need, installed on first use (CI starts clean)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

_lock = threading.Lock()


def ensure_debian(binary: str, *packages: str) -> str:
    """The path of `binary`, installing `packages` with apt when it is missing.
    Skips when apt cannot be used (not root); fails loudly when apt fails."""
    with _lock:
        found = shutil.which(binary) or (binary if os.path.isabs(binary) else None)
        if found and os.path.exists(found):
            return found
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"{binary} is missing and {' '.join(packages)} cannot be installed here")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=600"]
        install += ["--no-install-recommends", *packages]
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:  # a clean machine may have stale or no package lists
            subprocess.run(
                ["apt-get", "update", "-o", "DPkg::Lock::Timeout=600"],
                capture_output=True,
                env=env,
                timeout=900,
            )
            result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        found = shutil.which(binary) or (binary if os.path.isabs(binary) else None)
        if result.returncode != 0 or not found or not os.path.exists(found):
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            pytest.fail(f"could not install {' '.join(packages)} for {binary}:\n{tail}")
        return found
