"""A notification receiver for trying reconciler's notifications, and for its tests.

    python scripts/notify_receiver.py --listen 127.0.0.1:9109 --secret-file FILE

It listens on loopback and prints one JSON line per notification received:

- `POST /` (any path but /hooks/...): reconciler's generic webhook. The
  `X-Reconciler-Signature` header is checked with the secret (the scheme of
  docs/operations.md#notifications); a missing, wrong or old signature is a 401
  and is printed as {"kind": "rejected", ...}. A good one prints
  {"kind": "webhook", "event": ..., "payload": {...}}.
- `POST /hooks/<token>`: a Slack-compatible incoming webhook (the shape
  Mattermost serves), which apprise's `mmost://HOST:PORT/<token>` posts to; it
  prints {"kind": "slack", "token": ..., "text": ...}.

`make receiver` runs it beside `make run NOTIFY=1`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aiohttp import web

from reconciler.notify import SIGNATURE_HEADER, verify

MAX_BODY = 1 << 20


def _emit(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
    sys.stdout.flush()


def build(secret: bytes) -> web.Application:
    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get(SIGNATURE_HEADER, "")
        if not verify(secret, body, header, time.time()):
            _emit({"kind": "rejected", "path": request.path, "reason": "bad signature"})
            return web.json_response({"error": "bad signature"}, status=401)
        _emit(
            {
                "kind": "webhook",
                "path": request.path,
                "event": request.headers.get("X-Reconciler-Event", ""),
                "payload": json.loads(body),
            }
        )
        return web.Response(status=204)

    async def slack(request: web.Request) -> web.Response:
        data = await request.json()
        _emit({"kind": "slack", "token": request.match_info["token"], "text": data.get("text")})
        return web.Response(text="ok")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/hooks/{token}", slack)
    app.router.add_post("/{tail:.*}", webhook)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:9109", help="HOST:PORT (loopback)")
    parser.add_argument("--secret-file", type=Path, required=True, help="the webhook's secret")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    secret = args.secret_file.read_text().strip().encode()
    print(f"receiving notifications on http://{args.listen}/", file=sys.stderr, flush=True)
    web.run_app(build(secret), host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
