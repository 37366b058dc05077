"""Sample Exchange organisations, as the inventory file's dictionaries (or YAML text) the tests load.

GOOD: a small organisation with every kind of member (2019 Mailbox in a DAG, 2010 CAS+Hub, Edge, GC, RODC).
loopback_org: servers EX1.. and DC1 on loopback addresses of a test's own.
routed_lab_org: one Exchange 2019 server, EX1, on the routed lab's target (listening on EX1_PORTS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.lab.netns import RoutedLab

# what an Exchange 2019 Mailbox server outside a DAG answers on from another Exchange server
EX1_PORTS = (25, 80, 81, 135, 139, 443, 444, 445, 465, 475, 587, 717, 808, 2525, 64337)

GOOD = """
organisation: Contoso
servers:
  - name: EX01
    fqdn: ex01.contoso.test
    address: 127.0.20.1
    roles: [mailbox]
    version: "15.2.1544.4"
    site: HQ
    dag: DAG1
    dag_replication_port: 64400
  - name: EX10
    fqdn: ex10.contoso.test
    roles: [clientaccess, hubtransport]
    version: "2010"
    site: Branch
    static_rpc_ports: {rpc_client_access: 59531, address_book: 59532}
  - name: EDGE1
    fqdn: edge1.dmz.test
    roles: [edge]
    version: SE
    site: HQ
domain_controllers:
  - name: DC1
    fqdn: dc1.contoso.test
    site: HQ
    global_catalog: true
  - name: RODC1
    fqdn: rodc1.contoso.test
    site: Branch
    read_only: true
"""


def loopback_org(address: str, servers: int = 3) -> dict[str, Any]:
    """Mailbox servers EX1..EXn at `address`1..n (ex1.loop.test, ...) and a GC, DC1, at `address`9; all in
    site S. `address` is a prefix such as "127.0.31."."""
    return {
        "organisation": "Loopback",
        "servers": [
            {
                "name": f"EX{i}",
                "fqdn": f"ex{i}.loop.test",
                "address": f"{address}{i}",
                "roles": ["mailbox"],
                "version": "2019",
                "site": "S",
            }
            for i in range(1, servers + 1)
        ],
        "domain_controllers": [
            {
                "name": "DC1",
                "fqdn": "dc1.loop.test",
                "address": f"{address}9",
                "site": "S",
                "global_catalog": True,
            }
        ],
    }


def routed_lab_org(lab: RoutedLab) -> dict[str, Any]:
    """EX1 (ex1.lab.test, site Branch) at the routed lab's target address, behind its firewall."""
    return {
        "organisation": "Lab",
        "servers": [
            {
                "name": "EX1",
                "fqdn": "ex1.lab.test",
                "address": lab.dst4,
                "roles": ["mailbox"],
                "version": "2019",
                "site": "Branch",
            },
        ],
    }
