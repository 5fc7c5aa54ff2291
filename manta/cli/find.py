"""`manta find BUCKET[/PREFIX]`: list objects as `bucket/key` lines (or JSON), the input
side of `manta find ... | manta job create ...`; and the boto3 helpers the job commands
share with it (client, error messages, paginated listing, a stdout that may close early).

    manta find logs/2024/ --name '\\.gz$' --size +1M
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from manta.cli.common import CliError, stdout_pipe, subcommand

__all__ = ["list_objects", "register", "s3_client", "s3_errors"]


def s3_client() -> Any:
    import boto3
    from botocore.config import Config

    from manta.client.settings import client_ca_bundle, client_credentials, client_url

    creds = client_credentials()
    if creds is None:
        raise CliError("no credentials: set MANTA_ACCESS_KEY and MANTA_SECRET_KEY (or run on the "
                       "server host, where the root credentials are read from the data dir)")
    ca_bundle = client_ca_bundle()
    if ca_bundle is not None and not os.path.isfile(ca_bundle):
        raise CliError(f"CA bundle {ca_bundle}: no such file")
    try:
        return boto3.client(
            "s3", endpoint_url=client_url(), region_name="us-east-1", verify=ca_bundle,
            aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5))
    except ValueError as exc:  # an endpoint that is not a URL
        raise CliError(f"MANTA_URL: {exc}") from None


@contextmanager
def s3_errors(bucket: str) -> Iterator[None]:
    """botocore exceptions -> CliError with a message a user can act on."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, SSLError

    from manta.client.settings import client_url, tls_failure

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        if code == "NoSuchBucket":
            raise CliError(f"no such bucket: {bucket}") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise CliError(f"bad credentials ({code}): {message}") from None
        raise CliError(f"{code or 'error'}: {message or exc}") from None
    except SSLError as exc:
        raise CliError(tls_failure(client_url(), exc) or str(exc)) from None
    except EndpointConnectionError:
        raise CliError(f"cannot reach {client_url()}") from None
    except BotoCoreError as exc:
        raise CliError(str(exc)) from None


def list_objects(bucket: str, prefix: str = "") -> Iterator[dict[str, Any]]:
    """Every object under `prefix`, in key order (paginated ListObjectsV2)."""
    with s3_errors(bucket):
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size_filter(text: str) -> Callable[[int], bool]:
    """`+N`: larger than N bytes; `-N`: smaller than N bytes (N may end in k, M, G, T)."""
    match = re.fullmatch(r"([+-])(\d+)([kKmMgGtT]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected +N or -N, e.g. +1M or -4096")
    sign, digits, unit = match.groups()
    limit = int(digits) * _SIZE_UNITS[unit.lower()]
    return (lambda size: size > limit) if sign == "+" else (lambda size: size < limit)


def _find(args: argparse.Namespace) -> int:
    bucket, _, prefix = args.path.lstrip("/").partition("/")
    if not bucket:
        raise CliError("find needs a BUCKET or BUCKET/PREFIX")
    try:
        pattern = re.compile(args.name) if args.name else None
    except re.error as exc:
        raise CliError(f"--name: bad regular expression: {exc}") from None
    with stdout_pipe():
        for obj in list_objects(bucket, prefix):
            key = obj["Key"]
            if pattern is not None and not pattern.search(key.rsplit("/", 1)[-1]):
                continue
            if args.size is not None and not args.size(obj["Size"]):
                continue
            if args.json:
                print(json.dumps({"bucket": bucket, "key": key, "size": obj["Size"],
                                  "etag": obj.get("ETag", "").strip('"'),
                                  "last_modified": obj["LastModified"].isoformat()}))
            else:
                print(f"{bucket}/{key}")
    return 0


def register(sub: Any) -> None:
    """Add `find` to the `manta` command's subparsers."""
    f = subcommand(sub, "find", _find, "list the objects under BUCKET[/PREFIX] as bucket/key lines",
                 "manta find logs/2024/ --name '\\.gz$' | manta job create -m 'zcat | wc -l'")
    f.add_argument("path", metavar="BUCKET[/PREFIX]")
    f.add_argument("--name", metavar="REGEX", help="only objects whose name (after the last /) matches")
    f.add_argument("--size", metavar="+N|-N", type=_size_filter,
                   help="only objects larger (+N) or smaller (--size=-N) than N bytes; "
                        "suffixes k, M, G (powers of 1024), e.g. +1M")
    f.add_argument("--json", action="store_true",
                   help="one JSON object per line: bucket, key, size, etag, last_modified")
