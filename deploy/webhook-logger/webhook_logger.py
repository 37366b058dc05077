"""A stand-in for the pager and the ticket system of alerts/alertmanager.example.yml, for the compose stack.

Alertmanager posts its webhook notifications here (http://127.0.0.1:9095/pager and /ticket: the compose
file runs this in Alertmanager's network namespace, so the example routing is used unchanged); each
notification becomes one line per alert on stdout, which `docker compose logs webhook-logger` shows:

    [pager] FIRING critical ExchangeRequiredPathNewlyBlocked: monitor.demo.example can no longer reach ...

Standard library only, so it runs in the plain python image.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

MAX_BODY = 4 * 1024 * 1024


def format_notification(receiver: str, payload: dict[str, Any]) -> list[str]:
    """One line per alert of an Alertmanager webhook payload (version 4)."""
    lines = []
    for alert in payload.get("alerts") or []:
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        lines.append(
            f"[{receiver}] {str(alert.get('status', '?')).upper()} {labels.get('severity', '-')} "
            f"{labels.get('alertname', '?')}: {annotations.get('summary') or labels}"
        )
    return lines


def make_handler(out: TextIO) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "webhook-logger"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self.send_error(400, "expected a JSON body")
                return
            try:
                payload = json.loads(self.rfile.read(length))
            except ValueError:
                self.send_error(400, "not JSON")
                return
            receiver = self.path.strip("/") or "webhook"
            for line in format_notification(receiver, payload if isinstance(payload, dict) else {}):
                print(line, file=out, flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per alert is the output; no access log

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print Alertmanager webhook notifications.")
    parser.add_argument("--listen", default="127.0.0.1:9095", metavar="HOST:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), make_handler(sys.stdout))
    print(f"webhook-logger: listening on {args.listen}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
