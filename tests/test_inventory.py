"""The static inventory file: what loads, and the errors that name the file, the entry and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.errors import ConfigError
from exporter.inventory.model import Product, Role, Version
from exporter.inventory.static import inventory_to_dict, load_inventory, parse_inventory
from tests.lab.organisations import GOOD


def write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "inventory.yaml"
    file.write_text(text)
    return file


def test_a_valid_inventory_loads_into_the_model(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD))
    assert inv.organisation == "Contoso"
    ex01, ex10, edge = inv.servers
    assert (ex01.version.product, ex01.version.build, ex01.roles) == (
        Product.EX2019,
        (15, 2, 1544, 4),
        frozenset({Role.MAILBOX}),
    )
    assert (ex01.dag, ex01.dag_replication_port, ex01.address) == ("DAG1", 64400, "127.0.20.1")
    assert ex10.static_rpc_ports is not None and ex10.static_rpc_ports.address_book == 59532
    assert edge.is_edge and edge.primary_role == "edge" and edge.version.product is Product.SE
    dc1, rodc = inv.domain_controllers
    assert (dc1.primary_role, rodc.primary_role) == ("gc", "rodc")
    assert inv.find("EX01") is ex01 and inv.find("ex01.contoso.test.") is ex01 and inv.find("nobody") is None


def test_inventory_round_trips_through_the_file_schema(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD))
    again = parse_inventory(yaml.safe_load(yaml.safe_dump(inventory_to_dict(inv))))
    assert again.servers == inv.servers and again.domain_controllers == inv.domain_controllers


@pytest.mark.parametrize(
    ("text", "build", "product"),
    [
        ("15.2.2562.17", (15, 2, 2562, 17), Product.SE),
        ("15.2.2561.0", (15, 2, 2561, 0), Product.EX2019),
        ("15.1.2507.6", (15, 1, 2507, 6), Product.EX2016),
        ("15.0.1497.2", (15, 0, 1497, 2), Product.EX2013),
        ("14.3.123.4", (14, 3, 123, 4), Product.EX2010),
        ("se", None, Product.SE),
        ("2016", None, Product.EX2016),
    ],
)
def test_version_decoding(text: str, build: tuple[int, ...] | None, product: Product) -> None:
    version = Version.parse(text)
    assert (version.build, version.product) == (build, product)


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            lambda d: d["servers"][0].update(colour="blue"),
            "servers[0] (EX01).colour: Extra inputs are not permitted (fix: remove it",
        ),
        (
            lambda d: d["servers"][1].update(roles=["mailbox", "cas"]),
            "servers[1] (EX10).roles[1]: Input should be",
        ),
        (
            lambda d: d["servers"][0].update(version="2007"),
            "servers[0] (EX01).version: unknown Exchange version '2007'",
        ),
        (lambda d: d["servers"][0].pop("site"), "servers[0] (EX01).site: Field required (fix: add it)"),
        (
            lambda d: d["domain_controllers"][0].update(fqdn="dc 1.contoso.test"),
            "domain_controllers[0] (DC1).fqdn: must be a DNS name",
        ),
        (lambda d: d["servers"][0].update(version="16.0.1.1"), "is not an Exchange 2010-SE build"),
        (lambda d: d.update(extra=1), "extra: Extra inputs are not permitted"),
        (
            lambda d: d["servers"][2].update(fqdn="ex01.contoso.test"),
            "servers[2] (EDGE1): fqdn ex01.contoso.test is already used by servers[0]",
        ),
    ],
)
def test_invalid_inventory_names_file_entry_and_fix(
    tmp_path: Path, mutation: Callable[[dict[str, Any]], object], expected: str
) -> None:
    data = yaml.safe_load(GOOD)
    mutation(data)
    file = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_inventory(file)
    assert str(file) in str(err.value)
    assert expected in str(err.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line 4, column 1: expected ',' or ']'"):
        load_inventory(write(tmp_path, "organisation: x\nservers:\n  - name: [unclosed\n"))


def test_missing_file_and_wrong_top_level_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the inventory"):
        load_inventory(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_inventory(write(tmp_path, "- just\n- a list\n"))


def test_dags_name_their_file_share_witness_and_addresses_are_checked() -> None:
    from exporter.errors import ConfigError
    from exporter.inventory.static import inventory_to_dict, parse_inventory

    data = {
        "organisation": "O",
        "servers": [
            {
                "name": "EX1",
                "fqdn": "ex1.o.test",
                "roles": ["mailbox"],
                "version": "2019",
                "site": "S",
                "dag": "DAG1",
                "address": "10.0.0.1",
                "addresses": ["fd00::1", "10.9.0.1"],
            },
        ],
        "dags": [{"name": "DAG1", "witness": "fsw01.o.test"}],
    }
    inventory = parse_inventory(data)
    assert inventory.witnesses == (("DAG1", "fsw01.o.test"),)
    assert inventory.servers[0].addresses == ("fd00::1", "10.9.0.1")
    assert parse_inventory(inventory_to_dict(inventory)) == inventory  # round trip
    data["servers"][0]["addresses"] = ["not-an-address"]  # type: ignore[index]
    with pytest.raises(ConfigError, match="'not-an-address' is not an IPv4 or IPv6 address"):
        parse_inventory(data)
