#!/usr/bin/env python3
"""Python function calls per S3 request on the server's event loop, this tree vs another
revision: a deterministic measure of a request path's work, where CPU time on a shared
2-core machine moves by 10-20 % from run to run.

Each tree serves 4 KiB PUT and GET (and HEAD, DELETE, a 1,000-key list page) in process
(tests/inprocess.py: the real ASGI app and Store, requests signed as botocore signs them,
no sockets) with cProfile on the event-loop thread only, so the client's signing is not
counted. Catalog commits run on the store's writer thread (not counted), the same in both.

    .venv/bin/python benchmarks/handler_calls.py --baseline-rev efdceae   # a table, and JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import worktree

HERE = Path(__file__).resolve().parent
OPS = ("PUT", "GET", "HEAD", "DELETE", "LIST")

# run inside a tree (its directory first on sys.path): prints {op: calls per request}
PROBE = r"""
import cProfile, json, pathlib, pstats, sys, tempfile
from tests.inprocess import InProcessS3
n = int(sys.argv[1])
out = {}
with tempfile.TemporaryDirectory() as d, InProcessS3(pathlib.Path(d)) as s3:
    assert s3.request("PUT", "/bench").status_code == 200
    body = b"x" * 4096
    for i in range(1000):
        s3.request("PUT", f"/bench/k{i:04d}", body=body)
    requests = {
        "PUT": lambda i: s3.request("PUT", f"/bench/k{i % 1000:04d}", body=body),
        "GET": lambda i: s3.request("GET", f"/bench/k{i % 1000:04d}"),
        "HEAD": lambda i: s3.request("HEAD", f"/bench/k{i % 1000:04d}"),
        "DELETE": lambda i: s3.request("DELETE", f"/bench/k{i % 1000:04d}"),
        "LIST": lambda i: s3.request("GET", "/bench", query={"list-type": "2"}),
    }
    for op, send in requests.items():
        count = max(n // 20, 5) if op == "LIST" else n
        for i in range(5):  # warm: imports and caches
            send(i)
        prof = cProfile.Profile()
        s3._portal.call(prof.enable)
        for i in range(count):
            response = send(i)
        s3._portal.call(prof.disable)
        assert response.status_code in (200, 204), (op, response.status_code)
        out[op] = pstats.Stats(prof).total_calls / count
print(json.dumps(out))
"""


def probe(tree: Path, n: int) -> dict[str, float]:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(n)], cwd=tree, env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"probe in {tree} failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-rev", default="HEAD~1", help="git revision to compare with (a worktree in a temp dir)")
    p.add_argument("--requests", type=int, default=300, help="requests per operation (LIST: a twentieth)")
    p.add_argument("--json", default=str(HERE / "results" / "handler_calls.json"))
    args = p.parse_args()
    rev = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", args.baseline_rev], capture_output=True,
                         text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        base = worktree(cleanup, rev, Path(tmp) / "base")
        results = {"this": probe(HERE.parent, args.requests), "base": probe(base, args.requests)}
    print(f"{'calls per request':<20}{'this tree':>12}{'base ' + rev[:9]:>18}{'this/base':>12}")
    for op in OPS:
        this, was = results["this"][op], results["base"][op]
        print(f"{op:<20}{this:>12,.0f}{was:>18,.0f}{this / was:>11.3f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"baseline_rev": rev, "requests": args.requests, **results}, indent=1))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
