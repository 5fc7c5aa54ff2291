"""A randomized, model-based test of what an object carries, and of how CopyObject, object
tagging and versioning treat it.

Each run drives the real S3 app in-process (tests/inprocess.py) with a seeded stream of
random operations over two buckets and a few keys, most of which need escaping in a path
and in x-amz-copy-source ("a b", "é/1", "x+y", "q?r", "%41", "d/k~"). Next to the server
runs a model of AWS S3's semantics: per bucket its versioning status (never versioned,
Enabled, Suspended) and per key its versions and delete markers, newest first, each
version with its body, its stored headers (Content-Type, Content-Encoding,
Content-Disposition, Content-Language, Cache-Control, Expires), its user metadata, its tag
set and its Last-Modified (as first seen). Every answer is compared with the model's:

- PUT with random headers, x-amz-meta-* (names in mixed case: stored lower-cased) and
  x-amz-tagging (URL query form, Unicode, keys of 128 and values of 256 characters), of
  bodies empty, small, or past the 64 KiB the server gathers in memory;
- CopyObject within a bucket, across the two, onto itself, of a version by id, with
  x-amz-metadata-directive and x-amz-tagging-directive absent, COPY or REPLACE, the
  request's own metadata, headers and tags sent either way (ignored under COPY): the
  CopyObjectResult (ETag: the source's; LastModified: the copy's Last-Modified later),
  x-amz-version-id, x-amz-copy-source-version-id, and the copy's body, headers, metadata
  and tags; the refusals (source absent or a delete marker: NoSuchKey; a version the key
  does not hold: NoSuchVersion; a marker by id: InvalidRequest; onto itself unchanged:
  InvalidRequest);
- Put/Get/DeleteObjectTagging, of the latest version or by versionId (NoSuchKey,
  NoSuchVersion, MethodNotAllowed for a marker), and refused tag sets (11 tags, a
  duplicate key, a key of 129 or a value of 257 characters, an aws: key) in a tagging
  document, in x-amz-tagging on a PUT and on a REPLACE copy: nothing changes;
- GET and HEAD, latest or by versionId: body, ETag, Content-Length, every stored header,
  exactly the metadata, x-amz-tagging-count, x-amz-version-id, Last-Modified (which tag
  changes leave alone);
- DELETE (a marker once versioned), DELETE ?versionId, versioning switches;
- every FULL_CHECK_EVERY steps: HEAD and GetObjectTagging of every key of both buckets,
  GET and GetObjectTagging of every version and marker the model holds (a copy shares its
  source's blobs: the bodies show that deletes and overwrites left them alone).

Where AWS's answer is not known here, the model accepts each plausible one (`Doubt`).
Answers the walk found the server giving where AWS answers otherwise (`Known`, since
mended) are checked by the walk and by a focused test each at the end of this file.

Not modelled, because the server does not implement it: storage classes (any of S3's is
taken and every object answers STANDARD; a copy onto itself that names one is made: one
focused test, Known.STORAGE_CLASS_SELF_COPY), x-amz-website-redirect-location and
server-side encryption headers (not stored). Not modelled here: ACL headers, checksums,
multipart sources, non-ASCII metadata values (RFC 2047 on the way out), response-*
overrides, conditional copies (tests/manta/test_handlers_conditional_model.py).

Runs are deterministic (random.Random(seed); version ids are chosen by the order they were
issued, never by their value); a failure names the seed, the step, the buckets' statuses
and the tail of the request history.
"""

from __future__ import annotations

import email.utils
import hashlib
import random
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.sax.saxutils import escape

import httpx
import pytest

from tests.inprocess import NS, InProcessS3, error_code, texts, xml
from tests.manta.walk import Checks, shown

BUCKETS = ("bkt", "bkt2")
KEYS = ("a b", "é/1", "x+y", "q?r", "%41", "k", "d/k~")
NULL = "null"
ENABLED = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
SUSPENDED = b"<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>"
STATUS_BODIES = {"Enabled": ENABLED, "Suspended": SUSPENDED}
FULL_CHECK_EVERY = 10

DEFAULT_CONTENT_TYPE = "binary/octet-stream"  # what AWS answers for an object stored without one
# the headers an object keeps, and values a PUT or a REPLACE copy sends (httpx decodes no
# body for these codings: unknown ones and "identity" are left alone)
STANDARD: dict[str, tuple[str, ...]] = {
    "content-type": ("text/plain", "application/json; charset=utf-8", "image/png"),
    "content-encoding": ("x-zip", "compress", "identity"),
    "content-disposition": ('attachment; filename="a b.txt"', "inline"),
    "content-language": ("en", "de-CH, fr"),
    "cache-control": ("no-cache", "max-age=60, public"),
    "expires": ("Thu, 01 Dec 2094 16:00:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"),
}
META_NAMES = ("Color", "owner-id", "x", "MiXeD-Case", "a.b")  # sent as x-amz-meta-<name>
META_VALUES = ("blue", "a b c", "1/2;q=3", "x=y&z", "UPPER lower")
TAG_KEYS = ("k", "Project", "é", "a b", "x+y=z", "p/q:r@s", "日本", "é" * 128, "K-" * 64, "n0", "n1",
            "n2", "n3")
