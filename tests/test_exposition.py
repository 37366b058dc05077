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
from exporter.probes.locate import Location
from exporter.probes.outcome import Outcome, State
from exporter.state.recorder import Recorder
from exporter.state.status import path_key
from exporter.state.tracker import Tracker


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
    st.tuples(
        st.sampled_from([0, 1, 5, 63, 64, 65, 128, 200, 250, 299]),
        st.sampled_from(list(State)),
        st.floats(0.0, 1.0),
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(updates, min_size=1, max_size=4))
def test_gzip_and_plain_renderings_agree_after_any_updates(
    scrapes: list[list[tuple[int, State, float, bool]]],
) -> None:
    """The gzip pieces are re-rendered only for the blocks the recorder said changed: after any updates
    they still equal a fresh plain rendering (a missed change would leave a stale piece)."""
    original = exposition.BLOCK
    exposition.BLOCK = 64  # many blocks, so reuse and recompression both happen
    try:
        planned = paths(300)
        tracker = Tracker(k=2)
        # a status remembered from before: shown before the path's first probe here
        tracker.observe(path_key(planned[5]), Outcome(State.OPEN, 0.001), 1.0)
        for wall in (2.0, 3.0):
            tracker.observe(path_key(planned[5]), Outcome(State.FILTERED, 2.0), wall)
        lines = PathExposition()
        recorder = Recorder(tracker, [lines])
        recorder.begin_plan(planned)
        assert 'exchange_path_newly_blocked{source="src",source_site="s",target="t5.test"' in lines.render()
        for round_, batch in enumerate(scrapes):
            for index, state, rtt, twice in batch:
                spoke = state is State.OPEN
                details = (("protocol", "ok"),) if spoke else ()
                outcome = Outcome(state, rtt, "e", 1, details, 1e9 + index, spoke)
                for _ in range(1 + twice):  # twice: past the hysteresis
                    recorder.record(index, outcome, 1e9 + round_)
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
        recorder = Recorder(Tracker(), [lines])
        recorder.begin_plan([dataclasses.replace(path, source=source) for path in paths(3)])
        recorder.record(0, Outcome(State.OPEN, 0.001), 1e9)
    first.join([second])
    text = first.render()
    assert text.count("# TYPE exchange_path_up gauge") == 1
    assert 'exchange_path_up{source="src"' in text and 'exchange_path_up{source="other"' in text
    assert gzip.decompress(first.render_gzip(b"# head\n")) == b"# head\n" + text.encode()


def test_a_probe_that_confirms_the_state_renders_only_what_every_probe_changes() -> None:
    """No line is rendered while probing; a probe that finds the same state marks stale only the blocks
    of the families that change on every probe (connect time, probe time, last open), so a gzip scrape
    re-renders nothing else. A change of state marks the state and status families too."""
    lines = PathExposition()
    recorder = Recorder(Tracker(k=1), [lines])
    recorder.begin_plan(paths(3))
    recorder.record(0, Outcome(State.OPEN, 0.001), 1e9)

    def moved_by(outcome: Outcome, wall: float) -> set[str]:
        before = [list(family) for family in lines._plan.versions]
        recorder.record(0, outcome, wall)
        after = lines._plan.versions
        return {exposition.FAMILIES[n][0] for n, family in enumerate(after) if family != before[n]}

    per_probe = {"exchange_path_connect_seconds", "exchange_path_last_probe_timestamp_seconds"}
    assert moved_by(Outcome(State.OPEN, 0.002), 1e9 + 30) == per_probe | {
        "exchange_path_last_open_timestamp_seconds"
    }
    assert moved_by(Outcome(State.FILTERED, 2.0), 1e9 + 60) == per_probe | {
        "exchange_path_up",
        "exchange_path_state",
        "exchange_protocol_up",
        "exchange_path_blocked",
        "exchange_path_newly_blocked",
        "exchange_path_state_since_timestamp_seconds",
        "exchange_path_not_listening",
    }
    assert moved_by(Outcome(State.FILTERED, 2.0), 1e9 + 90) == per_probe
    newly = [line for line in lines.render().splitlines() if line.startswith("exchange_path_newly_blocked{")]
    assert [line.rsplit(" ", 1)[1] for line in newly if 'target="t0.test"' in line] == ["1"]


def test_a_remembered_pending_path_shows_its_status_lines_from_its_first_probe_in_every_encoding() -> None:
    """A path remembered as pending (its since already set: only our own errors so far) has no status
    lines until its first probe here; that probe adds them, in the gzip pieces as in the plain text."""
    planned = paths(3)
    tracker = Tracker()
    tracker.observe(path_key(planned[1]), Outcome(State.DNS_ERROR, None, "NXDOMAIN"), 1.0)
    lines = PathExposition()
    recorder = Recorder(tracker, [lines])
    recorder.begin_plan(planned)
    assert "exchange_path_state_since_timestamp_seconds" not in lines.render()
    lines.render_gzip(b"")  # every piece cached
    recorder.record(1, Outcome(State.DNS_ERROR, None, "NXDOMAIN"), 2.0)
    text = lines.render()
    assert 'exchange_path_state_since_timestamp_seconds{source="src",source_site="s",target="t1.test"' in text
    assert gzip.decompress(lines.render_gzip(b"")) == text.encode()


def test_a_reset_located_at_a_device_turns_not_listening_into_blocked_in_every_encoding() -> None:
    """A port read as not listening whose reset came from a device short of the target is a firewall
    after all: the locator's answer changes the exposition at once, gzip pieces included."""
    planned = paths(3)
    lines = PathExposition()
    recorder = Recorder(Tracker(k=1), [lines])
    recorder.begin_plan(planned)
    recorder.record(0, Outcome(State.REFUSED, 0.001, "ECONNREFUSED"), 1e9)
    assert "exchange_path_not_listening{" in lines.render()
    lines.render_gzip(b"")
    recorder._located(planned[0], Location("reset by a device at hop 1", 1, "10.0.0.1", "reset-by-device"))
    text = lines.render()
    assert "exchange_path_not_listening{" not in text
    blocked = [line for line in text.splitlines() if line.startswith("exchange_path_blocked{")]
    assert [line.rsplit(" ", 1)[1] for line in blocked if 'target="t0.test"' in line] == ["1"]
    assert gzip.decompress(lines.render_gzip(b"")) == text.encode()
    assert recorder.tracker is not None and recorder.tracker.view(0).classification.value == "never_open"
