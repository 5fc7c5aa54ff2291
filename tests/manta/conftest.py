"""In-process S3 fixtures for the handler tests (tests/inprocess.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.inprocess import InProcessS3, inprocess_s3


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[InProcessS3]:
    yield from inprocess_s3(tmp_path)


@pytest.fixture
def bucket(s3: InProcessS3) -> str:
    s3.create_bucket("bkt")
    return "bkt"


@pytest.fixture
def pg_s3(tmp_path: Path, pg_url: str) -> Iterator[InProcessS3]:
    """The app over a catalog in PostgreSQL, with the bucket "bkt": for the model walks
    (test_handlers_*model.py), since that engine's scans, listings and upload index are
    other code than LMDB's."""
    with InProcessS3(tmp_path, catalog=pg_url) as s3:
        s3.create_bucket("bkt")
        yield s3