TAG_VALUES = ("", "v", "1", "a b", "日本語", "x+y=z/@:._-", "ü" * 256)
LONG_VALUE = TAG_VALUES[-1]

# refused tag sets: (name, pairs, code in a tagging document, code in x-amz-tagging)
BAD_TAGS: tuple[tuple[str, list[tuple[str, str]], str, str], ...] = (
    ("11 tags", [(f"t{i}", "v") for i in range(11)], "BadRequest", "BadRequest"),
    ("a duplicate key", [("k", "1"), ("a", ""), ("k", "2")], "InvalidTag", "InvalidArgument"),
    ("a key of 129 characters", [("é" * 129, "v")], "InvalidTag", "InvalidTag"),
    ("a value of 257 characters", [("k", "v" * 257)], "InvalidTag", "InvalidTag"),
    ("an aws: key", [("aws:k", "v")], "InvalidTag", "InvalidTag"),
)

OK = (200, "")
Outcome = tuple[int, str]  # (status, error code); OK for success


class Known:
    """Answers this walk found the server giving where AWS S3 answers otherwise, since
    mended; each has a focused test at the end of this file, and the walk checks AWS's
    answer. The AWS answers are those LocalStack recorded against AWS
    (tests/aws/services/s3/test_s3_api.snapshot.json: test_object_tagging_versioned,
    test_get_object_with_version_unversioned_bucket).

    - MARKER_TAGGING: Get/Put/DeleteObjectTagging without versionId on a key whose latest
      version is a delete marker: 405 MethodNotAllowed (the server answered 404 NoSuchKey).
    - TAGGING_VERSION_HEADER: Get/Put/DeleteObjectTagging without versionId in a versioned
      bucket name the latest version in x-amz-version-id (the server named none).
    - NULL_READ_HEADER: GET or HEAD ?versionId=null in a bucket never versioned answers no
      x-amz-version-id (the server answered "null").
    - STORAGE_CLASS_SELF_COPY (not in the walk, which sends no x-amz-storage-class): a copy
      onto itself, metadata COPY, naming a storage class, even the object's own, is made
      (LocalStack's AWS-validated test_s3_copy_object_in_place_storage_class); the server
      refused it as unchanged (400 InvalidRequest).
    """


class Doubt:
    """Points where AWS S3's answer is not known here; the model accepts each listed answer.

    - SELF_COPY_NEW_TAGS: a copy onto itself with metadata COPY but x-amz-tagging-directive
      REPLACE: refused as unchanged (400 InvalidRequest) or done.
    - SELF_COPY_LATEST_BY_ID: a copy onto itself (metadata COPY) whose source names the
      latest version by id: refused as unchanged or done (naming an older version restores
      it: done).
    - NULL_VERSION_HEADERS: a null version may be named "null" or not at all, in
      x-amz-version-id and x-amz-copy-source-version-id.
    """


def etag_of(body: bytes) -> str:
    return f'"{hashlib.md5(body).hexdigest()}"'


def tagging_header(pairs: list[tuple[str, str]]) -> str:
    """x-amz-tagging: URL query form, UTF-8 percent-encoded (spaces as %20)."""
    return "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}" for k, v in pairs)


def tagging_document(pairs: list[tuple[str, str]]) -> bytes:
    tags = "".join(f"<Tag><Key>{escape(k)}</Key><Value>{escape(v)}</Value></Tag>" for k, v in pairs)
    return (f'<Tagging xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><TagSet>{tags}</TagSet></Tagging>'
            .encode())


def http_date_of(iso: str) -> str:
    """The Last-Modified of a CopyObjectResult's LastModified ("2024-01-02T03:04:05.678Z"):
    the second it falls in."""
    moment = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC, microsecond=0)
    return email.utils.format_datetime(moment, usegmt=True)


# -- the model ---------------------------------------------------------------------------


@dataclass
class Version:
    vid: str  # "null" for the null version
    marker: bool
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # STANDARD names; content-type always
    meta: dict[str, str] = field(default_factory=dict)  # lower-cased names
    tags: dict[str, str] = field(default_factory=dict)
    modified: str | None = None  # Last-Modified, once an answer named it

    @property
    def etag(self) -> str:
        return etag_of(self.body)


@dataclass
class BucketModel:
    """One bucket: `status` None (never versioned), "Enabled" or "Suspended"; per key its
    versions and delete markers, newest first (a key with none is absent)."""

    status: str | None = None
    keys: dict[str, list[Version]] = field(default_factory=dict)

    def versions(self, key: str) -> list[Version]:
        return self.keys.get(key, [])

    def latest(self, key: str) -> Version | None:
        versions = self.versions(key)
        return versions[0] if versions else None

    def find(self, key: str, vid: str) -> Version | None:
        return next((v for v in self.versions(key) if v.vid == vid), None)

    def write(self, key: str, version: Version) -> None:
        """`version` (its id as the write answered it: "null" unless Enabled) becomes the
        key's latest; a null one replaces the null version; unversioned, the only one."""
        if self.status is None:
            self.keys[key] = [version]
            return
        kept = [v for v in self.versions(key) if version.vid != NULL or v.vid != NULL]
        self.keys[key] = [version, *kept]

    def delete(self, key: str, vid: str) -> None:
        if self.status is None:
            self.keys.pop(key, None)
        else:
            self.write(key, Version(vid, True))

    def delete_version(self, key: str, vid: str) -> None:
        kept = [v for v in self.versions(key) if v.vid != vid]
        if kept:
            self.keys[key] = kept
        else:
            self.keys.pop(key, None)

    def held(self) -> list[tuple[str, Version]]:
        return [(key, v) for key in KEYS for v in self.versions(key)]

    def objects(self) -> list[str]:
        """Keys whose latest version is an object."""
        return [k for k in KEYS if self.versions(k) and not self.versions(k)[0].marker]


