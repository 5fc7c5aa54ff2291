"""A randomized, model-based test of versioning, deletes, GETs and paged listings.

Each run drives the real S3 app in-process (tests/inprocess.py) with a seeded stream of
random operations on a small set of keys chosen to collide: a hierarchy ("a", "a/", "a/b",
"a/b/c"), neighbours that sort inside or around it ("a-", "ab"), a key with a space and a
non-ASCII one; in one test, keys of 460 to 480 characters sharing their first bytes, at
the bounds past which the catalog stores keys in shared overflow entries (long_keys).
Next to the server runs a small in-memory model of AWS S3's semantics (`Model`): per key
its versions and delete markers, newest first, and the bucket's versioning status (never
versioned, Enabled, Suspended). Every response is compared with what the model says S3
would answer:

- PUT / DELETE / DELETE ?versionId: status, x-amz-version-id, x-amz-delete-marker;
- GET / HEAD, latest or ?versionId: body, 404 NoSuchKey (with the marker's headers when
  the latest version is a delete marker), 405 MethodNotAllowed for a marker by id,
  404 NoSuchVersion for an id the key does not hold;
- ListObjectsV2 and ListObjectVersions with a prefix, a delimiter and a small max-keys,
  followed page by page: the concatenation of the pages (keys, versions, markers and
  common prefixes, in order) must be exactly the model's, each entry once.

Why: each handler test checks one path; the bugs this hunts live in sequences (a null
version replaced after a Suspended/Enabled switch, a version removed by id promoting the
next one, a page boundary falling inside a key's versions or a common prefix). Runs are
deterministic (random.Random(seed)); a failure names the seed, the step and the tail of
the operation history, so it can be replayed.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import pytest

from storage.objects import MAX_DIRECT
from storage.versions import DIRECT_MAX
from tests.inprocess import NS, InProcessS3, error_code, texts, xml
from tests.manta.walk import Checks, shown

ENABLED = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
SUSPENDED = b"<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>"
STATUS_BODIES = {"Enabled": ENABLED, "Suspended": SUSPENDED}
NULL = "null"

KEYS = ("a", "a-", "a/", "a/b", "a/b/c", "a/c", "ab", "b", "b/x y", "é/1")
PREFIXES = ("", "a", "a/", "b", "é")
DELIMITERS = ("", "/")
MAX_KEYS = (1, 2, 3, 1000)
FULL_CHECK_EVERY = 10


def long_keys(bucket: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(keys, prefixes) around the catalog's slot bounds: a catalog key (bucket, NUL, key)
    longer than storage.versions.DIRECT_MAX (noncurrent versions) or storage.objects.MAX_DIRECT
    (current objects) bytes goes into an overflow entry shared by every key with the same
    first bytes; here are keys just at, below and past both bounds, sharing those bytes."""
    room = len(bucket.encode()) + 1
    stem = "L/" + "x" * (DIRECT_MAX - room - 2)  # its versions' catalog key: exactly the bound
    ostem = stem + "1" + "y" * (MAX_DIRECT - room - len(stem) - 1)  # the same for current objects
    keys = ("a", "L/x", stem[:-1], stem, stem + "/", stem + "/1", stem + "1", stem + "1/2",
            ostem, ostem + "/z", ostem + "y", ostem + "yy/w", "é/1")
    prefixes = ("", "L/", stem[:-1], stem, stem + "1", ostem, ostem + "y")
    return keys, prefixes


# An item of a listing, as the model and the parsed pages both spell it:
# ListObjectsV2: ("key", key) | ("prefix", common prefix);
# ListObjectVersions: ("version", key, version id, is marker, is latest) | ("prefix", common prefix).
Item = tuple[object, ...]


# -- the model --------------------------------------------------------------------------


@dataclass
class Version:
    vid: str  # "null" for the null version
    marker: bool
    body: bytes = b""


