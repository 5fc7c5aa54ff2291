"""The dependency direction is manta -> jobs -> storage, never backwards; inside manta,
the server, the client and the CLI are separate (cli -> client, cli -> server, and neither
of those two imports the other or the CLI); and no import cycle exists anywhere.

Every .py file is parsed (not imported) and each import statement checked, including
imports inside functions and `if TYPE_CHECKING:` blocks, and relative imports that climb
out of the package.
"""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = {
    "storage": {"jobs", "manta"},
    "jobs": {"manta"},
    "manta/server": {"manta.client", "manta.cli"},
    "manta/client": {"manta.server", "manta.cli", "jobs", "storage"},
}
PACKAGES = ("manta", "jobs", "storage")


def python_files(package: str) -> list[str]:
    found = []
    for dirpath, dirnames, files in os.walk(os.path.join(REPO, package)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        found += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    return sorted(found)


def module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def file_imports(path: str) -> list[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    return imported_modules(source, module_name(path), path.endswith("__init__.py"))


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in `source`, the text of `module`."""
    tree = ast.parse(source)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            # `from . import manta` style: the names may be modules too
            out += [(node.lineno, f"{target}.{alias.name}" if target else alias.name)
                    for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.append((node.lineno, str(node.args[0].value)))
    return out


def violations(package: str) -> list[str]:
    bad = []
    for path in python_files(package):
        for line, name in file_imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{os.path.relpath(path, REPO)}:{line} imports {name}")
    return bad


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module -> the project modules it imports, from {module: (source, is_package)}.
    `from pkg import name` is an edge to pkg.name when that is a module, else to pkg; the
    implicit import of a module's parent packages is not an edge (every submodule would
    otherwise be in a cycle with a package __init__ that re-exports it)."""
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        named: set[str] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(node, module, is_package)
                named |= {f"{target}.{a.name}" if f"{target}.{a.name}" in sources else target
                          for a in node.names}
            elif isinstance(node, ast.Import | ast.Call):
                named |= {name for _, name in imported_modules(ast.unparse(node), module, is_package)}
        graph[module] = {n for n in named if n in sources and n != module}
    return graph


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, node.module] if node.module else base)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def project_sources() -> dict[str, tuple[str, bool]]:
    sources = {}
    for package in PACKAGES:
        for path in python_files(package):
            with open(path, encoding="utf-8") as fh:
                sources[module_name(path)] = (fh.read(), path.endswith("__init__.py"))
    return sources


def test_no_import_cycle_in_the_project() -> None:
    sources = project_sources()
    assert len(sources) > 50
    assert cycles(import_graph(sources)) == []


@pytest.mark.parametrize(("extra", "cycle"), [
    # a function-level import back into the client: client <-> fs
    ({"manta.client.fs": ("from manta.client.client import Client", False),
      "manta.client.client": ("def f():\n    from manta.client import fs", False),
      "manta.client": ("", True)},
     ["manta.client.client", "manta.client.fs"]),
    # a TYPE_CHECKING import closing a loop of three
    ({"a.x": ("import a.y", False), "a.y": ("from a import z", False),
      "a.z": ("if TYPE_CHECKING:\n    from a.x import X", False), "a": ("", True)},
     ["a.x", "a.y", "a.z"]),
    # a submodule using a name its package re-exports from it
    ({"p": ("from p.m import thing", True), "p.m": ("from p import other", False)},
     ["p", "p.m"]),
])
def test_the_cycle_check_fails_on_an_introduced_cycle(extra: dict[str, tuple[str, bool]],
                                                      cycle: list[str]) -> None:
    assert cycles(import_graph(extra)) == [cycle]
    assert cycles(import_graph({**project_sources(), **extra})) != []


def test_a_package_importing_its_own_submodules_is_no_cycle() -> None:
    sources = {"p": ("from p import m\nfrom p.n import N", True), "p.m": ("from p import n", False),
               "p.n": ("N = 1", False)}
    assert cycles(import_graph(sources)) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_imports_against_the_dependency_direction(package: str) -> None:
    assert python_files(package), f"{package}/ has no Python files"
    assert violations(package) == []


@pytest.mark.parametrize(("source", "expected"), [
    ("import manta", "manta"),
    ("import manta.server.s3.app as app", "manta.server.s3.app"),
    ("from manta.server.s3 import errors", "manta.server.s3"),
    ("from jobs import runner", "jobs"),
    ("def f():\n    import jobs.scheduler", "jobs.scheduler"),
    ("if TYPE_CHECKING:\n    from manta import cli", "manta"),
    ("importlib.import_module('manta.server')", "manta.server"),
    ("from ... import manta", "manta"),
    ("from ...manta import cli", "manta"),
])
def test_the_checker_sees_every_import_form(source: str, expected: str) -> None:
    names = [name for _, name in imported_modules(source, "storage.sub.probe", False)]
    assert any(n.split(".")[0] == expected.split(".")[0] for n in names), names
    assert expected in names


def test_relative_imports_inside_the_package_are_fine() -> None:
    names = [n for _, n in imported_modules("from . import errors\nfrom .blobs import X",
                                            "storage.objects", False)]
    assert all(n.startswith("storage") for n in names), names


def test_no_code_outside_storage_reaches_blob_files_directly() -> None:
    """The node interface (storage/nodeapi.py) is the only way to blobs: no module of jobs/
    or manta/ touches a node's DirectoryBlobStore (`node.blobs`) or builds a blob path, so
    the same code works with a node in another process (storage/remote.py)."""
    offenders = []
    for package in ("jobs", "manta"):
        for path in python_files(package):
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in ("blobs", "blob_dir"):
                    offenders.append(f"{os.path.relpath(path, REPO)}:{node.lineno}: .{node.attr}")
                if isinstance(node, ast.Name) and node.id == "DirectoryBlobStore":
                    offenders.append(f"{os.path.relpath(path, REPO)}:{node.lineno}: DirectoryBlobStore")
    assert offenders == []
