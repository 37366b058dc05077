"""TLS for stream probes: the verifying and the accept-anything client contexts (Trust), and the handshake on
a connected Stream that records the certificate's expiry, name match and TLS version in the Conversation."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

from exporter.probes.conversation import Conversation, Stream, tls_reason
from exporter.probes.outcome import Outcome
from exporter.probes.x509 import certificate_facts


class Trust:
    """The two client contexts a TLS probe needs, built once: one that verifies (system store, or only
    `cafile` when given) and one that accepts anything, so an untrusted peer's certificate is still read."""

    _cache: dict[str | None, Trust] = {}  # one per CA file for the whole process

    def __init__(self, cafile: str | None = None) -> None:
        self.cafile = cafile
        self._verified: ssl.SSLContext | None = None
        self._unverified: ssl.SSLContext | None = None

    @classmethod
    def of(cls, cafile: str | None = None) -> Trust:
        if cafile not in cls._cache:
            cls._cache[cafile] = cls(cafile)
        return cls._cache[cafile]

    @property
    def verified(self) -> ssl.SSLContext:
        if self._verified is None:
            self._verified = ssl.create_default_context(cafile=self.cafile)
        return self._verified

    @property
    def unverified(self) -> ssl.SSLContext:
        if self._unverified is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            # old Exchange/DC builds still speak TLS 1.0 with SHA-1: we want to see their certificate
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            self._unverified = ctx
        return self._unverified


async def start_tls(
    conv: Conversation,
    stream: Stream,
    reopen: Callable[[], Awaitable[Stream | Outcome]],
    server_name: str,
    trust: Trust,
) -> Stream | Outcome:
    """TLS on `stream` (connected, and past any STARTTLS preamble). A verified handshake first; if it fails,
    the reason goes into ("tls_verify", ...) and `reopen` brings a second stream to the same point, whose
    handshake accepts any certificate so the certificate is still read. Expiry, name match and TLS version
    go into `conv`."""
    conv.step = "TLS handshake"
    try:
        await stream.writer.start_tls(trust.verified, server_hostname=server_name)
        conv.note("tls_verify", "ok")
    except ssl.SSLError as exc:
        stream.abort()
        conv.note("tls_verify", f"failed: {tls_reason(exc)}")
        reopened = await reopen()
        if isinstance(reopened, Outcome):
            return reopened
        stream = reopened
        conv.step = "TLS handshake (unverified)"
        await stream.writer.start_tls(trust.unverified, server_hostname=server_name)
    conv.note("tls_version", stream.tls_version())
    der = stream.peer_certificate()
    if der:
        facts = certificate_facts(der)
        conv.cert_expiry = facts.not_after
        conv.note("tls_name", "match" if facts.matches(server_name) else "mismatch")
        if facts.names or facts.ips:
            conv.note("cert_names", ",".join(facts.names + facts.ips))
    return stream
