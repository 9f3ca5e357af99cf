"""`make screenshot`: the status page of the demo, as a PNG for the README.

Starts the demo daemon as `make run` does, but in the background, on a free
port, with its own temporary root (the demo's paths under /tmp/reconciler-demo
rewritten to it) and a repository made from configs/demo; waits until it has
converged, edits the blog's index (under `drift: warn`) by hand, waits until the
daemon reports it Drifted, photographs the page in Debian's Chromium (driven by
playwright, never a downloaded browser) and stops the daemon.

Usage: python scripts/screenshot.py [--out docs/images/status-page.png] [--width 1280]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent.parent
DEMO_ROOT = "/tmp/reconciler-demo"
CHROMIUM_ARGS = [
    # Debian's Chromium, headless, as root, on a machine with no outside network
    # (the background-networking flags stop its connection attempts); the page
    # tests launch it the same way (tests/e2e/test_web_page.py imports this list)
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _wait(what: str, check, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshot: timed out waiting for {what}")
        time.sleep(0.1)


def _demo_repository(repo: Path, root: Path) -> None:
    """configs/demo as a git repository, its paths moved under `root`."""
    shutil.copytree(HERE / "configs" / "demo", repo)
    for path in repo.rglob("*"):
        if path.is_file():
            text = path.read_text()
            if DEMO_ROOT in text:
                path.write_text(text.replace(DEMO_ROOT, str(root)))
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid"}
    env.update(GIT_COMMITTER_NAME="demo", GIT_COMMITTER_EMAIL="demo@example.invalid")
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "demo"]):
        subprocess.run(["git", *argv], cwd=repo, env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "docs" / "images" / "status-page.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="reconciler-screenshot-"))
    root, repo, state = base / "root", base / "repo", base / "state"
    root.mkdir()
    _demo_repository(repo, root)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (base / "daemon.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--repo", str(repo), "--interval", "5s",
         "--root", str(root), "--allow-commands", "--state-dir", str(state),
         "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base,
    )  # fmt: skip
    try:

        def converged() -> bool:
            status = _get(f"{url}/api/v1/status")
            last = status["lastPass"]
            # past the quiet window after its own writes: a hand edit is then drift
            return bool(status["lastGoodRevision"] and not status["queue"] and last) and (
                time.time() - last["at"] > 1.5
            )

        _wait("the demo to converge", converged)
        index = next(root.rglob("blog/index.html"))
        index.write_text(index.read_text() + "<p>edited by hand</p>\n")
        _wait(
            "the hand edit to be reported",
            lambda: any(
                r["state"] == "Drifted" for r in _get(f"{url}/api/v1/resources")["resources"]
            ),
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path=args.chromium, args=[*CHROMIUM_ARGS, "--hide-scrollbars"]
            )
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.goto(url + "/?sort=state")
            page.get_by_role("table", name="Resources").first.wait_for()
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"wrote {args.out.relative_to(HERE) if args.out.is_relative_to(HERE) else args.out}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
