"""Source checks of the package's structure (used by tests/unit/test_architecture.py), and a command that lists
what they find in any source tree, e.g. an older checkout::

    .venv/bin/python -m tests.architecture src            # this tree
    .venv/bin/python -m tests.architecture /tmp/old/src   # another one

Everything here reads files with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "mltrain"
FRAMEWORKS = ("ray", "mlflow", "lightning", "torch", "torchvision", "torchmetrics", "pytorch_lightning")
_PRIVATE_MODULE = re.compile(rf"\b(?:{'|'.join(FRAMEWORKS)})(?:\.\w+)*\.(?:_\w+)")
"""A dotted framework name with a private component: ``ray._raylet``, ``ray.train.v2._internal.x`` ..."""


def _modules(src: Path) -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text(), str(path))


def _imported(node: ast.AST, current: str, is_package: bool, known: set[str]) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for each thing an import statement imports from mltrain."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        anchor = current.split(".") if is_package else current.split(".")[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    if base.split(".")[0] != PACKAGE:
        return []
    found: list[tuple[str, str | None]] = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        found.append((submodule, None) if submodule in known else (base, alias.name))
    return found


def module_graph(src: Path) -> dict[str, set[str]]:
    """mltrain module -> the mltrain modules it imports (anywhere in it: function-local imports too)."""
    parsed = list(_modules(src))
    known = {name for name, _, _ in parsed}
    graph: dict[str, set[str]] = {}
    for name, path, tree in parsed:
        edges = graph.setdefault(name, set())
        for node in ast.walk(tree):
            for module, _ in _imported(node, name, path.name == "__init__.py", known):
                if module in known and module != name:
                    edges.add(module)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def private_imports(src: Path) -> list[str]:
    """``module: name`` for each private name one mltrain module imports from another."""
    parsed = list(_modules(src))
    known = {name for name, _, _ in parsed}
    found = []
    for name, path, tree in parsed:
        for node in ast.walk(tree):
            for module, imported in _imported(node, name, path.name == "__init__.py", known):
                last = imported if imported is not None else module.rsplit(".", 1)[-1]
                if module != name and last.startswith("_") and not last.startswith("__"):
                    found.append(f"{name}:{node.lineno}: {module}.{last}" if imported else f"{name}: {module}")
    return found


def private_framework_uses(src: Path) -> list[str]:
    """``path:line: what`` for each use of a private or internal framework name the source shows by itself:

    an import of (or a string naming) a module with a ``_`` component; ``x._name`` where ``x`` is not ``self``,
    ``cls`` or an mltrain name (``super()._name`` included); a ``_name=`` keyword argument.
    """
    found = []
    for _, path, tree in _modules(src):
        where = path.relative_to(src).as_posix()
        local = _local_names(tree)
        for cls, node in _walk_with_class(tree):
            own_bases = cls is not None and all(_base_name(base) in local for base in cls.bases)
            what = _private_use(node, local, own_bases)
            if what:
                found.append(f"{where}:{node.lineno}: {what}")  # type: ignore[attr-defined]
    return found


def _walk_with_class(tree: ast.AST, cls: ast.ClassDef | None = None) -> Iterator[tuple[ast.ClassDef | None, ast.AST]]:
    """Every node with the class it is in (the innermost), if any."""
    for child in ast.iter_child_nodes(tree):
        yield cls, child
        yield from _walk_with_class(child, child if isinstance(child, ast.ClassDef) else cls)


def _base_name(base: ast.expr) -> str:
    while isinstance(base, ast.Attribute):
        base = base.value
    return base.id if isinstance(base, ast.Name) else ""


def _local_names(tree: ast.Module) -> set[str]:
    """Names whose ``_name`` is not a framework's in this module: ``self``, ``cls``, mltrain's own modules and
    objects, the standard library's modules (``os._exit`` is a public function), and the classes defined here."""
    names = {"self", "cls"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            top = (node.module or "").split(".")[0]
            if node.level or top == PACKAGE or top in sys.stdlib_module_names:
                names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == PACKAGE or top in sys.stdlib_module_names:
                    names.add(alias.asname or top)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
    return names


def _private_use(node: ast.AST, local: set[str], own_bases: bool) -> str | None:
    if isinstance(node, ast.ImportFrom) and node.module and _PRIVATE_MODULE.search(node.module):
        return f"import from {node.module}"
    if isinstance(node, ast.Import):
        hits = [alias.name for alias in node.names if _PRIVATE_MODULE.search(alias.name)]
        return f"import {', '.join(hits)}" if hits else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and _PRIVATE_MODULE.search(node.value):
        return f"names {_PRIVATE_MODULE.search(node.value).group(0)}"  # type: ignore[union-attr]
    if isinstance(node, ast.keyword) and node.arg and node.arg.startswith("_"):
        return f"keyword {node.arg}="
    if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
        base = node.value
        if isinstance(base, ast.Name) and base.id in local:
            return None
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
            return None if own_bases else f"super().{node.attr}"
        if isinstance(base, ast.Name | ast.Attribute | ast.Call):
            return f".{node.attr}"
    return None


def main(argv: list[str]) -> None:
    src = Path(argv[0]) if argv else SRC
    cycles = import_cycles(module_graph(src))
    imports = private_imports(src)
    uses = private_framework_uses(src)
    print(f"import cycles: {len(cycles)}")
    for group in cycles:
        print("  " + " <-> ".join(group))
    print(f"private names imported from another mltrain module: {len(imports)}")
    for line in imports:
        print("  " + line)
    print(f"private framework names used (seen in the source): {len(uses)}")
    for line in uses:
        print("  " + line)


if __name__ == "__main__":
    main(sys.argv[1:])