@dataclass
class Model:
    """S3 semantics of one bucket: `status` None (never versioned), "Enabled" or
    "Suspended"; per key its versions and delete markers, newest first (a key with none
    is absent)."""

    status: str | None = None
    keys: dict[str, list[Version]] = field(default_factory=dict)

    def versions(self, key: str) -> list[Version]:
        return self.keys.get(key, [])

    def latest(self, key: str) -> Version | None:
        versions = self.versions(key)
        return versions[0] if versions else None

    def find(self, key: str, vid: str) -> Version | None:
        return next((v for v in self.versions(key) if v.vid == vid), None)

    def _push(self, key: str, version: Version) -> None:
        """`version` becomes the key's latest; with a null id it replaces the null version."""
        kept = [v for v in self.versions(key) if version.vid != NULL or v.vid != NULL]
        self.keys[key] = [version, *kept]

    def put(self, key: str, vid: str, body: bytes) -> None:
        """A PUT; `vid` is the id the server gave (used only while Enabled)."""
        if self.status is None:
            self.keys[key] = [Version(NULL, False, body)]
        else:
            self._push(key, Version(vid if self.status == "Enabled" else NULL, False, body))

    def delete(self, key: str, vid: str) -> None:
        """A DELETE without versionId; `vid` is the new marker's id (used only while Enabled)."""
        if self.status is None:
            self.keys.pop(key, None)
        else:
            self._push(key, Version(vid if self.status == "Enabled" else NULL, True))

    def delete_version(self, key: str, vid: str) -> None:
        kept = [v for v in self.versions(key) if v.vid != vid]
        if kept:
            self.keys[key] = kept
        else:
            self.keys.pop(key, None)

    def all_versions(self) -> list[tuple[str, Version]]:
        return [(key, v) for key in sorted(self.keys) for v in self.keys[key]]

    def visible(self) -> list[str]:
        """Keys whose latest version is an object, not a delete marker."""
        return [k for k, vs in self.keys.items() if not vs[0].marker]

    def list_objects(self, prefix: str, delimiter: str) -> list[Item]:
        """ListObjectsV2 over all its pages."""
        out: list[Item] = []
        for key, group in _grouped(self.visible(), prefix, delimiter):
            out.append(("prefix", group) if group is not None else ("key", key))
        return out

    def list_versions(self, prefix: str, delimiter: str) -> list[Item]:
        """ListObjectVersions over all its pages."""
        out: list[Item] = []
        for key, group in _grouped(list(self.keys), prefix, delimiter):
            if group is not None:
                out.append(("prefix", group))
                continue
            for i, v in enumerate(self.keys[key]):
                out.append(("version", key, v.vid, v.marker, i == 0))
        return out


def utf8(text: str) -> bytes:
    return text.encode()


def _grouped(keys: list[str], prefix: str, delimiter: str) -> list[tuple[str, str | None]]:
    """(key, None) for each key under `prefix` listed as itself, (first key, common prefix)
    once per common prefix, in UTF-8 binary order."""
    out: list[tuple[str, str | None]] = []
    groups: set[str] = set()
    for key in sorted((k for k in keys if k.startswith(prefix)), key=utf8):
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut < 0:
            out.append((key, None))
            continue
        group = key[: cut + len(delimiter)]
        if group not in groups:
            groups.add(group)
            out.append((key, group))
    return out


# -- parsing the server's listings -------------------------------------------------------


def _text(element: ET.Element, tag: str) -> str | None:
    return element.findtext(NS + tag)


def _merged(entries: list[tuple[str, Item]], prefixes: list[str]) -> list[Item]:
    """One page's entries (sort key, item) and common prefixes in listing order: a stable
    sort by UTF-8 bytes keeps a key's versions in their document order."""
    both = entries + [(p, ("prefix", p)) for p in prefixes]
    return [item for _, item in sorted(both, key=lambda e: utf8(e[0]))]


