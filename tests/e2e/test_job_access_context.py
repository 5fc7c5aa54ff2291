"""A job reads its inputs under the condition keys of the requests that named them: a bucket
policy that refuses the owner's GET over plain HTTP (or from loopback) refuses the job too,
at create and add-inputs, and when its task runs after the policy changed. A real server
over plain HTTP on loopback, a second account, real bubblewrap tasks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from manta.client import AccessDenied
from tests.conftest import Server, require
from tests.e2e.test_client import sandbox_reason
from tests.e2e.test_s3_access import code, new_account

pytestmark = pytest.mark.sandbox

# conditions this server's plain-HTTP loopback requests meet (and an empty context does not)
REFUSING = {"plain HTTP": {"Bool": {"aws:SecureTransport": "false"}},
            "loopback": {"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}}


@pytest.fixture(scope="module", autouse=True)
def sandbox_usable() -> None:
    reason = sandbox_reason()
    require(reason is None, reason or "")


def shared_but_refused(bucket: str, reader: str, refused_prefix: str, condition: dict[str, Any]) -> str:
    """A policy: `reader` may read the bucket, except under `refused_prefix` when `condition` holds."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": reader}, "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]},
        {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
         "Resource": f"arn:aws:s3:::{bucket}/{refused_prefix}*", "Condition": condition}]})


@pytest.mark.parametrize("refusal", sorted(REFUSING))
def test_job_inputs_are_checked_with_the_context_of_the_request(s3: Any, server: Server, bucket: str,
                                                                 refusal: str) -> None:
    s3.put_object(Bucket=bucket, Key="guarded/doc", Body=b"not over this connection\n")
    s3.put_object(Bucket=bucket, Key="open/doc", Body=b"one two three\n")
    bob, bob_s3, bob_client = new_account(server)
    s3.put_bucket_policy(Bucket=bucket, Policy=shared_but_refused(bucket, bob, "guarded/", REFUSING[refusal]))
    # bob's own GET over this connection: refused for guarded/, allowed for open/
    assert code(bob_s3.get_object, Bucket=bucket, Key="guarded/doc") == "AccessDenied"
    assert bob_s3.get_object(Bucket=bucket, Key="open/doc")["Body"].read() == b"one two three\n"

    spec = {"phases": [{"type": "map", "exec": "wc -w"}], "inputs": [f"{bucket}/guarded/doc"], "end": True}
    with pytest.raises(AccessDenied, match="guarded/doc"):
        bob_client.api("POST", "/_manta/jobs", spec)  # the create itself
    assert bob_client.jobs() == []
    with pytest.raises(AccessDenied, match="guarded/doc"):
        bob_client.job(map="wc -w", inputs=[f"{bucket}/guarded/doc"])  # add-inputs; the client cancels

    job = bob_client.job(map="wc -w", inputs=[f"{bucket}/open/doc"])
    assert job.wait(timeout_s=120, progress=False).state == "done", job.errors()
    assert job.read_outputs().strip() == b"3"


def test_a_task_checks_again_under_the_context_the_job_was_given(s3: Any, server: Server, bucket: str) -> None:
    """The input was readable when given; the policy then refuses plain HTTP before the
    task runs: the task, which runs with no request, is refused as bob's GET would be."""
    s3.put_object(Bucket=bucket, Key="guarded/doc", Body=b"readable for a moment\n")
    bob, bob_s3, bob_client = new_account(server)
    s3.put_bucket_policy(Bucket=bucket, Policy=shared_but_refused(bucket, bob, "other/", REFUSING["plain HTTP"]))
    job = bob_client.job(reduce="wc -w", inputs=[f"{bucket}/guarded/doc"], end=False)  # no task until the end
    s3.put_bucket_policy(Bucket=bucket, Policy=shared_but_refused(bucket, bob, "guarded/", REFUSING["plain HTTP"]))
    assert code(bob_s3.get_object, Bucket=bucket, Key="guarded/doc") == "AccessDenied"
    job.end_inputs()
    job.wait(timeout_s=120, progress=False)
    errors = job.errors()
    assert [e["code"] for e in errors] == ["ResourceNotFoundError"], errors
    assert "access denied" in errors[0]["message"]
    assert job.read_outputs() == b""