# -- the run -----------------------------------------------------------------------------


class Run(Checks):
    """One seeded run over BUCKETS: random operations, each checked against the model."""

    def __init__(self, s3: InProcessS3, seed: int, steps: int, switched: tuple[str, ...] = BUCKETS) -> None:
        self.s3 = s3
        self.seed = seed
        self.steps = steps
        self.switched = switched  # the buckets whose versioning the walk changes (others: never versioned)
        self.rng = random.Random(seed)
        self.models = {b: BucketModel() for b in BUCKETS}
        self.step = 0
        self.history: list[str] = []
        self.issued: list[str] = []  # every real version id answered, in order
        self.requests = 0

    # -- plumbing --

    def state(self) -> str:
        return "versioning: " + ", ".join(f"{b}: {m.status}" for b, m in self.models.items())

    def send(self, method: str, bucket: str, key: str | None, *, body: bytes = b"",
             query: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
        path = f"/{bucket}" if key is None else f"/{bucket}/{key}"
        response = self.s3.request(method, path, body=body, query=query, headers=headers)
        self.requests += 1
        answered = {h: response.headers[h] for h in ("x-amz-version-id", "x-amz-copy-source-version-id",
                                                      "x-amz-delete-marker") if h in response.headers}
        code = re.search(rb"<Code>([^<]*)</Code>", response.content) if response.status_code >= 300 else None
        sent = " ".join(f"{k}={v[:80]!r}{'...' if len(v) > 80 else ''}" for k, v in (headers or {}).items())
        self.history.append(shown(f"  [{self.step}] {method} {path} {dict(query or {})} {sent}"
                                  f"{' body=' + repr(body[:60]) if body else ''}"
                                  f" -> {response.status_code}{' ' + code[1].decode() if code else ''} {answered}"))
        return response

    def outcome(self, response: httpx.Response, method: str) -> Outcome:
        """(status, error code) of an answer; HEAD errors carry no code."""
        if response.status_code < 300:
            return OK
        return response.status_code, "" if method == "HEAD" else error_code(response)

    def expect_outcome(self, response: httpx.Response, method: str, allowed: set[Outcome], what: str,
                       success: int = 200) -> bool:
        """Whether the answer succeeded, checked against `allowed` (OK: `success`)."""
        got = self.outcome(response, method)
        if method == "HEAD":
            allowed = {(status, "") for status, _ in allowed}
        if got == OK:
            self.expect(OK in allowed, f"{what}: {response.status_code}, S3 would answer {sorted(allowed)}")
            self.equal(response.status_code, success, f"{what}: status")
            return True
        self.expect(got in allowed, f"{what}: {got}, S3 would answer {sorted(allowed)}")
        return False

    def new_id(self, response: httpx.Response, bucket: str, what: str) -> str:
        """The version id a write answered, checked: while Enabled a fresh real id, else
        "null" or none (Doubt.NULL_VERSION_HEADERS)."""
        vid = response.headers.get("x-amz-version-id")
        status = self.models[bucket].status
        if status == "Enabled":
            self.expect(vid is not None and vid != NULL, f"{what}: no real x-amz-version-id ({vid!r})")
            assert vid is not None
            self.expect(vid not in self.issued, f"{what}: version id {vid} answered before")
            self.issued.append(vid)
            return vid
        if status is None:
            self.equal(vid, None, f"{what}: x-amz-version-id in a bucket never versioned")
        else:
            self.expect(vid in (None, NULL), f"{what}: suspended write answered version id {vid!r}")
        return NULL

    def expect_version_header(self, response: httpx.Response, bucket: str, vid: str, what: str) -> None:
        got = response.headers.get("x-amz-version-id")
        if self.models[bucket].status is None:
            self.equal(got, None, f"{what}: x-amz-version-id in a bucket never versioned")
        elif vid == NULL:
            self.expect(got in (None, NULL), f"{what}: x-amz-version-id {got!r} for the null version")
        else:
            self.equal(got, vid, f"{what}: x-amz-version-id")

    # -- random contents --

    def random_metadata(self) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        """(request headers, the stored headers S3 keeps from them, the metadata)."""
        rng = self.rng
        sent: dict[str, str] = {}
        stored: dict[str, str] = {}
        for name, values in STANDARD.items():
            if rng.random() < 0.35:
                value = rng.choice(values)
                sent[name.title() if rng.random() < 0.5 else name] = value
                stored[name] = value
        stored.setdefault("content-type", DEFAULT_CONTENT_TYPE)
        meta: dict[str, str] = {}
        for name in rng.sample(META_NAMES, rng.choice((0, 0, 1, 2, 3))):
            value = rng.choice(META_VALUES)
            sent[f"{rng.choice(('x-amz-meta-', 'X-Amz-Meta-'))}{name}"] = value
            meta[name.lower()] = value
        return sent, stored, meta

    def random_tags(self, header: bool) -> dict[str, str]:
        """0 to 10 tags; in a header (whose size S3 bounds) at most one long value."""
        rng = self.rng
        count = rng.choice((0, 1, 1, 2, 3, 4, 10))
        tags: dict[str, str] = {}
        for key in rng.sample(TAG_KEYS, count):
            value = rng.choice(TAG_VALUES)
            if header and value == LONG_VALUE and LONG_VALUE in tags.values():
                value = "v"
            tags[key] = value
        return tags

    def pick_key(self, bucket: str) -> str:
        """Mostly a key the bucket holds versions of."""
        held = [k for k in KEYS if self.models[bucket].versions(k)]
        return self.rng.choice(held) if held and self.rng.random() < 0.8 else self.rng.choice(KEYS)

    def copy_source(self, bucket: str, key: str, vid: str | None) -> str:
        """x-amz-copy-source naming (bucket, key, version): percent-encoded as SDKs do,
        sometimes with a leading slash or lower-case escapes."""
        text = urllib.parse.quote(f"{bucket}/{key}", safe="/~")
        if self.rng.random() < 0.3:
            text = re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), text)
        if self.rng.random() < 0.5:
            text = "/" + text
        return text if vid is None else f"{text}?versionId={urllib.parse.quote(vid, safe='')}"

    # -- reads --

    def check_object(self, response: httpx.Response, method: str, bucket: str, version: Version,
                     by_id: bool, what: str) -> None:
        """A 200 GET or HEAD of `version`: body, ETag, length, every stored header, exactly
        its metadata, its tag count, its version id, its Last-Modified."""
        h = response.headers
        if method == "GET":
            self.equal(response.content, version.body, f"{what}: body")
        self.equal(h.get("content-length"), str(len(version.body)), f"{what}: content-length")
        self.equal(h.get("etag"), version.etag, f"{what}: etag")
        for name in STANDARD:
            self.equal(h.get(name), version.headers.get(name), f"{what}: {name}")
        meta = {k.removeprefix("x-amz-meta-"): v for k, v in h.items() if k.startswith("x-amz-meta-")}
        self.equal(meta, version.meta, f"{what}: x-amz-meta-*")
        self.equal(h.get("x-amz-tagging-count"), str(len(version.tags)) if version.tags else None,
                   f"{what}: x-amz-tagging-count")
        modified = h.get("last-modified")
        self.expect(modified is not None, f"{what}: no last-modified")
        if version.modified is None:
            version.modified = modified
        else:
            self.equal(modified, version.modified, f"{what}: last-modified")
        if by_id and self.models[bucket].status is None:  # as S3: none (Known.NULL_READ_HEADER)
            self.equal(h.get("x-amz-version-id"), None, f"{what}: x-amz-version-id in a bucket never versioned")
        elif by_id:
            self.equal(h.get("x-amz-version-id"), version.vid, f"{what}: x-amz-version-id")
        else:
            self.expect_version_header(response, bucket, version.vid, what)

    def read(self, bucket: str, key: str, method: str) -> None:
        latest = self.models[bucket].latest(key)
        what = f"{method} {bucket}/{key}"
        response = self.send(method, bucket, key)
        if latest is None or latest.marker:
            self.expect_outcome(response, method, {(404, "NoSuchKey")}, what)
            self.equal(response.headers.get("x-amz-delete-marker"), "true" if latest else None,
                       f"{what}: x-amz-delete-marker")
            if latest is not None:
                self.expect_version_header(response, bucket, latest.vid, f"{what} (latest is a delete marker)")
            return
        self.expect_outcome(response, method, {OK}, what)
        self.check_object(response, method, bucket, latest, False, what)

    def read_version(self, bucket: str, key: str, vid: str, method: str) -> None:
        held = self.models[bucket].find(key, vid)
        what = f"{method} {bucket}/{key}?versionId={vid}"
        response = self.send(method, bucket, key, query={"versionId": vid})
        if held is None:
            self.expect_outcome(response, method, {(404, "NoSuchVersion")}, what)
        elif held.marker:
            self.expect_outcome(response, method, {(405, "MethodNotAllowed")}, what)
            self.equal(response.headers.get("x-amz-delete-marker"), "true", f"{what}: x-amz-delete-marker")
            self.expect("last-modified" in response.headers, f"{what}: no last-modified for a delete marker")
        else:
            self.expect_outcome(response, method, {OK}, what)
            self.check_object(response, method, bucket, held, True, what)

    # -- tags --

    def tag_target(self, bucket: str, key: str, vid: str | None) -> tuple[Version | None, set[Outcome]]:
        """The version a tagging request acts on, or the errors S3 may answer."""
        model = self.models[bucket]
        if vid is None:
            latest = model.latest(key)
            if latest is None:
                return None, {(404, "NoSuchKey")}
            if latest.marker:  # as S3: 405 (Known.MARKER_TAGGING)
                return None, {(405, "MethodNotAllowed")}
            return latest, {OK}
        held = model.find(key, vid)
        if held is None:
            return None, {(404, "NoSuchVersion")}
        if held.marker:
            return None, {(405, "MethodNotAllowed")}
        return held, {OK}

    def check_tagging_version(self, response: httpx.Response, bucket: str, target: Version, vid: str | None,
                              what: str) -> None:
        got = response.headers.get("x-amz-version-id")
        if vid is not None and self.models[bucket].status is None:  # ?versionId=null: as Known.NULL_READ_HEADER
            self.expect(got in (None, NULL), f"{what}: x-amz-version-id {got!r} in a bucket never versioned")
        elif vid is not None:
            self.equal(got, vid, f"{what}: x-amz-version-id")
        elif self.models[bucket].status is None:
            self.equal(got, None, f"{what}: x-amz-version-id in a bucket never versioned")
        elif target.vid == NULL:  # Doubt.NULL_VERSION_HEADERS
            self.expect(got in (None, NULL), f"{what}: x-amz-version-id {got!r} (latest: the null version)")
        else:  # as S3: the latest's id (Known.TAGGING_VERSION_HEADER)
            self.equal(got, target.vid, f"{what}: x-amz-version-id")

    def tagging_query(self, vid: str | None) -> dict[str, str]:
        return {"tagging": ""} if vid is None else {"tagging": "", "versionId": vid}

    def get_tagging(self, bucket: str, key: str, vid: str | None) -> None:
        target, allowed = self.tag_target(bucket, key, vid)
        what = f"GetObjectTagging {bucket}/{key}{'' if vid is None else '?versionId=' + vid}"
        response = self.send("GET", bucket, key, query=self.tagging_query(vid))
        if not self.expect_outcome(response, "GET", allowed, what):
            return
        assert target is not None
        root = xml(response)
        self.equal(root.tag, NS + "Tagging", f"{what}: document")
        pairs = [(t.findtext(NS + "Key"), t.findtext(NS + "Value")) for t in root.findall(f"{NS}TagSet/{NS}Tag")]
        self.expect(len({k for k, _ in pairs}) == len(pairs), f"{what}: a key twice in {pairs}")
        self.equal(dict(pairs), target.tags, f"{what}: tag set")
        self.check_tagging_version(response, bucket, target, vid, what)

    def put_tagging(self, bucket: str, key: str, vid: str | None, tags: dict[str, str]) -> None:
        target, allowed = self.tag_target(bucket, key, vid)
        what = f"PutObjectTagging {bucket}/{key}{'' if vid is None else '?versionId=' + vid}"
        response = self.send("PUT", bucket, key, query=self.tagging_query(vid),
                             body=tagging_document(list(tags.items())))
        if self.expect_outcome(response, "PUT", allowed, what):
            assert target is not None
            self.check_tagging_version(response, bucket, target, vid, what)
            target.tags = dict(tags)

    def delete_tagging(self, bucket: str, key: str, vid: str | None) -> None:
        target, allowed = self.tag_target(bucket, key, vid)
        what = f"DeleteObjectTagging {bucket}/{key}{'' if vid is None else '?versionId=' + vid}"
        response = self.send("DELETE", bucket, key, query=self.tagging_query(vid))
        if self.expect_outcome(response, "DELETE", allowed, what, success=204):
            assert target is not None
            self.check_tagging_version(response, bucket, target, vid, what)
            target.tags = {}

    def bad_tags(self) -> bool:
        """A refused tag set, in a tagging document, on a PUT or on a REPLACE copy: 400
        and nothing changes (the full checks see that)."""
        rng = self.rng
        name, pairs, document_code, header_code = rng.choice(BAD_TAGS)
        bucket = rng.choice(BUCKETS)
        objects = self.models[bucket].objects()
        how = rng.choice(("document", "put", "copy"))
        if how == "put":
            key = rng.choice(KEYS)
            response = self.send("PUT", bucket, key, body=b"refused",
                                 headers={"x-amz-tagging": tagging_header(pairs)})
            self.expect_outcome(response, "PUT", {(400, header_code)}, f"PUT {bucket}/{key} with {name}")
            return True
        if not objects:
            return False
        key = rng.choice(objects)
        if how == "document":
            response = self.send("PUT", bucket, key, query={"tagging": ""}, body=tagging_document(pairs))
            self.expect_outcome(response, "PUT", {(400, document_code)}, f"PutObjectTagging {bucket}/{key} with {name}")
            return True
        dst_bucket, dst_key = rng.choice(BUCKETS), rng.choice(KEYS)
        headers = {"x-amz-copy-source": self.copy_source(bucket, key, None), "x-amz-tagging-directive": "REPLACE",
                   "x-amz-tagging": tagging_header(pairs)}
        if rng.random() < 0.5:
            headers["x-amz-metadata-directive"] = "REPLACE"
        response = self.send("PUT", dst_bucket, dst_key, headers=headers)
        self.expect_outcome(response, "PUT", {(400, header_code)},
                            f"CopyObject {bucket}/{key} -> {dst_bucket}/{dst_key} with {name}")
        return True

    # -- writes --

    def put(self, bucket: str, key: str) -> None:
        rng = self.rng
        headers, stored, meta = self.random_metadata()
        tags = self.random_tags(header=True) if rng.random() < 0.5 else {}
        if tags:
            headers["x-amz-tagging"] = tagging_header(list(tags.items()))
        stamp = f"{self.seed}:{self.step}:{key}".encode()
        # past SMALL_OBJECT_BYTES (64 KiB) a PUT streams its body into a blob of its own: the other path
        body = rng.choices((b"", stamp, stamp * 40, stamp * (70_000 // len(stamp))), (2, 4, 4, 1))[0]
        what = f"PUT {bucket}/{key}"
        response = self.send("PUT", bucket, key, body=body, headers=headers)
        self.expect_outcome(response, "PUT", {OK}, what)
        self.equal(response.headers.get("etag"), etag_of(body), f"{what}: etag")
        vid = self.new_id(response, bucket, what)
        self.models[bucket].write(key, Version(vid, False, body, stored, meta, tags))

    def copy(self) -> None:
        rng = self.rng
        src_bucket = rng.choice(BUCKETS)
        src_model = self.models[src_bucket]
        src_key = self.pick_key(src_bucket)
        vid: str | None = None
        chance = rng.random()
        if chance < 0.3 and src_model.versions(src_key):
            vid = rng.choice(src_model.versions(src_key)).vid
        elif chance < 0.35 and src_model.status is not None and self.issued:
            vid = rng.choice(self.issued)  # maybe another key's, or a removed one
        if rng.random() < 0.2:
            dst_bucket, dst_key = src_bucket, src_key
        else:
            dst_bucket, dst_key = rng.choice(BUCKETS), rng.choice(KEYS)
        meta_directive = rng.choice((None, "COPY", "REPLACE", "REPLACE"))
        tag_directive = rng.choice((None, None, "COPY", "REPLACE"))
        sent, stored, meta = self.random_metadata() if meta_directive == "REPLACE" or rng.random() < 0.5 \
            else ({}, {"content-type": DEFAULT_CONTENT_TYPE}, {})
        headers = {"x-amz-copy-source": self.copy_source(src_bucket, src_key, vid), **sent}
        if meta_directive is not None:
            headers["x-amz-metadata-directive"] = meta_directive
        if tag_directive is not None:
            headers["x-amz-tagging-directive"] = tag_directive
        tags = self.random_tags(header=True) if tag_directive == "REPLACE" or rng.random() < 0.4 else {}
        if tags:
            headers["x-amz-tagging"] = tagging_header(list(tags.items()))

        source = src_model.latest(src_key) if vid is None else src_model.find(src_key, vid)
        allowed: set[Outcome]
        if source is None:
            allowed = {(404, "NoSuchKey") if vid is None else (404, "NoSuchVersion")}
        elif source.marker:
            allowed = {(404, "NoSuchKey") if vid is None else (400, "InvalidRequest")}
        elif (dst_bucket, dst_key) == (src_bucket, src_key) and meta_directive != "REPLACE":
            if vid is None:
                allowed = {(400, "InvalidRequest")}
                if tag_directive == "REPLACE":
                    allowed.add(OK)  # Doubt.SELF_COPY_NEW_TAGS
            elif source is src_model.latest(src_key):
                allowed = {OK, (400, "InvalidRequest")}  # Doubt.SELF_COPY_LATEST_BY_ID
            else:
                allowed = {OK}
        else:
            allowed = {OK}

        what = (f"CopyObject {src_bucket}/{src_key}{'' if vid is None else '?versionId=' + vid}"
                f" -> {dst_bucket}/{dst_key} (metadata {meta_directive}, tagging {tag_directive})")
        response = self.send("PUT", dst_bucket, dst_key, headers=headers)
        if not self.expect_outcome(response, "PUT", allowed, what):
            return
        assert source is not None
        root = xml(response)
        self.equal(root.tag, NS + "CopyObjectResult", f"{what}: document")
        self.equal(root.findtext(NS + "ETag"), source.etag, f"{what}: CopyObjectResult ETag")
        last_modified = root.findtext(NS + "LastModified") or ""
        self.expect(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", last_modified) is not None,
                    f"{what}: LastModified {last_modified!r}")
        got_source = response.headers.get("x-amz-copy-source-version-id")
        if source.vid != NULL:
            self.equal(got_source, source.vid, f"{what}: x-amz-copy-source-version-id")
        elif vid is not None or src_model.status is not None:  # Doubt.NULL_VERSION_HEADERS
            self.expect(got_source in (None, NULL), f"{what}: x-amz-copy-source-version-id {got_source!r}")
        else:
            self.equal(got_source, None, f"{what}: x-amz-copy-source-version-id (never versioned)")
        new_vid = self.new_id(response, dst_bucket, what)
        if meta_directive == "REPLACE":
            copy = Version(new_vid, False, source.body, stored, meta)
        else:
            copy = Version(new_vid, False, source.body, dict(source.headers), dict(source.meta))
        copy.tags = dict(tags) if tag_directive == "REPLACE" else dict(source.tags)
        copy.modified = http_date_of(last_modified)
        self.models[dst_bucket].write(dst_key, copy)

    def delete(self, bucket: str, key: str) -> None:
        model = self.models[bucket]
        what = f"DELETE {bucket}/{key}"
        response = self.send("DELETE", bucket, key)
        self.expect_outcome(response, "DELETE", {OK}, what, success=204)
        marker = response.headers.get("x-amz-delete-marker")
        self.equal(marker, None if model.status is None else "true", f"{what}: x-amz-delete-marker")
        model.delete(key, self.new_id(response, bucket, what))

    def delete_version(self, bucket: str, key: str, vid: str) -> None:
        model = self.models[bucket]
        held = model.find(key, vid)
        what = f"DELETE {bucket}/{key}?versionId={vid}"
        response = self.send("DELETE", bucket, key, query={"versionId": vid})
        self.expect_outcome(response, "DELETE", {OK}, what, success=204)
        self.equal(response.headers.get("x-amz-version-id"), vid, f"{what}: x-amz-version-id")
        model.delete_version(key, vid)
        if held is not None and held.marker:
            self.equal(response.headers.get("x-amz-delete-marker"), "true", f"{what}: x-amz-delete-marker")

    def set_versioning(self, bucket: str, status: str) -> None:
        response = self.send("PUT", bucket, None, body=STATUS_BODIES[status], query={"versioning": ""})
        self.expect_outcome(response, "PUT", {OK}, f"PUT {bucket}?versioning {status}")
        self.models[bucket].status = status
        got = texts(xml(self.send("GET", bucket, None, query={"versioning": ""})), "Status")
        self.equal(got, [status], f"GET {bucket}?versioning")

    # -- the walk --

    def full_check(self) -> None:
        """HEAD and GetObjectTagging of every key of both buckets and of every version held;
        the versions read with GET (their bodies: a copy shares its source's blobs, which
        deletes and overwrites of the source must leave alone)."""
        for bucket, model in self.models.items():
            for key in KEYS:
                self.read(bucket, key, "HEAD")
                self.get_tagging(bucket, key, None)
            for key, version in model.held():
                self.read_version(bucket, key, version.vid, "GET")
                self.get_tagging(bucket, key, version.vid)

    def some_version(self, bucket: str) -> tuple[str, str] | None:
        held = self.models[bucket].held()
        if not held:
            return None
        key, version = self.rng.choice(held)
        return key, version.vid

    def tag_request_target(self, bucket: str) -> tuple[str, str | None]:
        """(key, versionId or None) for a tagging request: mostly the latest of a held key,
        sometimes a held version (maybe a marker), sometimes an id the key does not hold."""
        rng, model = self.rng, self.models[bucket]
        chance = rng.random()
        if chance < 0.3 and (chosen := self.some_version(bucket)) is not None:
            return chosen
        if chance < 0.35 and model.status is not None and self.issued:
            return rng.choice(KEYS), rng.choice(self.issued)
        return self.pick_key(bucket), None

    def operations(self) -> list[tuple[int, Callable[[], bool]]]:
        """(weight, operation); an operation answers False when it had nothing to act on."""
        rng = self.rng

        def bucket() -> str:
            return rng.choice(BUCKETS)

        def once(act: Callable[[], None]) -> bool:
            act()
            return True

        def on_version(act: Callable[[str, str, str], None], versioned: bool = False) -> bool:
            b = bucket()
            if versioned and self.models[b].status is None:
                return False
            chosen = self.some_version(b)
            if chosen is None:
                return False
            act(b, *chosen)
            return True

        def tagging(act: Callable[[str, str, str | None], None]) -> bool:
            b = bucket()
            act(b, *self.tag_request_target(b))
            return True

        return [
            (18, lambda: once(lambda: (lambda b: self.put(b, self.pick_key(b)))(bucket()))),
            (26, lambda: once(self.copy)),
            (10, lambda: tagging(lambda b, k, v: self.put_tagging(b, k, v, self.random_tags(header=False)))),
            (4, lambda: tagging(self.delete_tagging)),
            (5, lambda: tagging(self.get_tagging)),
            (3, self.bad_tags),
            (8, lambda: once(lambda: (lambda b: self.read(b, self.pick_key(b), "GET"))(bucket()))),
            (3, lambda: once(lambda: (lambda b: self.read(b, self.pick_key(b), "HEAD"))(bucket()))),
            (5, lambda: on_version(lambda b, k, v: self.read_version(b, k, v, rng.choice(("GET", "HEAD"))))),
            (6, lambda: once(lambda: (lambda b: self.delete(b, self.pick_key(b)))(bucket()))),
            (5, lambda: on_version(self.delete_version, versioned=True)),
            (3, lambda: once(lambda: self.set_versioning(rng.choice(self.switched), rng.choice(("Enabled", "Suspended"))))),
        ]

    def run(self) -> int:
        """Run the walk; returns the number of requests checked."""
        self.take_steps(self.operations(), self.steps, FULL_CHECK_EVERY, self.full_check)
        return self.requests


# -- the tests ---------------------------------------------------------------------------


@pytest.fixture
def two_buckets(s3: InProcessS3) -> InProcessS3:
    for name in BUCKETS:
        s3.create_bucket(name)
    return s3


@pytest.fixture
def pg_two_buckets(pg_s3: InProcessS3) -> InProcessS3:
    """BUCKETS over a catalog in PostgreSQL (another engine under copies, tag updates of a
    version in place, and version reads); conftest's pg_s3 made the first."""
    for name in BUCKETS[1:]:
        pg_s3.create_bucket(name)
    return pg_s3


@pytest.mark.parametrize(("seed", "switched"), [(1, BUCKETS), (2, BUCKETS), (3, BUCKETS[:1]), (4, BUCKETS[:1])],
                         ids=["1", "2", "3-bkt2-unversioned", "4-bkt2-unversioned"])
def test_copy_tagging_walk_matches_model(two_buckets: InProcessS3, seed: int, switched: tuple[str, ...]) -> None:
    """Seeds 3 and 4 leave the second bucket never versioned: copies between a versioned
    bucket and an unversioned one, both ways."""
    assert Run(two_buckets, seed, steps=200, switched=switched).run() > 200


def test_copy_tagging_walk_matches_model_on_postgresql(pg_two_buckets: InProcessS3) -> None:
    assert Run(pg_two_buckets, 31, steps=200).run() > 200


# -- answers the server gave where AWS S3 answers otherwise (Known), each on its own ---------


def test_tagging_without_version_id_names_the_latest_version(s3: InProcessS3, bucket: str) -> None:
    """Known.TAGGING_VERSION_HEADER: in a versioned bucket, Put/Get/DeleteObjectTagging of the
    latest version answer its id in x-amz-version-id, as they do when asked by versionId."""
    assert s3.request("PUT", f"/{bucket}", query={"versioning": ""}, body=ENABLED).status_code == 200
    vid = s3.put(bucket, "k", b"x").headers["x-amz-version-id"]
    answers = {method: s3.request(method, f"/{bucket}/k", query={"tagging": ""}, body=body)
               for method, body in (("PUT", tagging_document([("t", "v")])), ("GET", b""), ("DELETE", b""))}
    assert {m: r.status_code for m, r in answers.items()} == {"PUT": 200, "GET": 200, "DELETE": 204}
    assert {m: r.headers.get("x-amz-version-id") for m, r in answers.items()} == dict.fromkeys(answers, vid)


def test_tagging_a_key_whose_latest_version_is_a_delete_marker(s3: InProcessS3, bucket: str) -> None:
    """Known.MARKER_TAGGING: Put/Get/DeleteObjectTagging without versionId on a key whose
    latest version is a delete marker: 405 MethodNotAllowed (as by the marker's id), not the
    404 NoSuchKey of a GET."""
    assert s3.request("PUT", f"/{bucket}", query={"versioning": ""}, body=ENABLED).status_code == 200
    s3.put(bucket, "k", b"x")
    assert s3.request("DELETE", f"/{bucket}/k").headers.get("x-amz-delete-marker") == "true"
    answers = {method: s3.request(method, f"/{bucket}/k", query={"tagging": ""}, body=body)
               for method, body in (("PUT", tagging_document([("t", "v")])), ("GET", b""), ("DELETE", b""))}
    assert {m: (r.status_code, error_code(r)) for m, r in answers.items()} == \
        dict.fromkeys(answers, (405, "MethodNotAllowed"))


def test_null_version_of_a_bucket_never_versioned_is_read_without_a_version_id(s3: InProcessS3,
                                                                             bucket: str) -> None:
    """Known.NULL_READ_HEADER: GET and HEAD ?versionId=null in a bucket never versioned read
    the object and, as every answer of such a bucket, name no version."""
    s3.put(bucket, "k", b"x")
    answers = {method: s3.request(method, f"/{bucket}/k", query={"versionId": NULL}) for method in ("GET", "HEAD")}
    assert {m: r.status_code for m, r in answers.items()} == {"GET": 200, "HEAD": 200}
    assert {m: r.headers.get("x-amz-version-id") for m, r in answers.items()} == {"GET": None, "HEAD": None}


def test_copy_onto_itself_naming_a_storage_class_is_allowed(s3: InProcessS3, bucket: str) -> None:
    """Known.STORAGE_CLASS_SELF_COPY: a copy onto itself with metadata COPY that names a storage class, even the object's
    own (STANDARD), is not "unchanged": AWS makes it (LocalStack's AWS-validated
    test_s3_copy_object_in_place_storage_class and ..._metadata_directive)."""
    s3.put(bucket, "k", b"x", **{"x-amz-meta-a": "1"})
    copied = s3.request("PUT", f"/{bucket}/k", headers={"x-amz-copy-source": f"{bucket}/k",
                                                        "x-amz-storage-class": "STANDARD"})
    assert copied.status_code == 200, copied.text
    assert s3.request("HEAD", f"/{bucket}/k").headers.get("x-amz-meta-a") == "1"


def test_a_storage_class_s3_does_not_have_is_refused(s3: InProcessS3, bucket: str) -> None:
    """Any of S3's storage classes is taken (and the object answers STANDARD); another name
    is 400 InvalidStorageClass, on a PUT, a copy and a multipart upload alike, and nothing
    is written."""
    s3.put(bucket, "k", b"x", **{"x-amz-storage-class": "GLACIER_IR"})
    refused = [s3.request("PUT", f"/{bucket}/new", body=b"y", headers={"x-amz-storage-class": "BOGUS"}),
               s3.request("PUT", f"/{bucket}/new", headers={"x-amz-copy-source": f"{bucket}/k",
                                                           "x-amz-storage-class": "BOGUS"}),
               s3.request("POST", f"/{bucket}/new", query={"uploads": ""}, headers={"x-amz-storage-class": "BOGUS"})]
    assert [(r.status_code, error_code(r)) for r in refused] == [(400, "InvalidStorageClass")] * 3
    assert s3.request("HEAD", f"/{bucket}/new").status_code == 404
    assert texts(xml(s3.request("GET", f"/{bucket}", query={"uploads": ""})), "Upload/Key") == []
