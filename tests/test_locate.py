"""Locating the block: which device, how many hops away. Two routers in series between the prober and the
target (tests/lab/two_routers.py), nftables on each and on the target, IPv4 and IPv6, unprivileged TTL
probes. One line a case, as the tests see them:
- drop on the second router: silent at the target (hop 3) after hop 2, that router's address;
- drop on the target's own input: the same (a router checks the TTL before it filters, so the two cannot
  be told apart by a TTL probe: the location says both);
- drop on the first router: silent after hop 1, before the target (hop 3);
- reject with admin-prohibited on the first router: rejected by it, hop 1;
- reject with tcp reset on the first router: reset by a device at hop 1, a violation even for a path that
  never worked;
- reject with tcp reset on the second router, or the host's own RST: reset at hop 3, "the host, or a device
  at the last hop" (the received TTL would tell; an unprivileged socket cannot read it).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.probes.contract import Resolved
from exporter.probes.locate import Location, distance_to, locate
from exporter.probes.outcome import State
from tests.lab.browser import browse
from tests.lab.metrics import samples
from tests.lab.service import Service, serve_args, start_service
from tests.lab.two_routers import TwoRouterLab
from tests.lab.waiting import wait_until

pytestmark = pytest.mark.netns

OPEN, PROBED, CLOSED = 8001, 8002, 8099
HOSTS_MARK = "# exchange-firewall-exporter test_locate"
REPO = Path(__file__).resolve().parents[1]
CHECK = [sys.executable, "-m", "exporter", "check", "--probe.connect-only", "--output", "json"]
CHECK += ["--no-locate.reverse-dns"]


@pytest.fixture(scope="module")
def routers() -> Iterator[TwoRouterLab]:
    lab = TwoRouterLab().up()
    lab.listen(OPEN, PROBED, 445, 25)
    yield lab
    lab.down()


@pytest.fixture
def lab(routers: TwoRouterLab) -> Iterator[TwoRouterLab]:
    routers.flush()
    yield routers
    routers.flush()


def where(lab: TwoRouterLab, family: str, port: int, state: State) -> Location:
    resolved = Resolved(socket.AF_INET6, lab.dst6) if family == "ipv6" else Resolved(socket.AF_INET, lab.dst4)

    async def run() -> Location:
        distance = await distance_to(resolved, OPEN, timeout=0.8)
        assert distance == 3
        return await locate(resolved, port, state, distance=distance, open_port=OPEN, timeout=0.8)

    return asyncio.run(run())


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_drop_on_the_second_router_is_silent_after_it(lab: TwoRouterLab, family: str) -> None:
    lab.block("r2", f"tcp dport {PROBED} drop")
    found = where(lab, family, PROBED, State.FILTERED)
    r2 = lab.router(2, family)
    assert (found.verdict, found.hop, found.device) == ("dropped", 2, r2)
    assert found.how == (
        f"silent at the target (hop 3) after hop 2 ({r2}): dropped by that last router or by the target's "
        "own host firewall"
    )
    assert [(h.ttl, h.answer, h.address) for h in found.hops] == [
        (1, "time-exceeded", lab.router(1, family)),
        (2, "time-exceeded", r2),
        (3, "silent", None),
    ]


def test_a_drop_on_the_target_itself_is_silent_at_its_distance(lab: TwoRouterLab) -> None:
    lab.block("dst", f"tcp dport {PROBED} drop")
    found = where(lab, "ipv4", PROBED, State.FILTERED)
    assert (found.verdict, found.hop, found.device) == ("dropped", 2, lab.router(2))
    assert found.how.startswith("silent at the target (hop 3)")


def test_a_drop_on_the_first_router_is_before_the_target(lab: TwoRouterLab) -> None:
    lab.block("r1", f"tcp dport {PROBED} drop")
    found = where(lab, "ipv4", PROBED, State.FILTERED)
    assert (found.verdict, found.hop, found.device) == ("dropped", 1, lab.router(1))
    assert (
        found.how
        == f"silent after hop 1 ({lab.router(1)}): dropped there or beyond, before the target (hop 3)"
    )


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_an_admin_prohibited_reject_names_the_rejecting_router(lab: TwoRouterLab, family: str) -> None:
    lab.block("r1", f"tcp dport {PROBED} reject with icmpx admin-prohibited")
    found = where(lab, family, PROBED, State.UNREACHABLE)
    r1 = lab.router(1, family)
    assert (found.verdict, found.hop, found.device) == ("rejected", 1, r1)
    assert found.how == f"rejected by {r1} (hop 1, admin-prohibited)"
    assert found.by_device


def test_a_reset_from_the_first_router_is_a_device_not_the_host(lab: TwoRouterLab) -> None:
    lab.block("r1", f"tcp dport {PROBED} reject with tcp reset")
    found = where(lab, "ipv4", PROBED, State.REFUSED)
    assert (found.verdict, found.hop, found.device) == ("reset-by-device", 1, lab.router(1))
    assert found.how == f"reset by a device at hop 1 ({lab.router(1)}), before the target (hop 3)"
    assert found.by_device


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_with_cap_net_raw_the_reset_s_ttl_tells_the_last_router_from_the_host(
    lab: TwoRouterLab, family: str
) -> None:
    """Root (CAP_NET_RAW): a raw socket sees the reset's TTL. The host's own reset (nothing listens on
    CLOSED) comes with the TTL of its SYN-ACKs; the second router's comes one hop fresher: a device."""
    host = where(lab, family, CLOSED, State.REFUSED)
    assert (host.verdict, host.hop, host.by_device) == ("reset-by-host", 3, False)
    assert host.how.startswith("reset by the host itself at hop 3")
    lab.block("r2", f"tcp dport {PROBED} reject with tcp reset")
    device = where(lab, family, PROBED, State.REFUSED)
    r2 = lab.router(2, family)
    assert (device.verdict, device.hop, device.device, device.by_device) == ("reset-by-device", 2, r2, True)
    assert device.how.startswith(f"reset by a device at hop 2 ({r2}), not the host")


