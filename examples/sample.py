"""Sample data and a sample job for ./run.sh: uploads a day of synthetic web logs, then
counts ERROR lines with a map/reduce job that runs next to the data (one sandboxed
`grep -c ERROR` per object, one reducer adding the counts), and checks the answer
against a count made from plain S3 reads.
"""

from __future__ import annotations

import json
import random
import time

from manta.client import Client


def main() -> None:
    client = Client()  # the server and keys as the CLI finds them (docs/client.md)
    s3 = client.s3  # a plain boto3 S3 client
    if "samples" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="samples")
    rng = random.Random(2026)
    for hour in range(24):
        lines = []
        for i in range(500):
            level = rng.choices(["INFO", "WARN", "ERROR"], weights=[90, 8, 2])[0]
            lines.append(f"2026-11-29T{hour:02d}:{i % 60:02d}:00Z {level} request {i} took {rng.randint(1, 900)}ms")
        s3.put_object(Bucket="samples", Key=f"logs/2026/11/29/{hour:02d}.log",
                      Body=("\n".join(lines) + "\n").encode(), ContentType="text/plain")
    total = 0
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="samples", Prefix="logs/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    for key in keys:
        body = s3.get_object(Bucket="samples", Key=key)["Body"].read().decode()
        total += sum(1 for line in body.splitlines() if " ERROR " in line)
    print(f"sample: {len(keys)} log objects in s3://samples/logs/, {total} ERROR lines (counted with S3 GETs)")
    spec = {"name": "sample: count ERROR lines",
            "phases": [{"type": "map", "exec": "grep -c ' ERROR ' || true"},
                       {"type": "reduce", "exec": "awk '{s += $1} END {print s}'"}],
            "inputs": [f"samples/{key}" for key in keys], "end": True}
    api = client.api
    job = api("POST", "/_manta/jobs", spec)
    while job["state"] == "running":
        time.sleep(0.2)
        job = api("GET", f"/_manta/jobs/{job['id']}")
    outputs = api("GET", f"/_manta/jobs/{job['id']}/outputs")["outputs"]
    if job["state"] != "done" or job["errors"] or len(outputs) != 1:
        raise SystemExit(f"sample job {job['id']} did not succeed: {json.dumps(job)}")
    bucket, key = outputs[0].split("/", 1)
    answer = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().strip()
    print(f"sample: job {job['id']} ran {sum(p['tasks'] for p in job['phases'])} sandboxed tasks next to "
          f"the data and counted {answer} ERROR lines ({'matches' if answer == str(total) else 'DIFFERS'})")
    if answer != str(total):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
