"""The jobs package owns its catalog tables: storage opens a catalog without them, and
whatever runs jobs opens the same catalog with them (jobs.records.TABLES)."""

from __future__ import annotations

import os

import pytest

from jobs.records import TABLES as JOB_TABLES
from jobs.records import JobRecords
from storage import Store, StoreConfig


def test_a_catalog_opens_without_the_jobs_tables_and_with_them(tmp_path: object) -> None:
    data = os.path.join(str(tmp_path), "data")
    store = Store(StoreConfig(data))  # storage alone
    try:
        store.catalog.accounts.add("bob", "AKBOB", "s")
        assert "jobs" not in store.catalog.tables
        with pytest.raises(ValueError, match="jobs tables"):
            JobRecords(store.catalog)
    finally:
        store.close()
    store = Store(StoreConfig(data, extra_tables=JOB_TABLES))  # the same catalog, now running jobs
    try:
        assert store.catalog.accounts.named("bob").access_key == "AKBOB"
        assert JobRecords(store.catalog).change_seq() == 0
    finally:
        store.close()
    store = Store(StoreConfig(data))  # and alone again, its jobs tables left as they are
    try:
        assert [a.name for a in store.catalog.accounts.all()] == ["bob"]
    finally:
        store.close()
