"""
The package's layout (design.md section 2, issue 10): imports only run downhill through a
declared order of layers, the import graph has no cycle, no module rebinds a module global at
run time, and no class is longer than about 300 lines of code.

To add a module, put it in the layer it belongs to in :data:`LAYERS` (a module of no layer fails
the test): it may then import the modules of every layer below its own, and, within its own layer,
only the modules of its own room (a subpackage such as ``fast``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "sb3_trpo_plus"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# From the top down. Each entry is a room: a module, or a subpackage and everything in it.
LAYERS: list[tuple[str, list[str]]] = [
    ("entry points", ["zoo", "demo"]),
    ("package", [""]),  # sb3_trpo_plus/__init__.py: TRPOPlus, the policies, __version__
    ("algorithm", ["trpo_plus"]),
    (
        "rooms the algorithm hands batches to",
        ["sampling", "vine", "critic", "recording", "validation", "actor_parameters", "estimators", "step"],
    ),
    ("the Fisher-vector products of a policy", ["fisher"]),
    ("typed settings", ["settings"]),
    ("data and sampling distributions", ["buffers", "q", "env_state", "policies"]),
    ("pure functions and the NumPy fast paths", ["surrogate", "trust_region", "bound", "fast"]),
    ("SB3's distribution families and action spaces", ["distributions"]),
    ("dict-or-array observations", ["observations"]),
    ("protocols and registries the settings read", ["branch_pool"]),
    ("environments of the package's own (gymnasium only)", ["noisy_envs"]),
]

# The same rule one floor down, inside the packages cut into one module per idea: their modules
# in layers from the top down (the package's __init__, "", re-exports at the top). A module may
# import the modules of its package in layers below its own (and of its own room, e.g. vine.pools
# and its modules), never upward: in particular never its own package's __init__, which would be
# an import circle at run time.
INNER_LAYERS: dict[str, list[list[str]]] = {
    "vine": [
        [""],
        ["sampler"],  # one vine iteration
        ["runner", "pools", "probe"],  # the branches of one state; the branch pools; the fidelity probe
        ["trunk"],  # the rollout set, snapshots of the trunk, branch copies of it
        ["wrappers"],  # the trunk's VecEnv wrappers replayed
    ],
    "env_state": [
        [""],
        ["branchable"],  # BranchableEnv
        ["snapshots", "copies", "failures"],  # snapshot/restore; branch copies and chain checks; worker failures
        ["registry", "replay", "fidelity"],  # which environments are branchable and how; replay; what the probe compares
        ["adapters"],  # state adapters
        ["layers", "attributes", "errors"],  # wrapper chains and the InternalWrapper marker; plain copies; errors
    ],
}

MAX_CLASS_LINES = 300  # lines of code: docstrings, comments and blank lines not counted


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _room(module: str) -> tuple[int, str]:
    """(layer index, room) of a module of the package: the room of the longest matching prefix."""
    relative = module[len(PACKAGE) + 1 :] if module != PACKAGE else ""
    best: tuple[int, str] | None = None
    for index, (_, rooms) in enumerate(LAYERS):
        for room in rooms:
            if relative == room or (room and relative.startswith(room + ".")):
                if best is None or len(room) > len(best[1]):
                    best = (index, room)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layout.py"
    return best


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules ``module`` imports (anywhere in it: at the top, in functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from package import submodule" imports the submodule
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES and name.startswith(PACKAGE):
                name = name.rpartition(".")[0]
            if name in MODULES and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        _room(module)


def test_imports_only_run_downhill() -> None:
    upward = []
    for module, imported in GRAPH.items():
        layer, room = _room(module)
        for target in imported:
            target_layer, target_room = _room(target)
            if target_layer < layer or (target_layer == layer and target_room != room):
                upward.append(f"{module} ({LAYERS[layer][0]}) imports {target} ({LAYERS[target_layer][0]})")
    assert not upward, "\n".join(sorted(upward))


def _inner_room(package: str, module: str) -> tuple[int, str]:
    """(inner layer index, room) of a module of one of the packages of :data:`INNER_LAYERS`."""
    prefix = f"{PACKAGE}.{package}"
    relative = module[len(prefix) + 1 :] if module != prefix else ""
    best: tuple[int, str] | None = None
    for index, rooms in enumerate(INNER_LAYERS[package]):
        for room in rooms:
            if relative == room or (room and relative.startswith(room + ".")):
                if best is None or len(room) > len(best[1]):
                    best = (index, room)
    assert best is not None, f"{module} is in no layer of {prefix}: add it to INNER_LAYERS in tests/test_layout.py"
    return best


def _package_modules(package: str) -> list[str]:
    prefix = f"{PACKAGE}.{package}"
    return [module for module in MODULES if module == prefix or module.startswith(prefix + ".")]


@pytest.mark.parametrize("package", sorted(INNER_LAYERS))
def test_imports_inside_a_package_only_run_downhill(package: str) -> None:
    modules = _package_modules(package)
    assert len(modules) > 1, f"{package} is not a package of several modules"
    upward = []
    for module in modules:
        layer, room = _inner_room(package, module)
        for target in GRAPH[module]:
            if target not in modules:
                continue
            target_layer, target_room = _inner_room(package, target)
            if target_layer < layer or (target_layer == layer and target_room != room):
                upward.append(f"{module} imports {target}")
    assert not upward, "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in GRAPH:
        visit(module, [])


def test_no_module_global_is_rebound_at_run_time() -> None:
    offenders = [
        f"{module}:{node.lineno}"
        for module, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Global)
    ]
    assert not offenders, offenders


def _code_lines(node: ast.ClassDef, lines: list[str]) -> int:
    docstrings: set[int] = set()
    for inner in ast.walk(node):
        if isinstance(inner, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(inner) is not None:
            first = inner.body[0]
            docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return sum(
        1
        for number in range(node.lineno, (node.end_lineno or node.lineno) + 1)
        if number not in docstrings and lines[number - 1].strip() and not lines[number - 1].strip().startswith("#")
    )


def test_no_class_is_longer_than_about_300_lines() -> None:
    long = []
    for module, path in MODULES.items():
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and _code_lines(node, lines) > MAX_CLASS_LINES:
                long.append(f"{module}.{node.name}: {_code_lines(node, lines)} lines of code")
    assert not long, long


def test_the_layout_test_sees_the_known_edges() -> None:
    # guards the parser itself: these imports exist, so a test that found none would be blind
    assert f"{PACKAGE}.sampling" in GRAPH[f"{PACKAGE}.trpo_plus"]
    assert f"{PACKAGE}.fast" in GRAPH[f"{PACKAGE}.critic"]
    assert f"{PACKAGE}.fast.plain" in GRAPH[f"{PACKAGE}.fast.actor"]
    assert f"{PACKAGE}.buffers" in GRAPH[f"{PACKAGE}.vine.sampler"]
    assert f"{PACKAGE}.vine.trunk" in GRAPH[f"{PACKAGE}.vine.runner"]
    assert f"{PACKAGE}.branch_pool" in GRAPH[f"{PACKAGE}.settings"]  # the names vine_kwargs['branch_vec_env'] accepts
    # env_state's one tie, cut by the InternalWrapper marker: the chain checks and the snapshots
    # recognise the package's own wrappers without importing them
    assert f"{PACKAGE}.env_state.layers" in GRAPH[f"{PACKAGE}.env_state.copies"]
    assert f"{PACKAGE}.env_state.branchable" not in GRAPH[f"{PACKAGE}.env_state.copies"]
    assert f"{PACKAGE}.env_state.branchable" not in GRAPH[f"{PACKAGE}.env_state.snapshots"]
    assert f"{PACKAGE}.zoo.hub" in GRAPH[f"{PACKAGE}.zoo.cli"]  # "from package import module"
    assert f"{PACKAGE}.observations" in GRAPH[f"{PACKAGE}.estimators"]  # "from package import module as name"


def test_the_second_pass_rooms_hold_their_ideas() -> None:
    # settings builds q (not the other way round), the step's seams sit on the Fisher products and
    # the pure trust region, and every room takes its dict-or-array observations from one module
    assert f"{PACKAGE}.q" in GRAPH[f"{PACKAGE}.settings"] and f"{PACKAGE}.settings" not in GRAPH[f"{PACKAGE}.q"]
    assert {f"{PACKAGE}.fisher", f"{PACKAGE}.trust_region", f"{PACKAGE}.settings"} <= GRAPH[f"{PACKAGE}.step"]
    assert f"{PACKAGE}.step" in GRAPH[f"{PACKAGE}.trpo_plus"] and f"{PACKAGE}.estimators" in GRAPH[f"{PACKAGE}.trpo_plus"]
    for room in ("estimators", "fisher", "critic", "sampling", "buffers"):
        assert f"{PACKAGE}.observations" in GRAPH[f"{PACKAGE}.{room}"], room
    assert GRAPH[f"{PACKAGE}.observations"] == set()  # the bottom: imports nothing of the package
    assert f"{PACKAGE}.policy_step" not in MODULES  # split into estimators, fisher and step
