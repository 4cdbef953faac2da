"""The package's shape, measured from its imports (including those inside functions): no import circles, lower
layers never import higher ones (nothing imports the CLI), and no module holds a large share of the code."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ecoalign"

# package -> layer; a module may import its own package and lower layers only
LAYERS = {"core": 0, "data": 1, "encoders": 2, "aerial": 3, "organism": 3, "sdm": 3, "mapping": 4, "demo": 5,
          "accessor": 6, "configs": 0, "cli": 7}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> ecoalign modules it imports (absolute or relative, at any depth of the code)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            deps.update(t for t in targets if t.startswith("ecoalign.") and t != name)
        graph[name] = {d if d in modules else d.rsplit(".", 1)[0] for d in deps}
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_cycles():
    graph = import_graph()
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep != "ecoalign":  # the top-level package only re-exports lazily
                visit(dep)
        stack.pop()

    for module in sorted(graph):
        visit(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_lower_layers_do_not_import_higher_ones():
    bad = []
    for module, deps in import_graph().items():
        own = _layer(module)
        if own is None:
            continue
        for dep in deps:
            theirs = _layer(dep)
            if theirs is not None and dep.split(".")[1] != module.split(".")[1] and theirs > own:
                bad.append(f"{module} -> {dep}")
    assert not bad, "upward imports: " + ", ".join(sorted(bad))


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(LAYERS), sorted((packages | modules) - set(LAYERS))


def test_no_module_holds_a_large_share_of_the_code():
    sizes = {p: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    total = sum(sizes.values())
    biggest = max(sizes, key=sizes.get)
    assert sizes[biggest] <= 0.15 * total, f"{biggest} has {sizes[biggest]} of {total} lines"


@pytest.mark.parametrize("verb_module", sorted(p.stem for p in (PACKAGE / "cli").glob("*.py")
                                               if p.stem not in ("__init__", "__main__", "sites_args", "organism_args")))
def test_cli_verb_modules_are_thin(verb_module):
    """A verb module parses arguments and calls the library: no module-level heavy imports, and short."""
    path = PACKAGE / "cli" / f"{verb_module}.py"
    tree = ast.parse(path.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    heavy = {"torch", "numpy", "pandas", "geopandas", "rasterio", "open_clip", "torchgeo", "lightgbm", "sklearn"}
    names = {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)} | \
            {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    assert not names & heavy, f"{path.name} imports {names & heavy} at module level"
    assert len(path.read_text().splitlines()) <= 150, f"{path.name} is long for a thin parser"
