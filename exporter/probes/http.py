"""Exchange health-page probes (443, 444): GET /<vdir>/healthcheck.htm over HTTPS, one check per vdir.

Exchange 2013+ serves `200 OK<br/>SERVERFQDN` while the protocol's component is active. We connect to the
target's address ourselves (classified like every probe), do TLS with SNI and Host set to the target FQDN,
and speak HTTP/1.1 through h11, the sans-IO engine under httpx: httpx would hide the connect errno and
cannot hand over an untrusted peer's certificate, both of which this probe reports. The body read stops at
64 KiB. Details: status, the FQDN the page names and whether it is the target (a mismatch means a load
balancer or proxy answered), and the certificate's expiry, chain and name verdicts.
"""

from __future__ import annotations

import h11

from exporter.probes.contract import Check, Resolved, Target
from exporter.probes.conversation import (
    MAX_READ,
    Conversation,
    ProtocolError,
    Stream,
    clean,
    connect,
    converse,
    deadline,
    first_bytes,
)
from exporter.probes.outcome import Outcome
from exporter.probes.tls import Trust, start_tls

#: check-name suffix -> virtual directory (Exchange 2013+; names are case-insensitive in IIS)
VDIRS = {
    "owa": "owa",
    "ecp": "ecp",
    "ews": "EWS",
    "mapi": "mapi",
    "rpc": "rpc",
    "oab": "OAB",
    "activesync": "Microsoft-Server-ActiveSync",
    "autodiscover": "Autodiscover",
}
HEADER_LIMIT = 16 * 1024
USER_AGENT = "exchange-firewall-exporter"


def healthy_fqdn(body: bytes) -> str | None:
    """The server FQDN from `200 OK<br/>ex01.contoso.com`, or None when the body is not a health page."""
    text = body.decode("latin-1").strip()
    if not text.upper().startswith("200 OK<BR/>"):
        return None
    return text[len("200 OK<br/>") :].split("<", 1)[0].strip()


async def get(conv: Conversation, stream: Stream, host: str, path: str) -> tuple[h11.Response, bytes]:
    """One GET over h11: the response head and at most MAX_READ bytes of body."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEADER_LIMIT)
    request = h11.Request(
        method="GET",
        target=path,
        headers=[("Host", host), ("User-Agent", USER_AGENT), ("Accept", "*/*"), ("Connection", "close")],
    )
    conv.step = f"waiting for the response to GET {path}"
    await stream.send((connection.send(request) or b"") + (connection.send(h11.EndOfMessage()) or b""))
    response: h11.Response | None = None
    body = bytearray()
    received = b""
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.read_some()
                if not received:
                    received = chunk[:64]
                connection.receive_data(chunk)
            elif isinstance(event, h11.Response):
                response = event
                conv.step = f"reading the body of {path}"
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Data):
                body += event.data[: MAX_READ - len(body)]
                if len(body) >= MAX_READ:
                    break
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
            else:
                raise ProtocolError(f"unexpected {type(event).__name__}")
    except h11.RemoteProtocolError as exc:
        raise ProtocolError(f"{clean(str(exc))}: {first_bytes(received)}") from None
    if response is None:
        raise ProtocolError(f"connection ended before a response: {first_bytes(received)}")
    return response, bytes(body)


def health_check(vdir: str, cafile: str | None = None) -> Check:
    """The health-page check for one virtual directory (a key of VDIRS, or a literal vdir name)."""
    path = f"/{VDIRS.get(vdir, vdir)}/healthcheck.htm"

    async def check(resolved: Resolved, target: Target, timeout: float, attempts: int) -> Outcome:
        server_name = target.name or resolved.host
        host = server_name if target.port == 443 else f"{server_name}:{target.port}"
        if ":" in server_name and not target.name:  # an IPv6 literal in a Host header needs brackets
            host = f"[{server_name}]" if target.port == 443 else f"[{server_name}]:{target.port}"

        async def body(conv: Conversation) -> Outcome:
            async def open_plain() -> Stream | Outcome:
                return await connect(conv, resolved, target.port, timeout, attempts)

            stream = await open_plain()
            if isinstance(stream, Outcome):
                return stream
            secured = await start_tls(conv, stream, open_plain, server_name, Trust.of(cafile))
            if isinstance(secured, Outcome):
                return secured
            response, content = await get(conv, secured, host, path)
            status = f"{response.status_code} {clean(response.reason)}".strip()
            conv.note("http_status", str(response.status_code))
            fqdn = healthy_fqdn(content) if response.status_code == 200 else None
            if fqdn is None:
                conv.healthy = False
                conv.note("health", "unhealthy")
                shown = f": {first_bytes(content)}" if response.status_code == 200 else ""
                return conv.ok(f"HTTP {status}{shown}")
            conv.note("health_fqdn", fqdn)
            same = bool(target.name) and fqdn.lower().rstrip(".") == target.name.lower().rstrip(".")
            conv.note("fqdn_match", "yes" if same else "no")
            conv.healthy = same
            conv.note("health", "healthy" if same else "answered by another server")
            return conv.ok(f"HTTP {status}, {fqdn}")

        return await converse("HTTP", deadline(timeout, attempts), body, target.local)

    return check
