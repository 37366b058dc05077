"""The pipeline's shape, read from the source: every import runs down the stages, and no module imports
itself back through others (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "exporter"

#: the pipeline, in order: a stage may import its own and earlier stages, never a later one
STAGES = ("inventory", "plan", "probes", "engine", "state", "outputs")
#: leaf modules every stage may use (errors, safe text, the version, OS-visible thread names)
SHARED = {"exporter", "exporter.errors", "exporter.text", "exporter.threads"}


def module_name(file: Path) -> str:
    parts = file.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(file: Path, package: str | None = None) -> set[str]:
    """Every exporter module `file` imports, at module level or inside a function."""
    tree = ast.parse(file.read_text(), str(file))
    found: set[str] = set()
    if package is None:
        package = module_name(file).rsplit(".", 1)[0] if file.name != "__init__.py" else module_name(file)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("exporter"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if not base.startswith("exporter"):
                continue
            for alias in node.names:  # `from exporter.probes import tcp` imports the module tcp
                candidate = f"{base}.{alias.name}"
                found.add(candidate if module_file(candidate) is not None else base)
    return found


def module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def stage_of(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return STAGES.index(parts[1])
    return None


def graph() -> dict[str, set[str]]:
    return {module_name(f): imports_of(f) for f in sorted(PACKAGE.rglob("*.py"))}


def test_the_stages_are_the_package_folders() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(STAGES) <= folders
    assert folders - set(STAGES) == {"commands"}  # the commands sit with the composition root


def backward_imports(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported in edges.items():
        stage = stage_of(module)
        if stage is None:
            continue  # the composition root (cli, settings, compose, commands, demo) may import anything
        for name in sorted(imported):
            other = stage_of(name)
            if other is None and name not in SHARED:
                wrong.append(f"{module} -> {name} (the composition root)")
            elif other is not None and other > stage:
                wrong.append(f"{module} -> {name} ({STAGES[stage]} imports {STAGES[other]})")
    return wrong


def test_no_module_imports_a_later_stage_or_the_composition_root() -> None:
    assert backward_imports(graph()) == []


def test_there_are_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in edges or other == node:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_checker_sees_a_backward_import(tmp_path: Path) -> None:
    """The rule can fail: a probe importing the engine (even inside a function), or the settings, is found."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from . import tcp\n"
        "def late():\n    from exporter.engine.scheduler import Engine\n    from exporter import settings\n"
    )
    found = imports_of(probe, package="exporter.probes")
    assert found == {"exporter.probes.tcp", "exporter.engine.scheduler", "exporter.settings"}
    assert backward_imports({"exporter.probes.fake": found}) == [
        "exporter.probes.fake -> exporter.engine.scheduler (probes imports engine)",
        "exporter.probes.fake -> exporter.settings (the composition root)",
    ]


def test_no_test_file_imports_another_test_file() -> None:
    offenders = []
    for file in sorted((REPO / "tests").glob("test_*.py")):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.test_"):
                offenders.append(f"{file.name}: {node.module}")
    assert offenders == []
