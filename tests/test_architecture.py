"""ARCHITECTURE.md's "who may import whom" block, enforced on the package's source."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from .support import REPO

PACKAGE = REPO / "src" / "inline_state"


def _rules() -> dict[str, set[str]]:
    text = (REPO / "ARCHITECTURE.md").read_text()
    match = re.search(r"```imports\n(.*?)```", text, re.S)
    assert match, "ARCHITECTURE.md has no ```imports block"
    rules: dict[str, set[str]] = {}
    for line in match.group(1).splitlines():
        module, _, allowed = line.partition(":")
        rules[module.strip()] = set(allowed.split())
    return rules


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "inline_state"


def _imports(path: Path) -> set[str]:
    """What a module imports at run time: package modules by name, libraries as lib:x."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(sub) for sub in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add("lib:" + node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update("lib:" + alias.name.split(".")[0] for alias in node.names)
    return {
        item
        for item in found
        if not (item.startswith("lib:") and item[4:] in sys.stdlib_module_names | {"__future__"})
    }


def test_every_module_imports_only_what_architecture_allows() -> None:
    rules = _rules()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name == "inline_state":
            continue  # the package re-exports everything
        if name not in rules:
            problems.append(f"{name} is not in ARCHITECTURE.md's imports block")
            continue
        extra = _imports(path) - rules[name]
        if extra:
            problems.append(f"{name} imports {sorted(extra)}, which ARCHITECTURE.md does not allow")
    assert not problems, "\n".join(problems)


def test_adapters_never_import_each_other_and_stores_never_reach_up() -> None:
    rules = _rules()
    adapters = {"_server", "_client", "_rest"}
    for adapter in adapters:
        assert not rules[adapter] & (adapters - {adapter}), adapter
    for name, allowed in rules.items():
        if name.startswith("stores"):
            assert not allowed & {"lib:aiohttp", "_engine", "_diff", "_server", "_http"}, name
