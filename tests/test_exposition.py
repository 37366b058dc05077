"""The gzip exposition (compressed blocks reused across scrapes) always equals the plain one."""

from __future__ import annotations

import dataclasses
import gzip
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.outputs import exposition, gzipcat
from exporter.outputs.exposition import PathExposition
from exporter.plan.catalogue import PathKind
from exporter.plan.planner import NetworkPath
from exporter.probes.outcome import Outcome, State
from exporter.state.results import ResultTable
from exporter.state.status import Classification, PathStatus, Status


def paths(n: int) -> list[NetworkPath]:
    return [
        NetworkPath(
            "src",
            "s",
            f"t{i}.test",
            "S",
            "mailbox",
            25 + i % 7,
            "tcp",
            "smtp",
            PathKind.EXCHANGE_EXCHANGE,
            "smtp" if i % 3 else "tcp",
        )
        for i in range(n)
    ]


def decompress_like_httpx(body: bytes) -> bytes:
    """One member only, as httpx and other single-member readers decode."""
    reader = zlib.decompressobj(zlib.MAX_WBITS | 16)
    text = reader.decompress(body) + reader.flush()
    assert reader.eof and not reader.unused_data
    return text


updates = st.lists(
    st.tuples(st.integers(0, 299), st.sampled_from(list(State)), st.floats(0.0, 1.0), st.booleans()),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(updates, min_size=1, max_size=4))
def test_gzip_and_plain_renderings_agree_after_any_updates(
    scrapes: list[list[tuple[int, State, float, bool]]],
) -> None:
    original = exposition.BLOCK
    exposition.BLOCK = 64  # many blocks, so reuse and recompression both happen
    try:
        table = ResultTable(paths(300))
        lines = PathExposition()
        lines.attach(table)
        seed = PathStatus("k", Status.BLOCKED, Classification.NEWLY_BLOCKED, state_since=1.0)
        assert table.seed(5, seed)
        lines.seeded(5, seed)
        for round_, batch in enumerate(scrapes):
            for index, state, rtt, blocked in batch:
                status = PathStatus(
                    "k",
                    Status.BLOCKED if blocked else Status.OPEN,
                    Classification.NEWLY_BLOCKED if blocked else Classification.OK,
                    state_since=float(round_),
                    last_open=2.0,
                )
                spoke = state is State.OPEN
                details = (("protocol", "ok"),) if spoke else ()
                outcome = Outcome(state, rtt, "e", 1, details, 1e9 + index, spoke)
                lines.recorded(index, table.record(index, outcome, 1e9 + round_, status))
            head = b"# head\n"
            expected = head + lines.render().encode()
            body = lines.render_gzip(head)
            assert gzip.decompress(body) == expected
            assert decompress_like_httpx(body) == expected
    finally:
        exposition.BLOCK = original


def test_crc_combination_matches_zlib() -> None:
    a, b = b"exchange" * 1000, b"firewall" * 777
    assert gzipcat.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert gzipcat.crc32_combine(zlib.crc32(a), zlib.crc32(b""), 0) == zlib.crc32(a)


def test_joined_expositions_render_each_family_once_with_every_agents_lines() -> None:
    """The demo's in-process agents share one /metrics: each family's HELP/TYPE once, then the lines of
    every agent; gzip and plain agree."""
    first, second = PathExposition(), PathExposition()
    for lines, source in ((first, "src"), (second, "other")):
        table = ResultTable([dataclasses.replace(path, source=source) for path in paths(3)])
        lines.attach(table)
        status = PathStatus("k", Status.OPEN, Classification.OK, state_since=1.0, last_open=1.0)
        lines.recorded(0, table.record(0, Outcome(State.OPEN, 0.001), 1e9, status))
    first.join([second])
    text = first.render()
    assert text.count("# TYPE exchange_path_up gauge") == 1
    assert 'exchange_path_up{source="src"' in text and 'exchange_path_up{source="other"' in text
    assert gzip.decompress(first.render_gzip(b"# head\n")) == b"# head\n" + text.encode()