def _sorted(names: list[str], strictly: bool) -> bool:
    pairs = zip(names, names[1:], strict=False)
    return all(utf8(a) < utf8(b) if strictly else utf8(a) <= utf8(b) for a, b in pairs)


def version_entries(root: ET.Element) -> list[tuple[str, Item]]:
    """(key, item) of the Version and DeleteMarker children of a ListVersionsResult, in
    document order (they interleave: not one findall per tag)."""
    out: list[tuple[str, Item]] = []
    for child in root:
        tag = child.tag.removeprefix(NS)
        if tag in ("Version", "DeleteMarker"):
            key = _text(child, "Key") or ""
            out.append((key, ("version", key, _text(child, "VersionId"), tag == "DeleteMarker",
                              _text(child, "IsLatest") == "true")))
    return out


# -- the run -----------------------------------------------------------------------------


class Run(Checks):
    """One seeded run against one bucket: random operations, each checked against the model."""

    def __init__(self, s3: InProcessS3, bucket: str, seed: int, steps: int, versioned: bool,
                 keys: tuple[str, ...] = KEYS, prefixes: tuple[str, ...] = PREFIXES) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.seed = seed
        self.steps = steps
        self.versioned = versioned
        self.keys = keys
        self.prefixes = prefixes
        self.rng = random.Random(seed)
        self.model = Model()
        self.step = 0
        self.history: list[str] = []
        self.issued: set[str] = set()  # every real version id the server has answered
        self.requests = 0

    # -- plumbing --

    def state(self) -> str:
        return f"model status={self.model.status}"

    def send(self, method: str, key: str | None, *, body: bytes = b"",
             query: Mapping[str, str] | None = None) -> httpx.Response:
        path = f"/{self.bucket}" if key is None else f"/{self.bucket}/{key}"
        response = self.s3.request(method, path, body=body, query=query)
        self.requests += 1
        answered = {h: response.headers[h] for h in ("x-amz-version-id", "x-amz-delete-marker")
                    if h in response.headers}
        self.history.append(shown(f"  [{self.step}] {method} {path} {dict(query or {})}"
                                  f"{' body=' + repr(body) if body and key is not None else ''}"
                                  f" -> {response.status_code} {answered}"))
        return response

    def code(self, response: httpx.Response, method: str) -> str | None:
        """The error code of an error response (HEAD has no body to carry one)."""
        return None if method == "HEAD" else error_code(response)

    def expect_version_header(self, response: httpx.Response, vid: str, what: str) -> None:
        """`x-amz-version-id` names `vid`: absent in a bucket never versioned; a null
        version may answer "null" or nothing (AWS answers "null"; unsure for one written
        before versioning was enabled)."""
        got = response.headers.get("x-amz-version-id")
        if self.model.status is None:
            self.equal(got, None, f"{what}: x-amz-version-id in a bucket never versioned")
        elif vid == NULL:
            self.expect(got in (None, NULL), f"{what}: x-amz-version-id {got!r} for the null version")
        else:
            self.equal(got, vid, f"{what}: x-amz-version-id")

    def new_id(self, response: httpx.Response, what: str) -> str:
        """The version id a write answered, checked: while Enabled a fresh real id, else
        "null" or none."""
        vid = response.headers.get("x-amz-version-id")
        if self.model.status == "Enabled":
            self.expect(vid is not None and vid != NULL, f"{what}: no real x-amz-version-id ({vid!r})")
            assert vid is not None
            self.expect(vid not in self.issued, f"{what}: version id {vid} answered before")
            self.issued.add(vid)
            return vid
        if self.model.status is None:
            self.equal(vid, None, f"{what}: x-amz-version-id in a bucket never versioned")
        else:
            self.expect(vid in (None, NULL), f"{what}: suspended write answered version id {vid!r}")
        return NULL

    # -- operations --

    def put(self, key: str) -> None:
        body = f"s{self.seed}-{self.step}-{key}".encode()
        response = self.send("PUT", key, body=body)
        self.equal(response.status_code, 200, f"PUT {key}")
        self.model.put(key, self.new_id(response, f"PUT {key}"), body)

    def delete(self, key: str) -> None:
        response = self.send("DELETE", key)
        self.equal(response.status_code, 204, f"DELETE {key}")
        marker = response.headers.get("x-amz-delete-marker")
        if self.model.status is None:
            self.equal(marker, None, f"DELETE {key}: x-amz-delete-marker in a bucket never versioned")
        else:
            self.equal(marker, "true", f"DELETE {key}: x-amz-delete-marker")
        self.model.delete(key, self.new_id(response, f"DELETE {key}"))

    def delete_version(self, key: str, vid: str) -> None:
        held = self.model.find(key, vid)
        response = self.send("DELETE", key, query={"versionId": vid})
        what = f"DELETE {key}?versionId={vid}"
        self.equal(response.status_code, 204, what)
        self.equal(response.headers.get("x-amz-version-id"), vid, f"{what}: x-amz-version-id")
        marker = response.headers.get("x-amz-delete-marker")
        if held is not None and held.marker:
            self.equal(marker, "true", f"{what} (a delete marker): x-amz-delete-marker")
        else:
            self.expect(marker in (None, "false"), f"{what}: x-amz-delete-marker {marker!r} for no marker")
        self.model.delete_version(key, vid)

    def get(self, key: str, method: str) -> None:
        response = self.send(method, key)
        latest = self.model.latest(key)
        what = f"{method} {key}"
        if latest is None:
            self.equal(response.status_code, 404, what)
            self.equal(self.code(response, method), None if method == "HEAD" else "NoSuchKey", what)
            self.equal(response.headers.get("x-amz-delete-marker"), None, f"{what}: x-amz-delete-marker")
        elif latest.marker:
            self.equal(response.status_code, 404, f"{what} (latest is a delete marker)")
            self.equal(self.code(response, method), None if method == "HEAD" else "NoSuchKey", what)
            self.equal(response.headers.get("x-amz-delete-marker"), "true", f"{what}: x-amz-delete-marker")
            self.expect_version_header(response, latest.vid, what)
        else:
            self.equal(response.status_code, 200, what)
            if method == "GET":
                self.equal(response.content, latest.body, f"{what}: body")
            self.equal(response.headers.get("content-length"), str(len(latest.body)), f"{what}: content-length")
            self.expect_version_header(response, latest.vid, what)

    def get_version(self, key: str, vid: str, method: str) -> None:
        response = self.send(method, key, query={"versionId": vid})
        held = self.model.find(key, vid)
        what = f"{method} {key}?versionId={vid}"
        if held is None:
            self.equal(response.status_code, 404, f"{what} (no such version)")
            self.equal(self.code(response, method), None if method == "HEAD" else "NoSuchVersion", what)
        elif held.marker:
            self.equal(response.status_code, 405, f"{what} (a delete marker)")
            self.equal(self.code(response, method), None if method == "HEAD" else "MethodNotAllowed", what)
            self.equal(response.headers.get("x-amz-delete-marker"), "true", f"{what}: x-amz-delete-marker")
        else:
            self.equal(response.status_code, 200, what)
            if method == "GET":
                self.equal(response.content, held.body, f"{what}: body")
            self.equal(response.headers.get("content-length"), str(len(held.body)), f"{what}: content-length")
            self.expect_version_header(response, vid, what)

    def set_versioning(self, status: str) -> None:
        response = self.send("PUT", None, body=STATUS_BODIES[status], query={"versioning": ""})
        self.equal(response.status_code, 200, f"PUT ?versioning {status}")
        self.model.status = status
        got = texts(xml(self.send("GET", None, query={"versioning": ""})), "Status")
        self.equal(got, [status], "GET ?versioning")

    def list_objects(self, prefix: str, delimiter: str, max_keys: int) -> None:
        want = self.model.list_objects(prefix, delimiter)
        what = f"ListObjectsV2 prefix={prefix!r} delimiter={delimiter!r} max-keys={max_keys}"
        got: list[Item] = []
        token: str | None = None
        for page in range(len(want) + 2):  # a bound: a page per entry, and a last one
            query = {"list-type": "2", "max-keys": str(max_keys)}
            query.update({"prefix": prefix} if prefix else {})
            query.update({"delimiter": delimiter} if delimiter else {})
            query.update({"continuation-token": token} if token is not None else {})
            response = self.send("GET", None, query=query)
            self.equal(response.status_code, 200, f"{what} page {page}")
            root = xml(response)
            keys, prefixes = texts(root, "Contents/Key"), texts(root, "CommonPrefixes/Prefix")
            count = len(keys) + len(prefixes)
            self.equal(_text(root, "KeyCount"), str(count), f"{what} page {page}: KeyCount")
            self.expect(count <= max_keys, f"{what} page {page}: {count} entries > max-keys")
            self.expect(_sorted(keys, True) and _sorted(prefixes, True),
                        f"{what} page {page}: out of order: {keys} {prefixes}")
            got += _merged([(k, ("key", k)) for k in keys], prefixes)
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true":
                self.equal(token, None, f"{what} page {page}: NextContinuationToken on the last page")
                break
            self.expect(token is not None, f"{what} page {page}: truncated without NextContinuationToken")
        else:
            self.fail(f"{what}: still truncated after {len(want) + 2} pages; so far {got}")
        self.equal(got, want, what)

    def list_versions(self, prefix: str, delimiter: str, max_keys: int) -> None:
        want = self.model.list_versions(prefix, delimiter)
        what = f"ListObjectVersions prefix={prefix!r} delimiter={delimiter!r} max-keys={max_keys}"
        got: list[Item] = []
        key_marker: str | None = None
        version_marker: str | None = None
        for page in range(len(want) + 2):
            query = {"versions": "", "max-keys": str(max_keys)}
            query.update({"prefix": prefix} if prefix else {})
            query.update({"delimiter": delimiter} if delimiter else {})
            query.update({"key-marker": key_marker} if key_marker is not None else {})
            query.update({"version-id-marker": version_marker} if version_marker is not None else {})
            response = self.send("GET", None, query=query)
            self.equal(response.status_code, 200, f"{what} page {page}")
            root = xml(response)
            entries = version_entries(root)
            prefixes = texts(root, "CommonPrefixes/Prefix")
            count = len(entries) + len(prefixes)
            self.expect(count <= max_keys, f"{what} page {page}: {count} entries > max-keys")
            self.expect(_sorted([k for k, _ in entries], False) and _sorted(prefixes, True),
                        f"{what} page {page}: out of order: {entries} {prefixes}")
            got += _merged(entries, prefixes)
            if _text(root, "IsTruncated") != "true":
                break
            key_marker = _text(root, "NextKeyMarker")
            version_marker = _text(root, "NextVersionIdMarker")
            self.expect(key_marker is not None, f"{what} page {page}: truncated without NextKeyMarker")
        else:
            self.fail(f"{what}: still truncated after {len(want) + 2} pages; so far {got}")
        self.equal(got, want, what)

    def full_check(self) -> None:
        """Every key read back and both listings whole, then paged by one."""
        for key in self.keys:
            self.get(key, "GET")
        self.list_objects("", "", 1000)
        self.list_versions("", "", 1000)
        self.list_objects("", "/", 1)
        self.list_versions("", "", 1)

    # -- the random walk --

    def _some_version(self) -> tuple[str, str] | None:
        """(key, version id) the model holds; half the time a key's latest (removing it
        makes the next one latest)."""
        held = self.model.all_versions()
        if not held:
            return None
        key, version = self.rng.choice(held)
        if self.rng.random() < 0.5:
            version = self.model.versions(key)[0]
        return key, version.vid

    def _foreign_version(self) -> tuple[str, str] | None:
        """(key, a real version id that key does not hold): removed, or another key's."""
        if not self.issued:
            return None
        key = self.rng.choice(self.keys)
        vid = self.rng.choice(sorted(self.issued))
        return None if self.model.find(key, vid) is not None else (key, vid)

    def operations(self) -> list[tuple[int, Callable[[], bool]]]:
        """(weight, operation); an operation answers False when it had nothing to act on."""
        rng = self.rng

        def on_version(act: Callable[[str, str], None], pick: Callable[[], tuple[str, str] | None]) -> bool:
            chosen = pick()
            if chosen is None:
                return False
            act(*chosen)
            return True

        def once(act: Callable[[], None]) -> bool:
            act()
            return True

        ops: list[tuple[int, Callable[[], bool]]] = [
            (26, lambda: once(lambda: self.put(rng.choice(self.keys)))),
            (14, lambda: once(lambda: self.delete(rng.choice(self.keys)))),
            (12, lambda: on_version(self.delete_version, self._some_version)),
            (10, lambda: once(lambda: self.get(rng.choice(self.keys), "GET"))),
            (4, lambda: once(lambda: self.get(rng.choice(self.keys), "HEAD"))),
            (9, lambda: on_version(lambda k, v: self.get_version(k, v, "GET"), self._some_version)),
            (3, lambda: on_version(lambda k, v: self.get_version(k, v, "HEAD"), self._some_version)),
            (2, lambda: on_version(lambda k, v: self.get_version(k, v, rng.choice(("GET", "HEAD"))),
                                   self._foreign_version)),
            (1, lambda: on_version(self.delete_version, self._foreign_version)),
            (6, lambda: once(lambda: self.list_objects(rng.choice(self.prefixes), rng.choice(DELIMITERS),
                                                       rng.choice(MAX_KEYS)))),
            (6, lambda: once(lambda: self.list_versions(rng.choice(self.prefixes), rng.choice(DELIMITERS),
                                                        rng.choice(MAX_KEYS)))),
        ]
        if self.versioned:
            ops.append((4, lambda: once(lambda: self.set_versioning(rng.choice(("Enabled", "Suspended"))))))
        return ops

    def run(self) -> int:
        """Run the walk; returns the number of requests checked."""
        self.take_steps(self.operations(), self.steps, FULL_CHECK_EVERY, self.full_check)
        if not self.versioned:
            self.equal(self.model.status, None, "the bucket stayed unversioned")
            self.equal(texts(xml(self.send("GET", None, query={"versioning": ""})), "Status"), [],
                       "GET ?versioning of a bucket never versioned")
        return self.requests


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_versioned_walk_matches_model(s3: InProcessS3, bucket: str, seed: int) -> None:
    assert Run(s3, bucket, seed, steps=300, versioned=True).run() > 300


def test_unversioned_walk_matches_model(s3: InProcessS3, bucket: str) -> None:
    assert Run(s3, bucket, 100, steps=250, versioned=False).run() > 250


@pytest.mark.parametrize("seed", [11, 12])
def test_long_keys_walk_matches_model(s3: InProcessS3, bucket: str, seed: int) -> None:
    """The same walk over keys at the catalog's overflow bounds (long_keys)."""
    keys, prefixes = long_keys(bucket)
    assert Run(s3, bucket, seed, steps=250, versioned=True, keys=keys, prefixes=prefixes).run() > 250



@pytest.mark.parametrize("seed", [21, 22])
def test_versioned_walk_matches_model_on_postgresql(pg_s3: InProcessS3, seed: int) -> None:
    assert Run(pg_s3, "bkt", seed, steps=200, versioned=True).run() > 200


def test_long_keys_walk_matches_model_on_postgresql(pg_s3: InProcessS3) -> None:
    keys, prefixes = long_keys("bkt")
    assert Run(pg_s3, "bkt", 23, steps=200, versioned=True, keys=keys, prefixes=prefixes).run() > 200
