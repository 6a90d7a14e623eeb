"""The library's shape: imports form layers (no circle, function-level imports counted), no private name crosses
a module line, and no module outgrows about 800 lines (a package takes over)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "course_lib"
MAX_LINES = 800


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``package`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_edges(package: Path) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> modules of the package it imports, anywhere in its file), and the private names imported across
    modules as "importer <- module.name". A package's ``__init__`` importing its own submodules is no edge."""
    modules = module_files(package)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target, a.name)
                         for a in node.names]
            elif isinstance(node, ast.Import):
                found = [(a.name, None) for a in node.names]
            else:
                continue
            for target, imported in found:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target not in modules or target == name or (is_package and target.startswith(name + ".")):
                    continue
                edges[name].add(target)
                if imported and imported.startswith("_") and not imported.startswith("__"):
                    private.append(f"{name} <- {target}.{imported}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_course_lib_has_no_import_circle_and_no_private_crossing():
    edges, private = import_edges(PACKAGE)
    assert sum(map(len, edges.values())) > 50  # the parser sees the library's imports at all
    assert cycles(edges) == [], "import circles (function-level imports count too)"
    assert private == [], "private names imported across modules: make them public or keep them at home"


def test_no_module_is_over_800_lines():
    long = {name: n for name, path in module_files(PACKAGE).items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: split them into a package"


def test_the_checks_catch_a_circle_hidden_in_a_function_and_a_private_crossing(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from .sub.c import _hidden\n    return _hidden\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import _hidden\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\n_hidden = 1\n")
    edges, private = import_edges(pkg)
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert private == ["pkg.b <- pkg.sub.c._hidden"]  # a package's __init__ may use its own private names
    (pkg / "sub" / "c.py").write_text("_hidden = 1\n")
    assert cycles(import_edges(pkg)[0]) == []


@pytest.mark.parametrize("name", ["exercises", "widgets"])
def test_the_grown_modules_are_packages(name):
    assert (PACKAGE / name / "__init__.py").is_file()
