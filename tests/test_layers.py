"""The library's layers, read from its source (every import, lazy ones in functions too): no import circle, nothing
imports a layer above its own, only the ZenML extension imports ZenML, and nothing in the library imports the
pipelines or steps that are built on it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llm_engineering"
# Bottom to top: a module may import its own layer and the ones below. The stages in the order the pipeline runs them
# (model: load and adapters; training; merge; export), then the evaluation that loads exports, and release.py, which
# exports what the evaluation gated; the other top-level modules (config, console, tracking, promotion, ...) are the
# base below all.
LAYERS = ["", "schedules", "data", "model", "training", "merge", "export", "evaluation", "release", "orchestration"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def internal(names: set[str]) -> set[str]:
    """The library's own modules among the imported names (a `from package import name` names a module or not)."""
    return {n for n in names if n in GRAPH}


def layer(module: str) -> int:
    parts = module.split(".")
    sub = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""
    return LAYERS.index(sub)


def test_the_walk_reads_the_library():
    assert len(GRAPH) > 60 and "llm_engineering.training.sft" in GRAPH
    assert "llm_engineering.model.loading" in internal(GRAPH["llm_engineering.training.sft"])


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{m} -> {i}" for m, names in GRAPH.items() for i in internal(names) if layer(i) > layer(m))
    assert upward == []


def test_no_import_circle():
    def circle_from(start):
        stack, on_path = [(start, iter(sorted(internal(GRAPH[start]) - {start})))], [start]
        while stack:
            module, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.pop()
            elif child in on_path:
                return on_path[on_path.index(child):] + [child]
            elif child not in done:
                stack.append((child, iter(sorted(internal(GRAPH[child]) - {child}))))
                on_path.append(child)
        done.add(start)
        return None

    done: set[str] = set()
    for module in sorted(GRAPH):
        # a package's __init__ importing its own submodules is how packages re-export: not a circle
        circle = circle_from(module)
        assert circle is None or all(c.startswith(circle[0] + ".") for c in circle[1:-1]), " -> ".join(circle)


def test_only_the_zenml_extension_imports_zenml_and_nothing_imports_pipelines_or_steps():
    for module, names in GRAPH.items():
        roots = {n.split(".")[0] for n in names}
        assert not roots & {"pipelines", "steps"}, module
        if not module.startswith("llm_engineering.orchestration"):
            assert "zenml" not in roots, module
