"""The dependency direction is manta -> jobs -> storage, never backwards.

Every .py file under storage/ and jobs/ is parsed (not imported) and each import
statement checked, including imports inside functions and `if TYPE_CHECKING:` blocks,
and relative imports that climb out of the package.
"""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = {
    "storage": {"jobs", "manta"},
    "jobs": {"manta"},
}


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
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{os.path.relpath(path, REPO)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_imports_against_the_dependency_direction(package: str) -> None:
    assert python_files(package), f"{package}/ has no Python files"
    assert violations(package) == []


@pytest.mark.parametrize(("source", "expected"), [
    ("import manta", "manta"),
    ("import manta.s3.app as app", "manta.s3.app"),
    ("from manta.s3 import errors", "manta.s3"),
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
