"""Real Prometheus and Alertmanager on loopback, and a webhook receiver that records notifications.

RULES is the shipped rules file; alerts_in(note, name, status) picks one alert's entries out of a
notification.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.lab.waiting import answers, wait_until

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "alerts" / "exchange-firewall.rules.yml"


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is missing: `make test` installs Debian's prometheus packages")
    return found


@dataclass
class Notification:
    receiver_path: str
    received: float  # time.monotonic()
    body: dict[str, Any]


@dataclass
class Webhook:
    """Records every Alertmanager notification POSTed to it."""

    port: int = 0
    notifications: list[Notification] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> Webhook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", "0")), 10_000_000)
                body = json.loads(self.rfile.read(length) or b"{}")
                hook.notifications.append(Notification(self.path, time.monotonic(), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> Notification:
        return wait_until(
            lambda: next((note for note in list(self.notifications) if predicate(note)), None),
            timeout,
            0.1,
            message=lambda: (
                f"no matching notification in {timeout}s; got {[n.body for n in self.notifications]}"
            ),
        )


def alerts_in(note: Notification, name: str, status: str) -> list[dict[str, Any]]:
    """The alerts called `name` in `status` ("firing" or "resolved") that one notification carries."""
    return [
        a for a in note.body.get("alerts", []) if a["labels"]["alertname"] == name and a["status"] == status
    ]


class Process:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        self.proc = subprocess.Popen(args, stdout=self.handle, stderr=subprocess.STDOUT, cwd=REPO)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.handle.close()


def wait_http(url: str, timeout: float = 30.0) -> None:
    wait_until(lambda: answers(url), timeout, message=f"{url} did not come up")


def alertmanager_config(webhook: Webhook, *, group_wait: str, group_interval: str) -> dict[str, Any]:
    """The shipped example with the receivers pointed at the test's webhook and test-sized timings."""
    config: dict[str, Any] = yaml.safe_load((REPO / "alerts" / "alertmanager.example.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"http://127.0.0.1:{webhook.port}/{receiver['name']}"
    for route in [config["route"], *config["route"].get("routes", [])]:
        route["group_wait"] = group_wait
        route["group_interval"] = group_interval
    return config


class Alertmanager:
    def __init__(self, workdir: Path, port: int, config: dict[str, Any]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.config_file = workdir / "alertmanager.yml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.process = Process(
            [
                binary("prometheus-alertmanager"),
                f"--config.file={self.config_file}",
                f"--storage.path={workdir / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            workdir / "alertmanager.log",
        )
        wait_http(self.url + "/-/ready")

    def reload(self, config: dict[str, Any]) -> None:
        self.config_file.write_text(yaml.safe_dump(config))
        response = httpx.post(self.url + "/-/reload", timeout=10)
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        self.process.stop()


class Prometheus:
    def __init__(self, workdir: Path, port: int, exporter: str, alertmanager: str, rules: list[Path]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(r) for r in rules],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
            "scrape_configs": [
                {"job_name": "exchange-firewall-exporter", "static_configs": [{"targets": [exporter]}]},
            ],
        }
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.args = [
            binary("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ]
        self.workdir = workdir
        self.process = Process(self.args, workdir / "prometheus.log")
        wait_http(self.url + "/-/ready")

    def restart(self) -> None:
        """Stop and start again on the same data directory, as an upgrade or a crash would."""
        self.process.stop()
        self.process = Process(self.args, self.workdir / "prometheus-2.log")
        wait_http(self.url + "/-/ready")

    def query(self, expr: str) -> dict[str, Any]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        result: dict[str, Any] = response.json()
        return result

    def stop(self) -> None:
        self.process.stop()
