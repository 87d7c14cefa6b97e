"""The package's imports run one way (README, "Where things live"): no import loop, and no layer
importing a layer above it or a sibling application package.

Every `import` statement counts, also those inside functions: a deferred import still ties the two
modules together for a reader and for whoever moves one of them.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "llava"

# Lowest first. A module belongs to the first layer one of whose names equals it or is a package above it.
LAYERS = [
    ("ground", ["llava", "llava.constants", "llava.errors", "llava.quiet", "llava.env"]),
    ("shared pieces", ["llava.chat_template", "llava.conversation", "llava.mm_utils", "llava.video", "llava.records",
                       "llava.preprocess"]),
    ("model", ["llava.model"]),
    ("inference", ["llava.inference"]),
    ("applications", ["llava.train", "llava.data", "llava.eval", "llava.serve", "llava.export"]),
]
# Applications use the layers below, never each other.
APPLICATIONS = dict(LAYERS)["applications"]


def module_names() -> dict[str, pathlib.Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Project modules `name` imports (a `from pkg import sub` of a submodule counts as the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
    return {m for m in found if m in known and m != name}


def layer_of(name: str) -> tuple[int, str]:
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in sorted(prefixes, key=len, reverse=True):
            if name == prefix or (prefix != "llava" and name.startswith(prefix + ".")):
                return rank, prefix
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in {__file__} (and to the README's map)")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imports_of(name, path, set(names)) for name, path in names.items()}


def test_every_module_has_a_layer(graph):
    for name in graph:
        layer_of(name)


def test_no_import_runs_upward_or_between_applications(graph):
    wrong = []
    for name, targets in graph.items():
        rank, home = layer_of(name)
        for target in targets:
            target_rank, target_home = layer_of(target)
            if target_rank > rank:
                wrong.append(f"{name} ({LAYERS[rank][0]}) imports {target} ({LAYERS[target_rank][0]})")
            elif home in APPLICATIONS and target_home in APPLICATIONS and target_home != home:
                wrong.append(f"{name} imports {target}: applications use the layers below, never each other")
    assert not wrong, "\n".join(sorted(wrong))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as [a, b, ..., a], or None (depth-first search, colouring visited modules)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_loop(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import loop: " + " -> ".join(cycle)


def test_the_checks_catch_a_loop_and_an_upward_import():
    # The checks themselves, on a made-up graph: a loop is found, and model -> train is refused.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("llava.model.builder")[0] < layer_of("llava.train.recipes")[0]
    assert layer_of("llava.inference")[0] < layer_of("llava.serve.web")[0]
    with pytest.raises(AssertionError, match="belongs to no layer"):
        layer_of("llava.somewhere_new")
