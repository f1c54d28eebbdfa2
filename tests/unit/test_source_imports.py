"""No module imports another source's internals: a source package (mailroom/imap, mailroom/graph, ...)
imports the seam (mailroom.source) and shared modules, never another source; and outside the
composition roots, nothing imports a source package at all. A scan of every import statement."""

from __future__ import annotations

import ast
from pathlib import Path

import mailroom

PACKAGE = Path(mailroom.__file__).parent
SOURCES = ("mailroom.imap", "mailroom.graph")  # a new source package is added here
COMPOSITION_ROOTS = ("mailroom.app", "mailroom.check", "mailroom.cli")  # they wire sources in


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_sources_import_no_other_source_and_shared_code_imports_none() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        own = next((s for s in SOURCES if _in(module, s)), None)
        root = any(_in(module, r) for r in COMPOSITION_ROOTS)
        for name in sorted(_imports(path)):
            source = next((s for s in SOURCES if _in(name, s)), None)
            if source is None or source == own or root:
                continue
            problems.append(f"{module} imports {name}")
    assert not problems, problems


def test_the_scan_sees_imports() -> None:
    """The scan finds what it must refuse (so the test above can fail)."""
    assert "mailroom.imap.session" in _imports(PACKAGE / "imap" / "watcher.py")
    assert "mailroom.source.Watcher" in _imports(PACKAGE / "graph" / "watcher.py")
