"""Print the runtime part of requirements.lock: the entries the package needs to run, with their hashes.

requirements.lock (`make lock`, uv) pins the runtime dependencies *and* the dev extra. The container
image installs only the runtime ones, still hash-checked:

    python runtime_requirements.py --pyproject pyproject.toml --lock requirements.lock > runtime.lock
    pip install --require-hashes -r runtime.lock

The roots are `[project].dependencies` of pyproject.toml; the closure follows uv's `# via` annotations
(an entry is needed when a needed entry pulled it in). Markers are not evaluated, except that a
dependency for `sys_platform == 'win32'` alone is left out: the lock is resolved for Linux, and so is the
image. `pip install --require-hashes` without `--no-deps` then proves the
result complete: pip refuses a dependency that is not pinned with a hash in the file.

Standard library only: it runs in the image's builder stage before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
#: the one marker evaluated: a dependency for Windows only (the lock and the image are Linux's)
_WINDOWS_ONLY = re.compile(r";\s*sys_platform\s*==\s*['\"]win32['\"]\s*$")


def normalize(name: str) -> str:
    """PEP 503 name normalisation: `PyYAML`, `pyyaml` and `py_yaml` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Entry:
    name: str
    lines: list[str] = field(default_factory=list)
    parents: set[str] = field(default_factory=set)  # normalised names from `# via`


def parse_lock(text: str) -> dict[str, Entry]:
    """The lock's entries by normalised name, each with its verbatim lines and its `# via` parents."""
    entries: dict[str, Entry] = {}
    current: Entry | None = None
    in_via = False
    for line in text.splitlines():
        match = _ENTRY.match(line)
        if match:
            current = Entry(normalize(match.group(1)), [line])
            entries[current.name] = current
            in_via = False
            continue
        if not line.startswith((" ", "\t")):
            current, in_via = None, False  # the header, a blank line, or an option line: no entry's
            continue
        if current is None:
            continue
        current.lines.append(line)
        comment = line.strip()
        if comment.startswith("# via"):
            rest = comment.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.parents.add(_parent(rest))
        elif in_via and comment.startswith("#"):
            current.parents.add(_parent(comment.lstrip("#").strip()))
        elif not comment.startswith("#"):
            in_via = False
    return entries


def _parent(annotation: str) -> str:
    # `fastapi`, `exchange-firewall-exporter (pyproject.toml)`, `-r requirements.in`
    return normalize(annotation.split()[0]) if annotation else ""


def runtime_roots(pyproject: dict[str, object]) -> list[str]:
    project = pyproject.get("project")
    if not isinstance(project, dict):
        raise ValueError("pyproject.toml has no [project] table")
    roots = []
    for requirement in project.get("dependencies", []):
        match = _NAME.match(str(requirement))
        if not match:
            raise ValueError(f"cannot read the dependency {requirement!r} in pyproject.toml")
        if _WINDOWS_ONLY.search(str(requirement)):
            continue  # pywin32 for the Windows service: not in the Linux lock, not in the Linux image
        roots.append(normalize(match.group(1)))
    return roots


def closure(entries: dict[str, Entry], roots: Iterable[str]) -> list[str]:
    """Names needed at run time: the roots, then whatever a needed entry pulled in, to a fixed point."""
    needed: set[str] = set()
    missing = [root for root in roots if root not in entries]
    if missing:
        raise KeyError(f"not in the lock: {', '.join(sorted(missing))} (run `make lock`)")
    needed.update(roots)
    changed = True
    while changed:
        changed = False
        for name, entry in entries.items():
            if name not in needed and entry.parents & needed:
                needed.add(name)
                changed = True
    return sorted(needed)


def render(entries: dict[str, Entry], names: Sequence[str], source: str) -> str:
    header = [
        f"# The runtime part of {source}, derived by deploy/docker/runtime_requirements.py.",
        "# Install with: pip install --require-hashes -r THIS_FILE",
    ]
    body = [line for name in names for line in entries[name].lines]
    return "\n".join(header + body) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--lock", type=Path, default=Path("requirements.lock"))
    parser.add_argument("--names", action="store_true", help="print only the names, one a line")
    args = parser.parse_args(argv)
    try:
        entries = parse_lock(args.lock.read_text())
        roots = runtime_roots(tomllib.loads(args.pyproject.read_text()))
        names = closure(entries, roots)
    except (OSError, ValueError, KeyError, tomllib.TOMLDecodeError) as exc:
        print(f"runtime_requirements: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("\n".join(names) + "\n" if args.names else render(entries, names, args.lock.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
