"""S3 versioning handlers in-process (tests/inprocess.py): the status, version headers on
writes and reads, delete markers and their headers, ListObjectVersions entries."""

from __future__ import annotations

from tests.inprocess import InProcessS3, error_code, texts, xml

ENABLED = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
SUSPENDED = b"<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>"


def test_status_and_refusals(s3: InProcessS3, bucket: str) -> None:
    assert s3.request("PUT", f"/{bucket}", query={"versioning": ""}, body=ENABLED).status_code == 200
    assert texts(xml(s3.request("GET", f"/{bucket}", query={"versioning": ""})), "Status") == ["Enabled"]
    mfa = b"<VersioningConfiguration><Status>Enabled</Status><MfaDelete>Enabled</MfaDelete></VersioningConfiguration>"
    refused = s3.request("PUT", f"/{bucket}", query={"versioning": ""}, body=mfa)
    assert refused.status_code == 501 and error_code(refused) == "NotImplemented"
    bad = b"<VersioningConfiguration><Status>enabled</Status></VersioningConfiguration>"
    refused = s3.request("PUT", f"/{bucket}", query={"versioning": ""}, body=bad)
    assert refused.status_code == 400 and error_code(refused) == "MalformedXML"
    assert s3.request("PUT", f"/{bucket}", query={"versioning": ""}, body=SUSPENDED).status_code == 200
    assert texts(xml(s3.request("GET", f"/{bucket}", query={"versioning": ""})), "Status") == ["Suspended"]


def test_versions_markers_and_their_headers(s3: InProcessS3, bucket: str) -> None:
    s3.request("PUT", f"/{bucket}", query={"versioning": ""}, body=ENABLED)
    v1 = s3.put(bucket, "k", b"one").headers["x-amz-version-id"]
    v2 = s3.put(bucket, "k", b"two").headers["x-amz-version-id"]
    assert v2 < v1  # ids sort newest first
    old = s3.request("GET", f"/{bucket}/k", query={"versionId": v1})
    assert old.content == b"one" and old.headers["x-amz-version-id"] == v1
    assert s3.request("HEAD", f"/{bucket}/k").headers["x-amz-version-id"] == v2
    deleted = s3.request("DELETE", f"/{bucket}/k")
    assert deleted.status_code == 204 and deleted.headers["x-amz-delete-marker"] == "true"
    marker = deleted.headers["x-amz-version-id"]
    gone = s3.request("GET", f"/{bucket}/k")
    assert gone.status_code == 404 and error_code(gone) == "NoSuchKey"
    assert gone.headers["x-amz-delete-marker"] == "true" and gone.headers["x-amz-version-id"] == marker
    by_id = s3.request("GET", f"/{bucket}/k", query={"versionId": marker})
    assert by_id.status_code == 405 and error_code(by_id) == "MethodNotAllowed"
    assert by_id.headers["x-amz-delete-marker"] == "true" and "last-modified" in by_id.headers
    listing = xml(s3.request("GET", f"/{bucket}", query={"versions": ""}))
    assert texts(listing, "DeleteMarker/VersionId") == [marker]
    assert texts(listing, "DeleteMarker/IsLatest") == ["true"]
    assert texts(listing, "Version/VersionId") == [v2, v1]
    assert texts(listing, "Version/IsLatest") == ["false", "false"]
    bad = s3.request("GET", f"/{bucket}/k", query={"versionId": "nope"})
    assert bad.status_code == 400 and error_code(bad) == "InvalidArgument"
    refused = s3.request("DELETE", f"/{bucket}")
    assert refused.status_code == 409 and error_code(refused) == "BucketNotEmpty"
    for vid in (marker, v2, v1):
        assert s3.request("DELETE", f"/{bucket}/k", query={"versionId": vid}).headers["x-amz-version-id"] == vid
    assert s3.request("DELETE", f"/{bucket}").status_code == 204