def test_without_cap_net_raw_a_reset_at_the_target_s_distance_is_never_guessed(lab: TwoRouterLab) -> None:
    """The same two resets, measured by a process without CAP_NET_RAW (setpriv drops it): both read
    "the host, or a device at the last hop", and no device is blamed."""
    lab.block("r2", f"tcp dport {PROBED} reject with tcp reset")
    script = (
        "import asyncio, json, socket, sys\n"
        "from exporter.probes.contract import Resolved\n"
        "from exporter.probes.locate import locate, raw_socket\n"
        "from exporter.probes.outcome import State\n"
        "assert raw_socket(socket.AF_INET) is None  # the capability really is gone\n"
        f"target = Resolved(socket.AF_INET, {lab.dst4!r})\n"
        "out = []\n"
        f"for port in ({PROBED}, {CLOSED}):\n"
        f"    where = asyncio.run(locate(target, port, State.REFUSED, distance=3, open_port={OPEN}))\n"
        "    out.append([where.verdict, where.hop, where.device])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["reset-host-or-last-hop", 3, None]] * 2


# ---- the running service: the location in the API, the metrics and the check output ---------------------


@pytest.fixture
def hosts_names(routers: TwoRouterLab) -> Iterator[dict[str, str]]:
    """Names for the routers in /etc/hosts (reverse DNS answered locally, never by a resolver elsewhere)."""
    names = {routers.router(1): "fw-edge-01.lab.test", routers.router(2): "fw-core-01.lab.test"}
    hosts = Path("/etc/hosts")
    original = hosts.read_text()
    hosts.write_text(original + "".join(f"{a} {n} {HOSTS_MARK}\n" for a, n in names.items()))
    yield names
    hosts.write_text(original)


def organisation(lab: TwoRouterLab) -> dict[str, Any]:
    server = {"roles": ["mailbox"], "version": "2019", "site": "HQ"}
    return {
        "organisation": "Routed",
        "servers": [
            {"name": "EX0", "fqdn": "ex0.lab.test", "address": lab.v4(1, 1), **server},
            {"name": "EX1", "fqdn": "ex1.lab.test", "address": lab.dst4, **server},
        ],
    }


def smb_row(svc: Service) -> dict[str, Any]:
    rows: list[dict[str, Any]] = svc.get("/api/v1/paths", params={"target": "ex1.lab.test"}).json()
    return next(r for r in rows if r["port"] == 445)


def test_the_service_locates_a_newly_blocked_path_and_forgets_it_when_it_reopens(
    lab: TwoRouterLab, hosts_names: dict[str, str], tmp_path: Path
) -> None:
    file = tmp_path / "org.yaml"
    file.write_text(yaml.safe_dump(organisation(lab)))
    args = serve_args(
        file, source="ex0.lab.test", interval=3, timeout=0.5, confirm_delay=0.3, connect_only=True
    )
    args.remove("--no-locate.reverse-dns")  # named from /etc/hosts here
    svc = start_service(args)
    try:
        wait_until(lambda: smb_row(svc)["status"] == "open", timeout=30)
        lab.block("r2", "tcp dport 445 drop")
        wait_until(lambda: smb_row(svc)["location"] is not None, timeout=60)
        location = smb_row(svc)["location"]
        assert smb_row(svc)["classification"] == "newly_blocked"
        assert (location["hop"], location["device"], location["verdict"]) == (2, lab.router(2), "dropped")
        assert location["device_name"] == "fw-core-01.lab.test"
        assert location["how"].startswith("silent at the target (hop 3) after hop 2")
        info = {
            dict(key)["port"]: dict(key)
            for key, number in samples(svc, "exchange_path_block_location_info").items()
            if number == 1.0
        }
        assert (info["445"]["hop"], info["445"]["device"], info["445"]["device_name"]) == (
            "2",
            lab.router(2),
            "fw-core-01.lab.test",
        )
        matrix = svc.get("/matrix", params={"scope": "local"}).text
        assert "where: silent at the target (hop 3) after hop 2" in matrix
        changes = svc.get("/api/v1/changes").json()
        (change,) = [c for c in changes if c["to_status"] == "blocked" and "|445|" in c["path"]]
        assert change["location"]["device"] == lab.router(2)  # the change log says where, too
        # the page as a person sees it (the README's picture of a located block)
        (REPO / "artifacts").mkdir(exist_ok=True)
        shot = REPO / "artifacts" / "matrix-located.png"
        shot.unlink(missing_ok=True)
        dom = browse(svc.base + "/matrix?scope=local", tmp_path)
        assert "where: silent at the target (hop 3) after hop 2" in dom and "fw-core-01.lab.test" in dom
        browse(svc.base + "/matrix?scope=local", tmp_path, screenshot=shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        lab.flush()
        wait_until(lambda: smb_row(svc)["status"] == "open", timeout=30)
        assert smb_row(svc)["location"] is None  # reopened: the location (and its series) is gone
        assert "445" not in {dict(k)["port"] for k in samples(svc, "exchange_path_block_location_info")}
    finally:
        svc.stop()


def test_check_names_the_device_after_a_firewall_change(lab: TwoRouterLab, tmp_path: Path) -> None:
    file = tmp_path / "org.yaml"
    file.write_text(yaml.safe_dump(organisation(lab)))
    lab.block("r1", "tcp dport 445 reject with icmpx admin-prohibited")
    done = subprocess.run(
        [*CHECK, "--inventory", str(file), "--source", "ex0.lab.test", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    smb = next(r for r in json.loads(done.stdout) if r["port"] == 445 and r["target"] == "ex1.lab.test")
    assert smb["state"] == "unreachable"
    assert smb["location"]["how"] == f"rejected by {lab.router(1)} (hop 1, admin-prohibited)"
