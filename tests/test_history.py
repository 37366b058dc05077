"""The mesh from Prometheus: reading `?at=`, the settings, rows from the query's series, and credentials
against a real Prometheus that asks for them."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from exporter.outputs import history
from exporter.outputs.history import PrometheusMesh, PrometheusSettings, QueryError
from tests.conftest import free_port
from tests.lab.monitoring import Process, binary
from tests.lab.waiting import wait_until


def test_at_reads_unix_times_and_rfc3339() -> None:
    assert history.parse_at("1796436840") == 1796436840.0
    assert history.parse_at("1796436840.5") == 1796436840.5
    ten_past_two = dt.datetime(2026, 12, 5, 2, 10, tzinfo=dt.UTC).timestamp()
    assert history.parse_at("2026-12-05T02:10:00Z") == ten_past_two
    assert history.parse_at("2026-12-05T03:10:00+01:00") == ten_past_two
    assert history.parse_at("2026-12-05T02:10") == ten_past_two  # no zone: UTC, as the page sends it
    for bad in ("yesterday", "", "nan", "-5", "1e20", "2026-13-45T00:00:00Z"):
        with pytest.raises(ValueError):
            history.parse_at(bad)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (PrometheusSettings(url="ftp://p:9090"), "not an http(s) URL"),
        (PrometheusSettings(url="http://u:secret@p:9090"), "must not carry user:password"),
        (PrometheusSettings(url="http://p:9090", selector="job"), "label matchers"),
        (PrometheusSettings(url="http://p:9090", selector='job="a"} or vector(1)'), "label matchers"),
        (PrometheusSettings(url="http://p:9090", lookback="10 minutes"), "duration"),
    ],
)
def test_bad_settings_are_named(settings: PrometheusSettings, problem: str) -> None:
    said = history.check_settings(settings)
    assert said is not None and problem in said
    assert "secret" not in said


def test_good_settings_pass() -> None:
    good = PrometheusSettings(url="https://p:9090/prom", selector='job="x", site=~"a,b"', lookback="15m")
    assert history.check_settings(good) is None
    query = history.mesh_query(good)
    assert 'last_over_time(exchange_path_state{job="x", site=~"a,b"}[15m]) == 1' in query
    assert query.count("label_replace(") == 10  # one query, ten legs


def series(what: str, value: float, **labels: str) -> dict[str, Any]:
    path = {
        "source": "ex1.x",
        "source_site": "A",
        "target": "ex2.x",
        "target_site": "B",
        "target_role": "mailbox",
        "port": "2525",
        "proto": "tcp",
        "service": "smtp-transport",
        "kind": "exchange-exchange",
        "instance": "10.0.0.1:10135",
        "job": "j",
    }
    return {"metric": {**path, **labels, "ef_what": what}, "value": [1796443800.0, str(value)]}


def test_rows_and_changes_from_the_series() -> None:
    now = 1796443800.0
    result = [
        series("state", 1, state="filtered"),
        series("blocked", 1),
        series("newly", 1),
        series("since", now - 600),
        series("probed", now - 1),
        series("location", 1, verdict="dropped", hop="2", device="10.1.2.1", device_name="fw.x"),
        series("state", 1, state="open", port="25", service="smtp"),
        series("rtt", 0.0012, port="25", service="smtp"),
        series("since", now - 300, port="25", service="smtp"),
        series("was_blocked", 1, port="25", service="smtp"),
        series("state", 1, state="refused", port="2526"),
        series("blocked", 1, port="2526"),
        series("silent", 1, port="2526"),
        {"metric": {"ef_what": "up", "instance": "10.0.0.1:10135"}, "value": [now, "0"]},
        {"metric": {"ef_what": "state"}, "value": [now, "1"]},  # no path labels: ignored
        {"metric": "junk", "value": None},  # not a series: ignored
    ]
    view = history.build_view(result, now, 86400)
    rows = {row["port"]: row for row in view.rows}
    assert set(rows) == {2525, 25, 2526}
    blocked = rows[2525]
    assert (blocked["state"], blocked["status"], blocked["classification"]) == (
        "filtered",
        "blocked",
        "newly_blocked",
    )
    assert blocked["location"]["how"] == "silent after hop 2 (10.1.2.1): dropped there or beyond"
    assert blocked["location"]["device_name"] == "fw.x" and blocked["agent_up"] is False
    assert rows[25]["classification"] == "recovered" and rows[25]["rtt_seconds"] == 0.0012
    assert rows[2526]["classification"] == "not_listening" and rows[2526]["blocked"] is False
    assert [(c["path"].split("|")[2], c["from_status"], c["to_status"]) for c in view.changes] == [
        ("25", "blocked", "open"),
        ("2525", "open", "blocked"),
    ]
    assert view.agents_down == {"10.0.0.1:10135": view.agents_down["10.0.0.1:10135"]}


def status_of(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0


def test_credentials_against_a_real_prometheus_that_asks_for_them(tmp_path: Path) -> None:
    password = "s3cret-Pr0m"
    web = {"basic_auth_users": {"viewer": bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}}
    (tmp_path / "web.yml").write_text(yaml.safe_dump(web))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "15s"}}))
    port = free_port()
    process = Process(
        [
            binary("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={tmp_path / 'web.yml'}",
        ],
        tmp_path / "prometheus.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        right, wrong = tmp_path / "right", tmp_path / "wrong"
        right.write_text(password + "\n")
        wrong.write_text("not-it\n")
        wait_until(lambda: status_of(url + "/-/healthy") == 401, timeout=30)  # up, and asks for a password
        view = asyncio.run(
            PrometheusMesh(PrometheusSettings(url=url, username="viewer", password_file=str(right))).view()
        )
        assert view.rows == [] and view.changes == []  # it scrapes no agent: an empty mesh, not an error
        with pytest.raises(QueryError) as refused:
            asyncio.run(
                PrometheusMesh(
                    PrometheusSettings(url=url, username="viewer", password_file=str(wrong))
                ).view()
            )
        assert "401" in str(refused.value) and password not in str(refused.value)
        token = tmp_path / "token"
        token.write_text("tok-3f9a\n")
        with pytest.raises(QueryError) as bearer:
            asyncio.run(PrometheusMesh(PrometheusSettings(url=url, bearer_token_file=str(token))).view())
        assert "401" in str(bearer.value) and "tok-3f9a" not in str(bearer.value)
    finally:
        process.stop()


def test_an_unreachable_prometheus_is_an_error_of_its_own() -> None:
    port = free_port()
    mesh = PrometheusMesh(PrometheusSettings(url=f"http://127.0.0.1:{port}", timeout=2))
    with pytest.raises(QueryError, match="ConnectError"):
        asyncio.run(mesh.view())
