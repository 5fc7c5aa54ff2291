"""Sample data and a sample run for ./run.sh: uploads a day of synthetic web logs and
counts ERROR lines per object with plain S3 reads.

(Once `manta job` lands, the same count runs next to the data as a map/reduce job.)
"""

from __future__ import annotations

import random

import boto3

from manta.credentials import client_credentials, client_url


def main() -> None:
    creds = client_credentials()
    assert creds is not None, "no credentials found"
    s3 = boto3.client("s3", endpoint_url=client_url(), aws_access_key_id=creds.access_key,
                      aws_secret_access_key=creds.secret_key, region_name="us-east-1")
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
    print(f"sample: {len(keys)} log objects in s3://samples/logs/, {total} ERROR lines")


if __name__ == "__main__":
    main()
