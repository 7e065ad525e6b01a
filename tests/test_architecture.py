"""The engine's shape, read from the source: no import cycles in core, gradio only in the UI, the front door
imported only by the entry points, and modules small enough to read. Reads files; imports nothing of the project."""
import ast
from pathlib import Path

from conftest import ROOT

CORE = ROOT / "core"
# The front door: it assembles the services (core.lab) and hands out a Lab per visitor (core.workspaces).
FRONT_DOOR = {"core.lab", "core.workspaces"}
# Entry points may use the front door: the CLI and a study's runner (a process of its own) inside core, and outside
# core the app, the UI and the benchmarks.
ENTRY_POINTS_IN_CORE = {"core.cli", "core.cli.commands", "core.cli.render", "core.__main__", "core.study_runner"}
MAX_LINES = 400
# A module over the limit must say why here.
OVERSIZED: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports, at module level or inside functions, except under `if TYPE_CHECKING:`
    (imports for annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = core_modules()
    known = set(modules) | {"core"}
    return {name: imports_of(path, known) - {name, "core"} for name, path in modules.items()}


def test_core_has_no_import_cycles():
    graph = import_graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles in core: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail():
    """The checker above finds a cycle when there is one (it reads the same way a real cycle would look)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    seen, stack = set(), []

    def has_cycle(node):
        if node in stack:
            return True
        if node in seen:
            return False
        seen.add(node)
        stack.append(node)
        found = any(has_cycle(n) for n in graph[node])
        stack.pop()
        return found

    assert has_cycle("a")
    assert imports_of(CORE / "lab.py", set(core_modules())) >= {"core.knowledge", "core.answers"}


def test_only_entry_points_import_the_front_door():
    graph = import_graph()
    offenders = sorted(f"{module} imports {', '.join(sorted(imported & FRONT_DOOR))}"
                       for module, imported in graph.items()
                       if imported & FRONT_DOOR and module not in FRONT_DOOR | ENTRY_POINTS_IN_CORE)
    assert not offenders, offenders


def test_core_never_imports_gradio():
    for name, path in core_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "gradio" for a in node.names), name
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "gradio", name


def test_core_modules_are_small_enough_to_read():
    too_long = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in core_modules().items()}
    too_long = {name: n for name, n in too_long.items() if n > MAX_LINES and name not in OVERSIZED}
    assert not too_long, f"over {MAX_LINES} lines (split them, or say why in OVERSIZED): {too_long}"


def test_the_front_door_holds_no_logic():
    """Lab's methods are a few lines each: the work is in the services it hands out."""
    tree = ast.parse((CORE / "lab.py").read_text(encoding="utf-8"))
    lab = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Lab")
    methods = [n for n in lab.body if isinstance(n, ast.FunctionDef)]
    long = {m.name: m.end_lineno - m.lineno for m in methods if m.name not in ("__init__", "_assemble") and m.end_lineno - m.lineno > 6}
    assert not long, long
    assert {m.name for m in methods} <= {"__init__", "_assemble", "use_model", "info", "close"}
