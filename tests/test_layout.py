"""The code stays walkable: no module over 500 lines, no function over 80 lines (docstring
excluded), no function defined inside a loop, no import cycle between modules at import time;
docs/architecture.md names each exception."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "unetile"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _exceptions() -> set[str]:
    """`path` or `path:function` entries in architecture.md's "Size limits" section."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Size limits", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(src/unetile/[\w/]+\.py(?::\w+)?)`", section))


def _function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def _modules() -> list[tuple[str, ast.Module, int]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        out.append((str(path.relative_to(ROOT)), ast.parse(text), len(text.splitlines())))
    return out


def test_modules_and_functions_are_short():
    allowed = _exceptions()
    too_long = []
    for name, tree, lines in _modules():
        if lines > MAX_MODULE_LINES and name not in allowed:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _function_lines(node)
                if n > MAX_FUNCTION_LINES and f"{name}:{node.name}" not in allowed:
                    too_long.append(f"{name}:{node.name}: {n} lines")
    assert not too_long, "over the limits and not named in docs/architecture.md: " + "; ".join(too_long)


def test_no_function_is_defined_inside_a_loop():
    found = set()
    for name, tree, _ in _modules():
        for loop in ast.walk(tree):
            if isinstance(loop, (ast.For, ast.While, ast.AsyncFor)):
                for node in ast.walk(loop):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                        found.add(f"{name}:{node.lineno}")
    assert not found, "functions defined inside loops: " + ", ".join(sorted(found))


def test_the_checks_see_a_long_function_and_a_closure_in_a_loop():
    long_body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))  # + the def line
    tree = ast.parse(f"def f():\n    '''doc'''\n{long_body}\n\nfor i in range(3):\n    g = lambda: i\n")
    f = tree.body[0]
    assert _function_lines(f) == MAX_FUNCTION_LINES + 1
    loop = tree.body[1]
    assert any(isinstance(n, ast.Lambda) for n in ast.walk(loop))


def test_readme_is_short_and_ci_runs_its_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 12_000, f"README.md has {len(readme)} characters; move detail to docs/"
    demo = "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e . && .venv/bin/unetile demo"
    tests = ("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e '.[test]' && "
             ".venv/bin/python -m pytest -q")
    assert f"```bash\n{demo}\n```" in readme and f"```bash\n{tests}\n```" in readme
    assert tests in (ROOT / ".ci" / "run").read_text()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_at_import_time(path: Path, tree: ast.Module) -> set[str]:
    """The package's modules that ``path`` imports at its top level, under ``if TYPE_CHECKING``
    too (two modules that need each other's names, even for types, are one concern cut in two);
    imports inside functions are not counted."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    top = [n for node in tree.body for n in (node.body if isinstance(node, ast.If) else [node])]
    found = set()
    for node in top:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import module`
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unetile"):
            found.add(node.module)
    return found


def _import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle in ``graph`` (module -> modules it imports), or [] (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str]:
        state[module] = 1
        for other in sorted(graph.get(module, ())):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other in graph and other not in state and (cycle := visit(other, path + [other])):
                return cycle
        state[module] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return []


def test_no_import_cycle_between_modules():
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        # a package's own __init__ is run first whatever is imported from it: not an edge to follow
        graph[name] = {m for m in _imports_at_import_time(path, ast.parse(path.read_text())) if m != name
                       and not name.startswith(m + ".")}
    assert _import_cycle(graph) == [], "modules that import each other: " + " -> ".join(_import_cycle(graph))
    assert _import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check sees one
