"""The catalog contract: tests that take `catalog_location` run once per catalog engine,
the embedded LMDB one (a directory) and PostgreSQL (a fresh database of the session's
throwaway server, see tests/pgserver.py)."""

from __future__ import annotations

import os

import pytest

ENGINES = ("lmdb", "postgresql")


@pytest.fixture(params=ENGINES)
def catalog_location(request: pytest.FixtureRequest, tmp_path: object) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    path = os.path.join(str(tmp_path), "catalog")
    os.makedirs(path)
    return path
