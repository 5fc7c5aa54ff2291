"""`manta serve` refuses bad configuration with a clear message and exit status 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--listen", "nowhere"], {}, "HOST:PORT"),
    (["--nodes", "2", "--copies", "3"], {}, "copies"),
    (["--storage", "nfs:/x"], {}, "dir:PATH or zfs:POOL/DATASET"),
    ([], {"MANTA_TASK_SLOTS": "abc"}, "MANTA_TASK_SLOTS must be an integer"),
    ([], {"MANTA_TASK_SLOTS": "0"}, "MANTA_TASK_SLOTS must be at least 1"),
    ([], {"MANTA_GC_GRACE_S": "soon"}, "MANTA_GC_GRACE_S must be a number"),
    ([], {"MANTA_HEALTH_TTL_S": "0"}, "MANTA_HEALTH_TTL_S must be positive"),
    ([], {"MANTA_HEARTBEAT_S": "-1"}, "MANTA_HEARTBEAT_S must be positive"),
    ([], {"MANTA_READ_CACHE_MB": "-1"}, "MANTA_READ_CACHE_MB must be 0 (off) or more"),
    ([], {"MANTA_READ_CACHE_MB": "lots"}, "MANTA_READ_CACHE_MB must be a number"),
])
def test_bad_configuration(tmp_path: object, args: list[str], env: dict[str, str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "manta", "serve", "--data", os.path.join(str(tmp_path), "d"), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, **env})
    assert done.returncode == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"MANTA_HEALTH_TTL_S": "0"}, "MANTA_HEALTH_TTL_S must be positive"),
    ({"MANTA_HEALTH_TTL_S": "often"}, "MANTA_HEALTH_TTL_S must be a number"),
])
def test_bad_node_configuration(tmp_path: object, env: dict[str, str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "manta", "node", "--storage", f"dir:{tmp_path}/n",
                           "--listen", "127.0.0.1:1"], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "MANTA_CLUSTER_SECRET": "s" * 32, **env})
    assert done.returncode == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
