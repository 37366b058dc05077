"""The static YAML inventory file: schema, validation with errors that name the entry, and loading."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from exporter.errors import ConfigError
from exporter.inventory.model import (
    DomainController,
    Inventory,
    Role,
    Server,
    StaticRpcPorts,
    Version,
    neutralise,
)

log = logging.getLogger(__name__)

MAX_INVENTORY_BYTES = 16 * 1024 * 1024

_HOSTNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaticRpcPortsFile(_Strict):
    rpc_client_access: int | None = Field(default=None, ge=1, le=65535)
    address_book: int | None = Field(default=None, ge=1, le=65535)


def _check_hostname(value: str) -> str:
    if not value or len(value) > 253 or not set(value) <= _HOSTNAME_CHARS:
        raise ValueError("must be a DNS name: letters, digits, '-', '.', at most 253 characters")
    return value


def _check_addresses(value: list[str]) -> list[str]:
    for address in value:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IPv4 or IPv6 address") from None
    if len(value) > 8:
        raise ValueError("at most 8 further addresses a member")
    return value


class ServerFile(_Strict):
    name: str = Field(min_length=1, max_length=64)
    fqdn: str
    address: str | None = None
    addresses: list[str] = Field(default_factory=list)
    roles: list[Literal["mailbox", "clientaccess", "hubtransport", "frontendtransport", "edge", "um"]] = (
        Field(min_length=1)
    )
    version: str
    site: str = Field(min_length=1, max_length=128)
    static_rpc_ports: StaticRpcPortsFile | None = None
    dag: str | None = None
    dag_replication_port: int | None = Field(default=None, ge=1, le=65535)

    _fqdn = field_validator("fqdn")(_check_hostname)
    _addresses = field_validator("addresses")(_check_addresses)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> str:
        text = str(value)
        try:
            Version.parse(text)
        except ConfigError as exc:  # pydantic reports ValueErrors with their location
            raise ValueError(str(exc)) from None
        return text


class DomainControllerFile(_Strict):
    name: str = Field(min_length=1, max_length=64)
    fqdn: str
    address: str | None = None
    addresses: list[str] = Field(default_factory=list)
    site: str = Field(min_length=1, max_length=128)
    global_catalog: bool = False
    read_only: bool = False

    _fqdn = field_validator("fqdn")(_check_hostname)
    _addresses = field_validator("addresses")(_check_addresses)


class DagFile(_Strict):
    name: str = Field(min_length=1, max_length=64)
    witness: str  # the file share witness server (msExchFileShareWitness's host)

    _witness = field_validator("witness")(_check_hostname)


class InventoryFile(_Strict):
    organisation: str = Field(min_length=1, max_length=256)
    servers: list[ServerFile] = Field(default_factory=list)
    domain_controllers: list[DomainControllerFile] = Field(default_factory=list)
    dags: list[DagFile] = Field(default_factory=list)


_FIXES = {
    "extra_forbidden": "remove it or check its spelling; allowed keys are listed in the README",
    "missing": "add it",
    "literal_error": "use one of the listed values",
}


def _describe(error: Any, data: Any) -> str:
    """One validation error as `servers[2] (ex03): roles: ... (fix: ...)`."""
    loc = list(error["loc"])
    where: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            where[-1] = f"{where[-1]}[{part}]"
            try:
                entry = node[part]
                name = entry.get("name") if isinstance(entry, dict) else None
                if name:
                    where[-1] += f" ({name})"
                node = entry
            except (IndexError, KeyError, TypeError):
                node = None
        else:
            where.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    message = error["msg"].removeprefix("Value error, ")
    fix = _FIXES.get(error["type"])
    text = f"{'.'.join(where) or '(top level)'}: {message}"
    return f"{text} (fix: {fix})" if fix else text


def parse_inventory(data: Any, origin: str = "<inventory>") -> Inventory:
    """Validate an already-parsed YAML/JSON document and build the Inventory model."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin}: the inventory must be a mapping with 'organisation', 'servers', 'domain_controllers'",
            fix="see the example inventory in the README",
        )
    try:
        parsed = InventoryFile.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, data) for err in exc.errors()]
        raise ConfigError(f"{origin}: invalid inventory:\n  " + "\n  ".join(lines)) from None
    return _to_model(parsed, origin)


