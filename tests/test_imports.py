"""The import structure of ``bilingual/`` and ``tasks/``, read from the source with ``ast``: no module-level
import cycles, the library never imports ``tasks`` or ``launch``, and ``import bilingual`` loads no optional
heavy dependency."""

import ast
import os
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("bilingual", "tasks")
OPTIONAL = ("mteb", "torch", "sentence_transformers", "tensorflow")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(module: str, path: pathlib.Path, lazy: bool) -> set[str]:
    """Names of the modules ``module`` imports. ``lazy=False``: only statements that run at import time
    (module and class bodies, including ``if``/``try`` blocks, except ``if TYPE_CHECKING:``); ``lazy=True``:
    also those inside functions and ``TYPE_CHECKING`` blocks.
    ``from a import b`` counts as importing ``a.b`` when that is a module of ours, else ``a``."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            # ``if TYPE_CHECKING:`` imports never run: annotations only, like lazy ones
            inside = inside or (isinstance(child, ast.If) and isinstance(child.test, ast.Name)
                                and child.test.id == "TYPE_CHECKING")
            if inside and not lazy:
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = module.split(".")
                    base = base[:len(base) - child.level + (1 if is_package else 0)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module
                for alias in child.names:
                    submodule = f"{source}.{alias.name}"
                    found.add(submodule if submodule in MODULES else source)
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def _graph(lazy: bool) -> dict[str, set[str]]:
    return {m: {t for t in _imports(m, p, lazy) if t in MODULES and t != m} for m, p in MODULES.items()}


def _find_cycle(graph: dict[str, set[str]]):
    """One cycle as a list of modules (first == last), or None. Iterative DFS with three colours."""
    state = dict.fromkeys(graph, 0)  # 0 new, 1 on the current path, 2 done
    for start in graph:
        if state[start]:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_walk_sees_the_packages():
    assert {"bilingual", "bilingual.encoder_api", "bilingual.mteb_adapter", "tasks.registry", "tasks.demo",
            "tasks.run_data", "bilingual.training.trainer"} <= set(MODULES)
    graph = _graph(lazy=False)
    assert "bilingual.encoder_api" in graph["bilingual.mteb_adapter"]  # the adapter depends on the encoder
    assert "tasks.registry" in graph["tasks.demo"]
    # Encoder.as_mteb imports the adapter inside the method: seen lazily, not at module level.
    assert "bilingual.mteb_adapter" in _graph(lazy=True)["bilingual.encoder_api"]
    assert "bilingual.mteb_adapter" not in graph["bilingual.encoder_api"]


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_level_import_cycles():
    cycle = _find_cycle(_graph(lazy=False))
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_former_circles_point_one_way():
    lazy = _graph(lazy=True)
    # The demo tasks register through the registry; the registry knows nothing of the demo (nor of run_data,
    # the gin entry point above both).
    assert "tasks.registry" in lazy["tasks.demo"] and {"tasks.demo", "tasks.run_data"}.isdisjoint(lazy["tasks.registry"])
    # The mteb adapter imports the encoder at module level; the encoder reaches the adapter only inside
    # ``Encoder.as_mteb`` (checked in test_the_walk_sees_the_packages), never at import time.
    assert "bilingual.encoder_api" in _graph(lazy=False)["bilingual.mteb_adapter"]


def test_library_never_imports_tasks_or_launch():
    offenders = {m: sorted(t for t in _imports(m, p, lazy=True) if t.split(".")[0] in ("tasks", "launch"))
                 for m, p in MODULES.items() if m.split(".")[0] == "bilingual"}
    assert not {m: t for m, t in offenders.items() if t}


def test_import_bilingual_loads_no_optional_dependency():
    code = ("import sys, bilingual, bilingual.encoder_api, bilingual.mteb_adapter\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(OPTIONAL)!r}))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
