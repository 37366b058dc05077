"""Property-based fuzzing (hypothesis) of everything a user or a directory can feed in.

No input may crash a parser with anything but our own ConfigError; names from the directory must survive
the exposition format and render inert in HTML. Example counts: FUZZ_EXAMPLES (default 400 each).
"""

from __future__ import annotations

import html
import logging
import math
import os
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.errors import ConfigError
from exporter.inventory.exchange_attributes import decode_roles, version_from_number, version_from_serial
from exporter.inventory.model import Role, Version
from exporter.inventory.static import load_inventory, parse_inventory
from exporter.logsetup import FORMAT, OneLineFormatter
from exporter.outputs import matrix
from exporter.outputs.exposition import PathExposition
from exporter.plan.catalogue import PathKind
from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import Outcome, State
from exporter.state.recorder import Recorder
from exporter.text import UNSAFE_CODES

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=20), inner, max_size=6)
    ),
    max_leaves=30,
)
server_keys = st.sampled_from(
    ["name", "fqdn", "address", "roles", "version", "site", "static_rpc_ports", "dag", "dag_replication_port"]
)
near_valid = st.fixed_dictionaries(
    {
        "organisation": st.one_of(st.text(max_size=10), scalars),
        "servers": st.lists(st.dictionaries(server_keys, documents, max_size=9), max_size=4),
        "domain_controllers": st.lists(
            st.dictionaries(st.text(max_size=12), documents, max_size=6), max_size=3
        ),
    }
)


@FUZZ
@given(st.one_of(documents, near_valid))
def test_inventory_documents_either_load_or_raise_config_error(data: object) -> None:
    try:
        inventory = parse_inventory(data, "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")
    else:
        assert inventory.organisation


@FUZZ
@given(st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
def test_inventory_files_of_any_bytes_never_crash(raw: bytes) -> None:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-inventory-{os.getpid()}.yaml"
    path.write_bytes(raw)
    try:
        load_inventory(path)
    except ConfigError:
        pass
    finally:
        path.unlink(missing_ok=True)


@FUZZ
@given(st.text(max_size=40))
def test_version_text_parses_or_is_a_config_error(text: str) -> None:
    try:
        version = Version.parse(text)
    except ConfigError:
        return
    assert version.product is not None


@FUZZ
@given(st.integers(min_value=0, max_value=2**40), st.sampled_from([14, 15]))
def test_role_bits_are_all_accounted_for(mask: int, major: int) -> None:
    decoded = decode_roles(mask, major)
    assert decoded.roles <= set(Role)
    assert decoded.unknown_bits & ~mask == 0  # nothing invented
    known = mask & ~decoded.unknown_bits
    assert (known == 0) == (not decoded.names)  # every known bit named, none dropped


@FUZZ
@given(st.text(max_size=60))
def test_serial_number_text_never_crashes(text: str) -> None:
    result = version_from_serial(text)
    assert result is None or (len(result) == 4 and all(part >= 0 for part in result))


@FUZZ
@given(st.integers(min_value=14, max_value=15), st.integers(0, 9), st.integers(0, 9999), st.integers(0, 999))
def test_serial_numbers_in_exchange_form_round_trip(major: int, minor: int, build: int, rev: int) -> None:
    shown = build + 30000 if major == 15 else build
    assert version_from_serial(f"Version {major}.{minor} (Build {shown}.{rev})") == (major, minor, build, rev)


@FUZZ
@given(st.integers(min_value=-(2**33), max_value=2**33))
def test_version_number_never_crashes(value: int) -> None:
    result = version_from_number(value)
    assert result is None or result[0] in (14, 15)


hostile = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)


@FUZZ
@given(hostile, hostile, hostile)
def test_any_name_survives_the_exposition_format(target: str, site: str, evidence: str) -> None:
    kind = PathKind.EXCHANGE_EXCHANGE
    path = NetworkPath("src", "s", target, site, "mailbox", 25, "tcp", "smtp", kind, "tcp")
    lines = PathExposition()
    recorder = Recorder(None, [lines])
    recorder.begin_plan([path])
    recorder.record(0, Outcome(State.REFUSED, 0.01, evidence), 1_700_000_000.0)
    families = {f.name: f for f in text_string_to_metric_families(lines.render())}
    sample = families["exchange_path_up"].samples[0]
    assert sample.labels["target"] == target and sample.labels["target_site"] == site
    assert sample.value == 0.0
    assert not math.isnan(families["exchange_path_connect_seconds"].samples[0].value)


_chars = st.text(alphabet=string.printable + "<>&\"'`", max_size=15)
# a tag the page itself never contains, so finding it raw in the output means it was not escaped
markup = st.tuples(_chars, st.sampled_from(["img", "svg", "iframe", "object", "IMG"]), _chars).map(
    lambda parts: f"{parts[0]}<{parts[1]} {parts[2]}"
)


@FUZZ
@given(markup, markup, markup)
def test_directory_strings_render_inert_in_the_matrix(name: str, site: str, evidence: str) -> None:
    rows = [
        {
            "source": name,
            "source_site": site,
            "target": name + "x",
            "target_site": site,
            "target_role": name,
            "port": 25,
            "proto": "tcp",
            "service": name,
            "state": "refused",
            "evidence": evidence,
            "status": "blocked",
            "classification": "newly_blocked",
        }
    ]
    page = matrix.render_page(
        matrix.build(rows),
        [{"path": f"{name}|{name}|1|tcp|tcp", "evidence": evidence}],
        title=name,
        subtitle=site,
    )
    for value in (name, site, evidence):
        assert value not in page  # each holds a tag the page never has: only its escaped form may appear
        assert html.escape(value, quote=True) in page