def _to_model(parsed: InventoryFile, origin: str) -> Inventory:
    seen: dict[str, str] = {}
    servers = []
    for index, entry in enumerate(parsed.servers):
        key = entry.fqdn.lower()
        if key in seen:
            raise ConfigError(
                f"{origin}: servers[{index}] ({entry.name}): fqdn {entry.fqdn} is already used by "
                f"{seen[key]}",
                fix="each member needs its own fqdn",
            )
        seen[key] = f"servers[{index}]"
        version = Version.parse(entry.version)
        rpc = entry.static_rpc_ports
        servers.append(
            Server(
                name=entry.name,
                fqdn=entry.fqdn,
                roles=frozenset(Role(role) for role in entry.roles),
                version=version,
                site=entry.site,
                address=entry.address,
                addresses=tuple(entry.addresses),
                static_rpc_ports=StaticRpcPorts(rpc.rpc_client_access, rpc.address_book) if rpc else None,
                dag=entry.dag,
                dag_replication_port=entry.dag_replication_port,
            )
        )
    dcs = []
    for index, dc in enumerate(parsed.domain_controllers):
        key = dc.fqdn.lower()
        if key in seen:
            raise ConfigError(
                f"{origin}: domain_controllers[{index}] ({dc.name}): fqdn {dc.fqdn} is already used by "
                f"{seen[key]}",
                fix="each member needs its own fqdn",
            )
        seen[key] = f"domain_controllers[{index}]"
        dcs.append(
            DomainController(
                name=dc.name,
                fqdn=dc.fqdn,
                site=dc.site,
                global_catalog=dc.global_catalog,
                read_only=dc.read_only,
                address=dc.address,
                addresses=tuple(dc.addresses),
            )
        )
    witnesses = tuple((dag.name, dag.witness) for dag in parsed.dags)
    return neutralise(
        Inventory(
            parsed.organisation, tuple(servers), tuple(dcs), source=f"file:{origin}", witnesses=witnesses
        )
    )


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory file; every problem is a ConfigError naming the file."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_INVENTORY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"{file}: cannot read the inventory: {exc.strerror}", fix="check the path"
        ) from None
    if len(raw) > MAX_INVENTORY_BYTES:
        raise ConfigError(f"{file}: larger than {MAX_INVENTORY_BYTES} bytes", fix="is this the right file?")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{file}: not valid YAML{where}: {problem}", fix="fix the YAML syntax") from None
    inventory = parse_inventory(data, str(file))
    for warning in inventory.warnings:
        log.warning("%s: %s", file, warning)
    return inventory


def inventory_to_dict(inventory: Inventory) -> dict[str, Any]:
    """The inventory in the static file's own schema (what `discover --output yaml` prints)."""
    servers = []
    for s in inventory.servers:
        entry: dict[str, Any] = {
            "name": s.name,
            "fqdn": s.fqdn,
            "roles": sorted(role.value for role in s.roles),
            "version": str(s.version),
            "site": s.site,
        }
        if s.address:
            entry["address"] = s.address
        if s.addresses:
            entry["addresses"] = list(s.addresses)
        if s.static_rpc_ports:
            entry["static_rpc_ports"] = {
                k: v
                for k, v in (
                    ("rpc_client_access", s.static_rpc_ports.rpc_client_access),
                    ("address_book", s.static_rpc_ports.address_book),
                )
                if v is not None
            }
        if s.dag:
            entry["dag"] = s.dag
        if s.dag_replication_port:
            entry["dag_replication_port"] = s.dag_replication_port
        servers.append(entry)
    dcs = []
    for d in inventory.domain_controllers:
        dc: dict[str, Any] = {
            "name": d.name,
            "fqdn": d.fqdn,
            "site": d.site,
            "global_catalog": d.global_catalog,
            "read_only": d.read_only,
        }
        if d.address:
            dc["address"] = d.address
        if d.addresses:
            dc["addresses"] = list(d.addresses)
        dcs.append(dc)
    data: dict[str, Any] = {
        "organisation": inventory.organisation,
        "servers": servers,
        "domain_controllers": dcs,
    }
    if inventory.witnesses:
        data["dags"] = [{"name": dag, "witness": host} for dag, host in inventory.witnesses]
    return data
