"""Issue 17 §2: the import graph of src/trainlens, built from the source with `ast`, has no
cycle and no import from a lower layer into a higher one. Imports under
`if TYPE_CHECKING:` are annotations only and do not count; imports inside functions do
(a lazy import is still a dependency, also inside a notebook display method)."""

from __future__ import annotations

import ast
from pathlib import Path

import trainlens

SRC = Path(trainlens.__file__).parent

#: the layers, lowest first: a module may import only from its own layer or lower ones.
#: The first matching prefix names a module's layer (longest prefixes first).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("_errors", "_finding", "_format", "_io", "_resources", "_signals", "_meta",
              "_wrappers", "_version", "_release")),
    ("records", ("_records", "_catalogue", "_hookspecs", "_rundir", "_views")),
    ("probes", ("_probes", "_stream")),
    ("rules", ("_rules",)),
    ("drill", ("_drill", "_plugins", "_incomplete")),
    # reading a finished run back (load_run) belongs with rendering it
    ("report", ("_report", "_run")),
    ("finish", ("_finish", "_merge", "_distributed")),
    ("watch", ("_watch",)),
    ("commands", ("_report.compare", "_diagnose", "_overfit", "_target", "_demo", "_cli",
                  "__main__", "integrations", "pytest_plugin", "")),
]  # fmt: skip


def layer_of(module: str) -> int:
    """`module` is dotted under the package, e.g. `_probes._state`; "" is the package."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), i)
    assert best is not None, f"module {module!r} has no layer in LAYERS: add it"
    return best[1]


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines whose imports do not count: `if TYPE_CHECKING:` blocks and display hooks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").split(".")[0] == "trainlens":
                    target = node.module.partition(".")[2]
                else:
                    continue
                for a in node.names:  # `from . import _x` names a module, else an object
                    sub = f"{target}.{a.name}".strip(".")
                    targets.append(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                targets = [a.name.partition(".")[2] for a in node.names
                           if a.name.split(".")[0] == "trainlens"]  # fmt: skip
            deps.update(t for t in targets if t in mods)
        deps.discard(name)
        graph[name] = deps
    return graph


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_module_imports_from_a_higher_layer():
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in import_graph().items()
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(m or "trainlens" for m in cycle))