UNSAFE = UNSAFE_CODES


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40), st.text(max_size=30))
def test_directory_text_reaches_labels_without_control_or_bidi_characters(site: str, name: str) -> None:
    """Whatever a site or server name holds, the inventory carries it with every unsafe character replaced
    one for one (nothing dropped or merged), and says so in a warning naming the member."""
    data = {
        "organisation": "Org" + site,
        "servers": [
            {
                "name": (name or "n")[:64],
                "fqdn": "ex1.fuzz.test",
                "roles": ["mailbox"],
                "version": "2019",
                "site": site[:128],
            },
        ],
    }
    inventory = parse_inventory(data, "fuzz.yaml")
    server = inventory.servers[0]
    for text, raw in ((server.site, site[:128]), (server.name, (name or "n")[:64])):
        assert not {ord(c) for c in text} & UNSAFE
        assert len(text) == len(raw)
        assert [a for a, b in zip(text, raw, strict=True) if a != b] == ["\ufffd"] * sum(
            ord(c) in UNSAFE for c in raw
        )
    changed = server.site != site[:128] or server.name != (name or "n")[:64]
    assert any(w.startswith("ex1.fuzz.test:") for w in inventory.warnings) == changed
    assert not any({ord(c) for c in w} & UNSAFE for w in inventory.warnings)


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_a_log_record_is_one_line_whatever_its_message_holds(text: str) -> None:
    formatter = OneLineFormatter(FORMAT)
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "site %s", (text,), None)
    line = formatter.format(record)
    assert len(line.splitlines()) == 1 and line.endswith("site " + text.translate(_escapes()))
    assert not {ord(c) for c in line} & UNSAFE


def _escapes() -> dict[int, str]:
    table = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in UNSAFE}
    return table | {10: "\\n", 13: "\\r", 9: "\\t"}


def test_yaml_bombs_are_refused_without_expanding(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    file = tmp_path / "bomb.yaml"
    file.write_text(bomb)
    try:
        load_inventory(file)
    except ConfigError as exc:
        assert "invalid inventory" in str(exc) or "mapping" in str(exc)
    assert yaml.safe_load(bomb)  # PyYAML builds shared references, not copies: no memory blow-up


# ---- what peers send: every reply parser, fed arbitrary bytes --------------------------------------------
# A parser may say "this is not my protocol" (ProtocolError, or ValueError where documented); nothing
# else may escape, and whatever it notes must already be sanitised text.


def _quiet(call: object) -> None:
    from exporter.probes.conversation import ProtocolError

    try:
        assert callable(call)
        call()
    except (ProtocolError, ValueError):
        pass


@FUZZ
@given(st.binary(max_size=600))
def test_netlogon_blobs_parse_or_are_refused(blob: bytes) -> None:
    from exporter.probes import cldap

    def run() -> None:
        facts = cldap.parse_netlogon(blob)
        assert all(isinstance(v, str) and "\n" not in v for v in facts.values())

    _quiet(run)


@FUZZ
@given(st.binary(max_size=600), st.integers(1, 2**31 - 1))
def test_cldap_replies_never_crash(data: bytes, message_id: int) -> None:
    from exporter.probes import cldap
    from exporter.probes.conversation import Conversation

    _quiet(lambda: cldap._answer(Conversation("CLDAP"), data, message_id, "example.test"))


@FUZZ
@given(st.one_of(st.binary(max_size=600), st.binary(max_size=200).map(lambda b: b"\x7e" + b)))
def test_kerberos_replies_never_crash(data: bytes) -> None:
    from exporter.probes import kerberos
    from exporter.probes.conversation import Conversation

    _quiet(lambda: kerberos._answer(Conversation("Kerberos"), data, 1_700_000_000.0))


@FUZZ
@given(st.binary(max_size=600))
def test_dns_answers_never_crash(wire: bytes) -> None:
    from exporter.probes import dns as dns_probe
    from exporter.probes.conversation import Conversation

    query = dns_probe._query("example.test")
    _quiet(lambda: dns_probe._answer(Conversation("DNS"), query, wire, "example.test"))


@FUZZ
@given(st.binary(max_size=200))
def test_ntp_replies_never_crash(data: bytes) -> None:
    from exporter.probes import ntp
    from exporter.probes.conversation import Conversation

    _quiet(lambda: ntp._answer(Conversation("NTP"), data, ntp.to_ntp(1_700_000_000.0), 1_700_000_000.0))


@FUZZ
@given(st.binary(max_size=400))
def test_smb_replies_never_crash(message: bytes) -> None:
    from exporter.probes import smb
    from exporter.probes.conversation import Conversation

    _quiet(lambda: smb._answer(Conversation("SMB"), message, 0.0, 0.001))


@FUZZ
@given(st.binary(max_size=400))
def test_rpc_endpoint_mapper_replies_never_crash(stub: bytes) -> None:
    from exporter.probes import rpc

    def run() -> None:
        ports, _status = rpc.parse_ept_map(stub)
        assert all(0 <= port <= 65535 for port in ports)

    _quiet(run)
    _quiet(lambda: rpc.tower_port(stub))

    def enumerate_() -> None:
        _handle, entries, _status = rpc.parse_ept_lookup(stub)
        assert all(0 <= entry.port <= 65535 for entry in entries)

    _quiet(enumerate_)


@FUZZ
@given(st.binary(max_size=2000))
def test_health_page_bodies_never_crash(body: bytes) -> None:
    from exporter.probes import http

    fqdn = http.healthy_fqdn(body)
    assert fqdn is None or (fqdn.isprintable() and len(fqdn) <= 253)


@FUZZ
@given(st.lists(st.text(max_size=60), max_size=6))
def test_network_address_values_never_crash(values: list[str]) -> None:
    from exporter.inventory import ldap

    for value in values:
        ldap.is_hostname(value)
