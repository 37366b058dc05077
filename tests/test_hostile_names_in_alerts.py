"""Strings from the directory in alerts: a server or site named with markup, quotes, backslashes, template
syntax or control characters still pages with its evidence, and renders inert where people read alerts -
Prometheus's alerts page and Alertmanager's HTML e-mail, both opened in Chromium.

Real exporter, Prometheus, Alertmanager and an SMTP server (aiosmtpd), all on loopback.
"""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from exporter.text import safe_text
from tests.conftest import Listeners, free_port
from tests.lab.browser import browse, tags_of
from tests.lab.monitoring import RULES, Alertmanager, Prometheus, Webhook, alertmanager_config, alerts_in
from tests.lab.organisations import EX1_PORTS
from tests.lab.service import Service, serve_args, start_service
from tests.lab.waiting import wait_until

ADDRESS = "127.0.58.1"
# Host names are validated (the `target` label is the FQDN); site names are free text in AD and land in
# source_site/target_site and the annotations.
EVIL_SOURCE_SITE = '<img src=x onerror=alert(1)> "q\\b'
# a site name with template syntax, a terminal escape, CR/LF and a script element
EVIL_SITE = '{{ printf "%s" "tmpl" }} \x1b[31m\r\n<script>alert(2)</script>'
# what the exporter makes of them: control, line-separator and bidi characters become U+FFFD
SHOWN_SOURCE_SITE = safe_text(EVIL_SOURCE_SITE)
SHOWN_SITE = safe_text(EVIL_SITE)
BLOCKED = 445


