"""The package's shape holds (issue 22): no import circle, a pure package face.

Read from the source with :mod:`ast`, not by importing: an import circle can
work by luck of import order and still break a plugin that imports modules
in another order. Every import counts, those inside functions too (they run
at run time); only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "core"
#: The redis plugin, a package of its own (chatcore.plugins.redis).
REDIS_PLUGIN = CORE.parent / "plugins" / "redis"


def _module_name(path: Path, root: Path = CORE, package: str = "chatcore") -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The chatcore modules a module's code imports, outside TYPE_CHECKING."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chatcore"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("chatcore"))
        found |= _imports(node, modules)
    return found


def _import_graph(root: Path = CORE, package: str = "chatcore") -> dict[str, set[str]]:
    """Who imports whom among the modules of the package ``package``, whose
    source is ``root``."""
    paths = {_module_name(path, root, package): path for path in root.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {module for module in _imports(tree, modules) if module in modules and module != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_graph_is_read() -> None:
    graph = _import_graph()
    assert "chatcore.engine.server" in graph
    assert "chatcore.engine.registry" in graph["chatcore.engine.server"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle() -> None:
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or ())


@pytest.mark.parametrize("module", ["chatcore.errors", "chatcore.markers", "chatcore.version"])
def test_the_names_of_the_package_face_import_nothing_of_chatcore(module: str) -> None:
    assert _import_graph()[module] == set()


def test_the_package_face_only_re_exports() -> None:
    """chatcore/__init__.py, as pluggy's: a docstring, imports and __all__."""
    tree = ast.parse((CORE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]:
            continue
        pytest.fail(f"chatcore/__init__.py defines something at line {node.lineno}: {ast.unparse(node)[:60]}")


def test_the_picture_of_the_tree_in_docs_architecture_matches_the_tree() -> None:
    """docs/architecture.md lists every module of core/ and plugins/, and
    nothing that is not there."""
    root = CORE.parent
    text = (root / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("<!-- tree -->", 1)[1].split("```", 2)[1]
    pictured: set[str] = set()
    folders: list[str] = []
    for line in block.splitlines():
        name = line.strip().split(" ", 1)[0]
        if not name:
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            pictured.add("/".join([*folders, name]))
    actual = {
        str(path.relative_to(root))
        for top in ("core", "plugins")
        for path in (root / top).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert pictured == actual, f"missing from the picture: {actual - pictured}; not in the tree: {pictured - actual}"


def test_the_redis_plugin_s_modules_import_no_circle() -> None:
    """Each module of the plugin imports only those below it; the package
    face (``__init__``) imports them, and none imports the face."""
    graph = _import_graph(REDIS_PLUGIN, "chatcore.plugins.redis")
    assert "chatcore.plugins.redis.codec" in graph["chatcore.plugins.redis.reader"]
    cycle = _find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or ())


def test_the_redis_plugin_s_modules_share_no_private_names() -> None:
    """A module that needs another's private name marks a seam in the wrong place."""
    for path in REDIS_PLUGIN.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chatcore.plugins.redis"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
