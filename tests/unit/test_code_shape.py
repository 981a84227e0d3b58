"""The house rules that are about the code itself: no import cycle, small classes and functions,
a reason on every suppression, and the architecture
doc's room diagram equal to the import contracts.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("daemon", "streams", "models")
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 250, 60


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, from the AST: every import statement
    anywhere in the file (function-level ones included), relative imports
    resolved, ``from m import name`` pointing at ``m.name`` when that is a module."""
    files = {
        module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            else:
                continue
            for target in targets:
                while (
                    target and target not in files
                ):  # `import a.b.c` of a package: its nearest module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def late():\n    from . import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import something\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_cycle_among_the_projects_modules() -> None:
    graph = import_graph(REPO, PACKAGES)
    assert len(graph) > 50 and graph["daemon.app"], "the graph was not built"
    assert cycles(graph) == []


def _sizes(path: Path) -> Iterable[tuple[str, str, int, int]]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            yield type(node).__name__, node.name, node.end_lineno - node.lineno + 1, limit


def test_no_class_over_250_lines_and_no_function_over_60() -> None:
    too_big = [
        f"{path.relative_to(REPO)}: {kind} {name} has {lines} lines (at most {limit})"
        for pkg in PACKAGES
        for path in sorted((REPO / pkg).rglob("*.py"))
        for kind, name, lines, limit in _sizes(path)
        if lines > limit
    ]
    assert too_big == []


SUPPRESSION = re.compile(r"#\s*(noqa|type:\s*ignore)\b(?P<rest>[^#\n]*)(?P<after>#[^\n]*)?")


def unexplained_suppressions(text: str) -> list[int]:
    """Lines whose ``noqa`` or ``type: ignore`` gives no reason after its codes."""
    bad = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if number > 1 and lines[number - 2].lstrip().startswith("#"):
            continue  # explained by the comment line above
        for match in SUPPRESSION.finditer(line):
            rest = re.sub(
                r"^(:\s*[A-Z]+[0-9]+(,\s*[A-Z]+[0-9]+)*|\[[\w, -]+\])", "", match["rest"].strip()
            )
            reason = rest.strip(" -:") or (match["after"] or "").lstrip("# ")
            if not reason:
                bad.append(number)
    return bad


def test_the_suppression_check_tells_a_reason_from_none() -> None:
    text = "\n".join(
        [
            "x = f()  # noqa: E731",
            "x = f()  # noqa: E731 - a one-line helper",
            "y = g()  # type: ignore[attr-defined]",
            "y = g()  # type: ignore[attr-defined]  # torch's stubs lack it",
            "z = 1  # noqa",
            "# the exporter writes to a file object too",
            "export(buffer)  # type: ignore[arg-type]",
        ]
    )
    assert unexplained_suppressions(text) == [1, 3, 5]


def test_every_noqa_and_type_ignore_names_its_reason() -> None:
    files = [p for d in (*PACKAGES, "tests", "bench") for p in sorted((REPO / d).rglob("*.py"))]
    unexplained = [
        f"{path.relative_to(REPO)}:{line}"
        for path in files
        if path.name != Path(__file__).name  # the examples above
        for line in unexplained_suppressions(path.read_text(encoding="utf-8"))
    ]
    assert unexplained == []


ROOMS = ("daemon.cli", "daemon", "streams", "models")
ARROW = re.compile(r"^\s*(?P<a>[\w.]+)\s+──►\s+(?P<b>[\w.]+)")


def diagram_edges(doc: str) -> set[tuple[str, str]]:
    """The arrows of the room diagram: the first fenced block after 'Rooms and their rules'."""
    section = doc.split("## Rooms and their rules", 1)[1]
    block = section.split("```", 2)[1]
    return {(m["a"], m["b"]) for line in block.splitlines() if (m := ARROW.match(line))}


def reachable(edges: set[tuple[str, str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        for a, b in edges:
            if a == node and b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def rooms_of(expression: str) -> set[str]:
    """The rooms an import-linter module expression covers: ``daemon`` is the daemon and its
    command line, ``daemon.*`` the daemon's own modules (the command line is its own room)."""
    if expression.endswith(".*"):
        return {expression[:-2]}
    return {room for room in ROOMS if room == expression or room.startswith(expression + ".")}


def contract_forbids() -> set[tuple[str, str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    forbidden: set[tuple[str, str]] = set()
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["type"] == "forbidden":
            sources = set().union(*(rooms_of(m) for m in contract["source_modules"]))
            targets = set().union(*(rooms_of(m) for m in contract["forbidden_modules"]))
            forbidden |= {(a, b) for a in sources for b in targets if a != b}
        elif contract["type"] == "independence":
            rooms = set().union(*(rooms_of(m) for m in contract["modules"]))
            forbidden |= {(a, b) for a in rooms for b in rooms if a != b}
        else:
            pytest.fail(f"no rule to compare a {contract['type']!r} contract with the diagram")
    return forbidden


def test_the_architecture_docs_room_diagram_is_what_the_import_contracts_enforce() -> None:
    edges = diagram_edges((REPO / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert {room for edge in edges for room in edge} <= set(ROOMS) and edges, edges
    forbidden = contract_forbids()
    disagreements = [
        f"{a} -> {b}: the diagram {'allows' if b in reachable(edges, a) else 'has no arrow'}, "
        f"the contracts {'forbid' if (a, b) in forbidden else 'allow'} it"
        for a in ROOMS
        for b in ROOMS
        if a != b and (b in reachable(edges, a)) == ((a, b) in forbidden)
    ]
    assert disagreements == []