class Mailbox:
    """Every message Alertmanager delivers over SMTP."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    def wait(self, timeout: float = 60.0) -> EmailMessage:
        """The first message about a newly blocked path."""
        return wait_until(
            lambda: next((m for m in list(self.messages) if "NewlyBlocked" in str(m["Subject"])), None),
            timeout,
            message=lambda: f"no e-mail in {timeout}s: {[m['Subject'] for m in self.messages]}",
        )


class Stack:
    def __init__(
        self,
        svc: Service,
        prom: Prometheus,
        am: Alertmanager,
        hook: Webhook,
        mailbox: Mailbox,
        sockets: dict[int, socket.socket],
    ) -> None:
        self.svc, self.prom, self.am, self.hook, self.mailbox = svc, prom, am, hook, mailbox
        self.sockets = sockets


@pytest.fixture
def stack(tmp_path: Path, listeners: Listeners) -> Iterator[Stack]:
    for port in EX1_PORTS:
        listeners.open(ADDRESS, port)
    sockets = {int(s.getsockname()[1]): s for s in listeners.sockets}
    server = {"roles": ["mailbox"], "version": "2019"}
    inventory = {
        "organisation": "<b>Org</b>",
        "servers": [
            {"name": "EX0", "fqdn": "ex0.loop.test", "site": EVIL_SOURCE_SITE, **server},  # this agent
            {"name": "EX1", "fqdn": "ex1.loop.test", "address": ADDRESS, "site": EVIL_SITE, **server},
        ],
    }
    file = tmp_path / "inv.yaml"
    file.write_text(yaml.safe_dump(inventory))
    mailbox = Mailbox()
    smtp_port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    hook = Webhook().start()
    config: dict[str, Any] = alertmanager_config(hook, group_wait="1s", group_interval="2s")
    for receiver in config["receivers"]:
        if receiver["name"] == "pager":
            receiver["email_configs"] = [
                {
                    "to": "oncall@example.test",
                    "from": "alertmanager@example.test",
                    "smarthost": f"127.0.0.1:{smtp_port}",
                    "require_tls": False,
                }
            ]
    am_port, prom_port = free_port(), free_port()
    am = Alertmanager(tmp_path, am_port, config)
    svc = start_service(
        serve_args(
            file,
            source="ex0.loop.test",
            connect_only=True,
            interval=2,
            timeout=0.3,
            confirm_delay=0.3,
            state_file="",
        )
    )
    prom = Prometheus(tmp_path, prom_port, svc.base.removeprefix("http://"), f"127.0.0.1:{am_port}", [RULES])
    try:
        yield Stack(svc, prom, am, hook, mailbox, sockets)
    finally:
        prom.stop()
        svc.proc.terminate()
        svc.proc.wait(10)
        am.stop()
        hook.stop()
        controller.stop()


def assert_inert(dom: str) -> None:
    """No element or handler came out of the hostile names (a serialised DOM shows elements raw and text
    escaped); the markup is there as text."""
    tags = tags_of(dom)
    assert not [t for t, _a in tags if t in ("img", "svg", "iframe", "object", "embed")], tags
    assert not [(t, k) for t, attrs in tags for k in attrs if k.startswith("on")]
    assert "<script>alert(2)" not in dom and "<img src" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in dom


def test_hostile_directory_names_page_with_evidence_and_render_inert(stack: Stack, tmp_path: Path) -> None:
    # every path open first: a baseline to be newly blocked from
    def all_open() -> list[dict[str, Any]] | None:
        up: list[dict[str, Any]] = stack.prom.query("exchange_path_up == 1")["data"]["result"]
        return up if len(up) >= len(EX1_PORTS) else None

    up = wait_until(
        all_open,
        timeout=30,
        interval=0.5,
        message=lambda: f"paths never all open in Prometheus: {stack.svc.get('/api/v1/paths').text}",
    )

    # the label values survived the exposition and Prometheus's parser byte for byte
    labels = {(r["metric"]["source_site"], r["metric"]["target_site"]) for r in up}
    assert labels == {(SHOWN_SOURCE_SITE, SHOWN_SITE)}
    assert SHOWN_SITE == '{{ printf "%s" "tmpl" }} \ufffd[31m\ufffd\ufffd<script>alert(2)</script>'

    stack.sockets[BLOCKED].close()  # the port now refuses: newly blocked after confirmation
    note = stack.hook.wait_for(lambda n: bool(alerts_in(n, "ExchangeRequiredPathNewlyBlocked", "firing")))
    alert = alerts_in(note, "ExchangeRequiredPathNewlyBlocked", "firing")[0]
    assert alert["labels"]["source_site"] == SHOWN_SOURCE_SITE
    assert alert["labels"]["target_site"] == SHOWN_SITE
    assert alert["labels"]["port"] == str(BLOCKED)
    summary, description = alert["annotations"]["summary"], alert["annotations"]["description"]
    assert summary == f"ex0.loop.test can no longer reach ex1.loop.test on {BLOCKED}/tcp (smb)", summary
    assert f"(site {SHOWN_SOURCE_SITE})" in description and f"site {SHOWN_SITE})" in description
    # the evidence query still finds the state
    assert "How: refused." in description, description
    # template syntax in a value is data, never executed
    assert '{{ printf "%s" "tmpl" }}' in description
    assert "tmpl }}" not in description.replace('"tmpl" }}', "")

    # Prometheus's own alerts page (Debian ships the classic UI), rendered by Chromium
    dom = browse(stack.prom.url + "/classic/alerts", tmp_path)
    assert "ExchangeRequiredPathNewlyBlocked" in dom
    assert_inert(dom)
    assert "How: refused." in dom
    # the page's scripts are its own: every one has a src on Prometheus or is the inline bootstrap
    for tag, attrs in tags_of(dom):
        if tag == "script" and attrs.get("src"):
            assert str(attrs["src"]).startswith("/classic/static/"), attrs

    # Alertmanager's HTML e-mail to the pager, opened as a file in Chromium
    message = stack.mailbox.wait()
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert isinstance(html, str)
    assert "<img src=x" not in html and "<script>alert" not in html
    page = tmp_path / "mail.html"
    page.write_text(html)
    dom = browse(page.as_uri(), tmp_path)
    assert_inert(dom)
    assert not [t for t, _a in tags_of(dom) if t == "script"]
    assert "How: refused." in dom
    subject = str(message["Subject"])
    assert SHOWN_SITE in subject and "\r" not in subject and "\n" not in subject

    # the log said what was replaced, on one line per record
    log = stack.svc.stop()
    warning = [line for line in log.splitlines() if "ex1.loop.test: site held control" in line]
    assert len(warning) == 1, log
    assert not [line for line in log.splitlines() if line.startswith("<script>")]
