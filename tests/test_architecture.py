"""The import rule between the packages (docs/architecture.md has the picture).

- ``mailjournal/`` (the shared core) imports no stage, not the audit and not the dev tools;
- ``schemas/`` imports nothing of ours but itself;
- a stage (ingest, journal_worker, delivery, relay) imports no other stage;
- nothing imports ``devtools`` but the dev tools themselves (``mailjournal/cli.py`` names them
  by string, which is fine: it is the one place that dispatches to every command), tests and bench;
- nothing imports ``audit`` but the audit itself (the CLI, by string) and tests.

Every import counts, those inside functions and under ``TYPE_CHECKING`` too: a lazy import is
still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE = "mailjournal"
SCHEMAS = "schemas"
STAGES = frozenset({"ingest", "journal_worker", "delivery", "relay", "evidence"})
AUDIT = "audit"
DEVTOOLS = "devtools"
PACKAGES = (CORE, SCHEMAS, *sorted(STAGES), AUDIT, DEVTOOLS)
OURS = frozenset(PACKAGES)


@dataclass(frozen=True)
class Import:
    path: Path  # the importing module, relative to the repository
    line: int
    target: str  # the imported module, absolute
    names: tuple[str, ...] = ()  # of ``from target import ...``

    @property
    def package(self) -> str:
        return self.path.parts[0]

    @property
    def target_package(self) -> str:
        return self.target.split(".")[0]

    def __str__(self) -> str:
        statement = (
            f"from {self.target} import {', '.join(self.names)}"
            if self.names
            else f"import {self.target}"
        )
        return f"{self.path}:{self.line}: {statement}"


def _module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ROOT) -> Iterator[Import]:
    """Every import statement of the module at ``path`` (under ``root``), resolved."""
    rel = path.relative_to(root)
    module = _module_name(rel)
    is_package = rel.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 more
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield Import(rel, node.lineno, target, tuple(a.name for a in node.names))


def modules() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def why_forbidden(imp: Import) -> str | None:
    """The rule ``imp`` breaks, or None."""
    src, dst = imp.package, imp.target_package
    if src == dst or dst not in OURS:
        return None
    if dst == DEVTOOLS:
        return "only the dev tools, tests and bench import devtools"
    if dst == AUDIT:
        return "only the CLI (by name) and tests import the audit"
    if src == CORE and dst in STAGES:
        return "the shared core imports no stage, audit or dev tool"
    if src == SCHEMAS:
        return "schemas imports nothing of ours but schemas"
    if src in STAGES and dst in STAGES:
        return "a stage imports no other stage"
    return None


def test_the_import_rule_holds() -> None:
    found = modules()
    assert {p.relative_to(ROOT).parts[0] for p in found} == set(PACKAGES)
    imports = [imp for path in found for imp in imports_of(path)]
    violations = [f"{imp}  ({why})" for imp in imports if (why := why_forbidden(imp))]
    if violations:
        pytest.fail(
            "import rule broken (docs/architecture.md):\n" + "\n".join(violations), pytrace=False
        )


def test_the_rule_sees_every_kind_of_import(tmp_path: Path) -> None:
    # the checker itself: lazy, TYPE_CHECKING and relative imports are all dependencies
    probe = tmp_path / "mailjournal" / "probe.py"
    probe.parent.mkdir()
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from delivery.worker import DeliveryWorker\n"
        "def f():\n"
        "    import devtools.capture\n"
        "from .config import Config\n"
        "from . import kafka\n",
        encoding="utf-8",
    )
    imports = sorted(imports_of(probe, tmp_path), key=lambda i: i.line)
    found = [(i.line, i.target, why_forbidden(i)) for i in imports]
    assert found == [
        (1, "typing", None),
        (3, "delivery.worker", "the shared core imports no stage, audit or dev tool"),
        (5, "devtools.capture", "only the dev tools, tests and bench import devtools"),
        (6, "mailjournal.config", None),
        (7, "mailjournal", None),
    ]
    assert [str(i) for i in imports[2:]] == [
        "mailjournal/probe.py:5: import devtools.capture",
        "mailjournal/probe.py:6: from mailjournal.config import Config",
        "mailjournal/probe.py:7: from mailjournal import kafka",
    ]
