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
