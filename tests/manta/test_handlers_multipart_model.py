"""A randomized, model-based test of multipart uploads, their paged listings, and the
objects they complete into.

Each run drives the real S3 app in-process (tests/inprocess.py) with a seeded stream of
random operations on a small set of keys chosen to collide and nest ("a", "a/", "a/b",
"a/c", "ab", "b", "é/1"), several uploads pending per key at once. Next to the server runs a
small in-memory model of AWS S3's multipart semantics (`Model`): the pending uploads in
initiation order, each with its parts by number; the keys' current objects (a plain PUT's
or a completion's, with its part sizes); the completed and aborted upload ids. Every
response is compared with what the model says S3 would answer:

- CreateMultipartUpload: a fresh UploadId, the key echoed;
- UploadPart: the quoted MD5 of the part as its ETag, a part number sent again replacing
  the part; 404 NoSuchUpload for an aborted, completed or unknown upload id, or the id of
  another key's upload;
- ListParts, followed page by page (max-parts, part-number-marker, NextPartNumberMarker):
  number, ETag and size of every part, in number order, each once;
- ListMultipartUploads with a prefix, a delimiter, a small max-uploads and sometimes a
  starting key-marker (and upload-id-marker), followed page by page: the concatenation of
  the pages (uploads and common prefixes, in order) must be exactly the model's, each
  pending upload once, sorted by key (UTF-8 bytes) then initiation (oldest first);
- CompleteMultipartUpload with a list of parts that is right (the object is the listed
  parts' bytes, ETag "<MD5 of the parts' binary MD5s>-<count>", the upload gone) or wrong
  on purpose: descending (400 InvalidPartOrder), naming a part never uploaded or with
  another ETag (400 InvalidPart), with a part but the last below 5 MiB (400 EntityTooSmall,
  the bound itself tried with parts of exactly 5 MiB and one byte less); a wrong one
  changes nothing. A completion sent again with the same list answers the same ETag while
  its object is still the key's current one, else NoSuchUpload (storage/uploads.py);
- AbortMultipartUpload: 204, then NoSuchUpload for everything, a second abort included;
- PUT / DELETE / GET / HEAD of the keys (the uploads do not notice), and GET / HEAD with
  ?partNumber=N: the N-th part of the completion's list (206, x-amz-mp-parts-count,
  Content-Range), the whole of a simple object for N=1, 400 InvalidPart past the last.

Another walk uses keys of 430-odd bytes sharing their first bytes, at the bound past which
the upload index cuts keys (long_keys), and one runs over a catalog in PostgreSQL. Not
modelled: listings with writes between their pages, a part number listed twice in a
completion (this server takes the part as last uploaded), what a part of no bytes answers
to ?partNumber beyond its empty body, versioned buckets.

Why: the handler tests (test_handlers_multipart.py) check one path each; the bugs this
hunts live in sequences (a part replaced, an upload completed with a subset of its parts
while others of the same key stay pending, a failed completion that should change
nothing, a page boundary between two uploads of one key or inside a common prefix). Runs
are deterministic (random.Random(seed)) but for the server's upload ids, which the
history names u1, u2, ... in creation order; a failure names the seed, the step and the
tail of the history, so it can be replayed.
"""

from __future__ import annotations

import hashlib
import random
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import pytest

from storage import MIN_PART_SIZE
from storage.uploads import INDEX_KEY_BYTES
from tests.inprocess import NS, InProcessS3, error_code, texts, xml
from tests.manta.test_handlers_model import Item, _merged, utf8
from tests.manta.walk import Checks, shown

KEYS = ("a", "a/", "a/b", "a/c", "ab", "b", "é/1")
PREFIXES = ("", "a", "a/", "b", "é", "é/")
DELIMITERS = ("", "/")
MAX_UPLOADS = (1, 2, 3, 1000)
MAX_PARTS = (1, 2, 1000)
PART_NUMBERS = (1, 2, 3, 7, 10000)
PART_MARKERS = (1, 2, 5, 9999)  # a ListParts started after one of these
FULL_CHECK_EVERY = 10


def long_keys(bucket: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(keys, prefixes) around the upload index's cut: an upload's index key is (bucket, NUL,
    key) cut to storage.uploads.INDEX_KEY_BYTES bytes, then its id, so uploads of keys that
    share their first bytes form groups that listings re-sort; here are keys just below,
    at and past that bound, sharing those bytes, some nested under a "/"."""
    bound = INDEX_KEY_BYTES - len(bucket.encode()) - 1  # the key bytes the index keeps
    stem = "L/" + "x" * (bound - 3)  # a byte short of the bound
    at = stem + "y"  # exactly the bound: its index key is the whole key
    keys = ("a", "L/x", stem, at, at + "/", at + "/1", at + "/2/3", at + "1", stem + "z", "é/1")
    prefixes = ("", "L/", stem, at, at + "/", at + "/2", stem + "z")
    return keys, prefixes


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def multipart_etag(etags: list[str]) -> str:
    """S3's ETag of a completed upload: the MD5 of the parts' binary MD5s, dash, their count."""
    return f"{hashlib.md5(b''.join(bytes.fromhex(e) for e in etags)).hexdigest()}-{len(etags)}"


def complete_xml(listed: list[tuple[int, str]]) -> bytes:
    parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in listed)
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()


def quoted(etag: str) -> str:
    return f'"{etag}"'


def unquoted(etag: str) -> str:
    return etag.strip('"')


# -- the model --------------------------------------------------------------------------


@dataclass
class Part:
    body: bytes
    etag: str  # the MD5 hex, unquoted


@dataclass
class Upload:
    uid: str
    key: str
    label: str  # "u<n>": the n-th upload created in the run (ids are random)
    parts: dict[int, Part] = field(default_factory=dict)

    def listed(self, after: int = 0) -> list[tuple[int, str, int]]:
        """ListParts over all its pages: (number, quoted ETag, size) after part `after`."""
        return [(n, quoted(p.etag), len(p.body)) for n, p in sorted(self.parts.items()) if n > after]


@dataclass(eq=False)
class Obj:
    """A key's current object: compared by identity (a repeated completion answers only
    while the object it made is still the current one)."""

    body: bytes
    etag: str  # unquoted
    sizes: list[int] | None = None  # a completed upload's part sizes; None for a PUT


@dataclass
class Completion:
    key: str
    listed: list[tuple[int, str]]  # as sent (ETags quoted or not)
    made: Obj


@dataclass
class Model:
    """S3 multipart semantics of one bucket that is never versioned."""

    uploads: list[Upload] = field(default_factory=list)  # pending, in initiation order
    objects: dict[str, Obj] = field(default_factory=dict)
    completed: dict[str, Completion] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)

    def of_key(self, key: str) -> list[Upload]:
        return [u for u in self.uploads if u.key == key]

    def list_uploads(self, prefix: str, delimiter: str, key_marker: str = "", id_marker: str = "") -> list[Item]:
        """ListMultipartUploads over all its pages, started after (key_marker, id_marker):
        the uploads of keys after key_marker and, with id_marker (one of key_marker's
        pending uploads), those of key_marker initiated after it. A common prefix stands
        for all its uploads, once."""
        out: list[Item] = []
        groups: set[str] = set()
        passed = False
        for up in sorted(self.uploads, key=lambda u: utf8(u.key)):  # stable: initiation order within a key
            if not up.key.startswith(prefix):
                continue
            if key_marker and utf8(up.key) < utf8(key_marker):
                continue
            if key_marker and up.key == key_marker and not (id_marker and passed):
                passed = up.uid == id_marker or passed
                continue
            cut = up.key.find(delimiter, len(prefix)) if delimiter else -1
            if cut < 0:
                out.append(("upload", up.key, up.uid))
                continue
            group = up.key[: cut + len(delimiter)]
            if group not in groups:
                groups.add(group)
                out.append(("prefix", group))
        return out

    def completion_error(self, up: Upload, listed: list[tuple[int, str]]) -> str | None:
        """The error code of completing `up` with `listed`, None if it succeeds. Checked in
        this order: the order, each part's existence and ETag, the size of every part but
        the last (this server's order; AWS documents none for a list wrong in two ways, as
        a descending list or a wrong ETag with a small part before the last is)."""
        numbers = [n for n, _ in listed]
        if any(b < a for a, b in zip(numbers, numbers[1:], strict=False)):
            return "InvalidPartOrder"
        for number, etag in listed:
            part = up.parts.get(number)
            if part is None or part.etag != unquoted(etag):
                return "InvalidPart"
        if any(len(up.parts[n].body) < MIN_PART_SIZE for n in numbers[:-1]):
            return "EntityTooSmall"
        return None


# -- the run -----------------------------------------------------------------------------


def _text(root: ET.Element, tag: str) -> str | None:
    return root.findtext(NS + tag)


def _code_of(response: httpx.Response) -> str:
    found = re.search(rb"<Code>([^<]*)</Code>", response.content)
    return f" {found[1].decode()}" if found else ""


class Run(Checks):
    """One seeded run against one bucket: random operations, each checked against the model."""

    def __init__(self, s3: InProcessS3, bucket: str, seed: int, steps: int,
                 keys: tuple[str, ...] = KEYS, prefixes: tuple[str, ...] = PREFIXES) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.seed = seed
        self.steps = steps
        self.keys = keys
        self.prefixes = prefixes
        self.rng = random.Random(seed)
        self.model = Model()
        self.step = 0
        self.history: list[str] = []
        self.labels: dict[str, str] = {}  # upload id -> "u<n>"
        self.requests = 0
        self.done: Counter[str] = Counter()  # operations by kind (and outcome), for the report
        self.focus: Upload | None = None  # the upload last picked

    # -- plumbing --

    def state(self) -> str:
        pending = ", ".join(f"{u.label}:{u.key}{sorted(u.parts)}" for u in self.model.uploads)
        return f"model: pending uploads [{shown(pending)}]; objects {shown(str(sorted(self.model.objects)))}"

    def named(self, text: str) -> str:
        """`text` with upload ids replaced by their labels."""
        for uid, label in self.labels.items():
            text = text.replace(uid, label)
        return text

    def send(self, method: str, key: str | None, *, body: bytes = b"", query: Mapping[str, str] | None = None,
             note: str = "") -> httpx.Response:
        path = f"/{self.bucket}" if key is None else f"/{self.bucket}/{key}"
        response = self.s3.request(method, path, body=body, query=query)
        self.requests += 1
        sent = note or (f" body={body[:24]!r}" if len(body) <= 24 else f" body=<{len(body)} bytes {md5(body)[:8]}>")
        etag = response.headers.get("etag")
        self.history.append(self.named(shown(
            f"  [{self.step}] {method} {path} {dict(query or {})}{sent if body or note else ''}"
            f" -> {response.status_code}{_code_of(response)}{' etag=' + etag if etag else ''}")))
        return response

    def expect_error(self, response: httpx.Response, status: int, code: str, what: str, method: str = "GET") -> None:
        self.equal(response.status_code, status, f"{what} (S3 answers {status} {code})")
        if method != "HEAD":
            self.equal(error_code(response), code, f"{what}: error code")

    def label(self, uid: str) -> str:
        return self.labels.get(uid, uid)

    # -- uploads --

    def create(self, key: str) -> None:
        response = self.send("POST", key, query={"uploads": ""})
        self.equal(response.status_code, 200, f"CreateMultipartUpload {key}")
        root = xml(response)
        ids = texts(root, "UploadId")
        self.expect(len(ids) == 1 and ids[0] != "", f"CreateMultipartUpload {key}: UploadId {ids}")
        self.expect(ids[0] not in self.labels, f"CreateMultipartUpload {key}: upload id {ids[0]} answered before")
        self.equal(texts(root, "Key"), [key], f"CreateMultipartUpload {key}: Key")
        self.equal(texts(root, "Bucket"), [self.bucket], f"CreateMultipartUpload {key}: Bucket")
        label = f"u{len(self.labels) + 1}"
        self.labels[ids[0]] = label
        self.model.uploads.append(Upload(ids[0], key, label))
        self.done["create"] += 1

    def part_body(self, number: int) -> bytes:
        """Mostly a few bytes; sometimes exactly the 5 MiB a part but the last needs, or one
        byte less; rarely nothing. Each distinct (its MD5 names it)."""
        tag = f"s{self.seed}/{self.step}/{number};".encode()
        roll = self.rng.random()
        if number != PART_NUMBERS[-1] and roll < 0.25:  # (a last part needs no size)
            return tag.ljust(MIN_PART_SIZE - (roll < 0.06), b"=")
        if roll < 0.27:
            return b""
        return tag * self.rng.randint(1, 3)

    def upload_part(self, up: Upload, number: int) -> None:
        body = self.part_body(number)
        replaced = number in up.parts
        response = self.send("PUT", up.key, body=body, query={"partNumber": str(number), "uploadId": up.uid})
        what = f"UploadPart {up.key} {up.label} #{number}"
        self.equal(response.status_code, 200, what)
        self.equal(response.headers.get("etag"), quoted(md5(body)), f"{what}: ETag")
        up.parts[number] = Part(body, md5(body))
        self.done["upload part (replacing)" if replaced else "upload part"] += 1

    def list_parts(self, up: Upload, max_parts: int, after: int = 0) -> None:
        want = up.listed(after)
        what = f"ListParts {up.key} {up.label} max-parts={max_parts} part-number-marker={after}"
        got: list[tuple[int, str, int]] = []
        marker = after
        for page in range(len(want) + 2):  # a bound: a page per part, and a last one
            query = {"uploadId": up.uid, "max-parts": str(max_parts)}
            query.update({"part-number-marker": str(marker)} if marker else {})
            response = self.send("GET", up.key, query=query)
            self.equal(response.status_code, 200, f"{what} page {page}")
            root = xml(response)
            self.equal(texts(root, "UploadId"), [up.uid], f"{what} page {page}: UploadId")
            self.equal(texts(root, "Key"), [up.key], f"{what} page {page}: Key")
            numbers = [int(n) for n in texts(root, "Part/PartNumber")]
            etags, sizes = texts(root, "Part/ETag"), [int(s) for s in texts(root, "Part/Size")]
            self.expect(len(numbers) == len(etags) == len(sizes), f"{what} page {page}: incomplete <Part>s")
            self.expect(len(numbers) <= max_parts, f"{what} page {page}: {len(numbers)} parts > max-parts")
            got += zip(numbers, etags, sizes, strict=True)
            if _text(root, "IsTruncated") != "true":
                break
            self.expect(bool(numbers), f"{what} page {page}: truncated and empty")
            self.equal(_text(root, "NextPartNumberMarker"), str(numbers[-1]), f"{what} page {page}: NextPartNumberMarker")
            marker = numbers[-1]
        else:
            self.fail(f"{what}: still truncated after {len(want) + 2} pages; so far {got}")
        self.equal(got, want, what)
        self.done["list parts"] += 1

    def list_uploads(self, prefix: str, delimiter: str, max_uploads: int, key_marker: str = "",
                     id_marker: str = "") -> None:
        want = self.model.list_uploads(prefix, delimiter, key_marker, id_marker)
        what = self.named(f"ListMultipartUploads prefix={prefix!r} delimiter={delimiter!r} max-uploads={max_uploads}"
                          f" key-marker={key_marker!r} upload-id-marker={id_marker!r}")
        got: list[Item] = []
        initiated: list[tuple[str, str]] = []
        for page in range(len(want) + 2):
            query = {"uploads": "", "max-uploads": str(max_uploads)}
            query.update({"prefix": prefix} if prefix else {})
            query.update({"delimiter": delimiter} if delimiter else {})
            query.update({"key-marker": key_marker} if key_marker else {})
            query.update({"upload-id-marker": id_marker} if id_marker else {})
            response = self.send("GET", None, query=query)
            self.equal(response.status_code, 200, f"{what} page {page}")
            root = xml(response)
            self.equal(_text(root, "KeyMarker") or "", key_marker, f"{what} page {page}: KeyMarker")
            self.equal(_text(root, "MaxUploads"), str(max_uploads), f"{what} page {page}: MaxUploads")
            keys, ids = texts(root, "Upload/Key"), texts(root, "Upload/UploadId")
            prefixes = texts(root, "CommonPrefixes/Prefix")
            self.expect(len(keys) == len(ids), f"{what} page {page}: incomplete <Upload>s")
            count = len(keys) + len(prefixes)
            self.expect(count <= max_uploads, f"{what} page {page}: {count} entries > max-uploads")
            self.expect(all(utf8(a) <= utf8(b) for a, b in zip(keys, keys[1:], strict=False))
                        and all(utf8(a) < utf8(b) for a, b in zip(prefixes, prefixes[1:], strict=False)),
                        f"{what} page {page}: out of order: {keys} {prefixes}")
            got += _merged([(k, ("upload", k, u)) for k, u in zip(keys, ids, strict=True)], prefixes)
            initiated += zip(keys, texts(root, "Upload/Initiated"), strict=True)
            if _text(root, "IsTruncated") != "true":
                break
            key_marker = _text(root, "NextKeyMarker") or ""
            id_marker = _text(root, "NextUploadIdMarker") or ""
            self.expect(key_marker != "", f"{what} page {page}: truncated without NextKeyMarker")
            self.expect(count > 0, f"{what} page {page}: truncated and empty")
        else:
            self.fail(f"{what}: still truncated after {len(want) + 2} pages; so far {got}")
        self.equal([self.named(repr(i)) for i in got], [self.named(repr(i)) for i in want], what)
        for key in {k for k, _ in initiated}:
            times = [t for k, t in initiated if k == key]
            self.equal(times, sorted(times), f"{what}: Initiated of {key}'s uploads, in listing order")
        self.done["list uploads"] += 1

    def complete(self, up: Upload, listed: list[tuple[int, str]], kind: str) -> None:
        """CompleteMultipartUpload with `listed` (meant to be `kind`: "right" or a wrong one),
        checked against the model; a failed one must leave the upload as it was."""
        error = self.model.completion_error(up, listed)
        shown_parts = [(n, unquoted(e)[:6]) for n, e in listed]
        response = self.send("POST", up.key, body=complete_xml(listed), query={"uploadId": up.uid},
                             note=f" parts={shown_parts}")
        what = f"CompleteMultipartUpload {up.key} {up.label} ({kind}) parts={shown_parts}"
        if error is not None:
            self.expect_error(response, 400, error, what)
            self.done[f"complete -> {error}"] += 1
            self.list_parts(up, 1000)  # intact
            return
        self.equal(response.status_code, 200, what)
        root = xml(response)
        self.equal(root.tag, f"{NS}CompleteMultipartUploadResult", f"{what}: answer")
        numbers = [n for n, _ in listed]
        parts = [up.parts[n] for n in numbers]
        made = Obj(b"".join(p.body for p in parts), multipart_etag([p.etag for p in parts]),
                   [len(p.body) for p in parts])
        self.equal(texts(root, "ETag"), [quoted(made.etag)], f"{what}: ETag")
        self.equal(texts(root, "Key"), [up.key], f"{what}: Key")
        self.equal(texts(root, "Bucket"), [self.bucket], f"{what}: Bucket")
        self.model.uploads.remove(up)
        self.model.objects[up.key] = made
        self.model.completed[up.uid] = Completion(up.key, listed, made)
        self.done[f"complete ({len(listed)} parts)"] += 1

    def some_parts(self, up: Upload) -> list[int]:
        """Part numbers to complete `up` with, ascending: mostly shaped to succeed
        (parts of 5 MiB or more, or a byte less, then any last one), else any non-empty subset."""
        numbers = sorted(up.parts)
        if self.rng.random() < 0.7:
            big = [n for n in numbers if len(up.parts[n].body) >= MIN_PART_SIZE - 1]  # (one byte short: refused)
            chosen = sorted(self.rng.sample(big, self.rng.randint(min(1, len(big)), len(big))))
            later = [n for n in numbers if not chosen or n > chosen[-1]]
            if later and (not chosen or self.rng.random() < 0.8):
                chosen.append(self.rng.choice(later))
            if chosen:
                return chosen
        return sorted(self.rng.sample(numbers, self.rng.randint(1, len(numbers))))

    def etag_text(self, part: Part) -> str:
        """A part's ETag as a client lists it: quoted, or now and then bare (S3 takes both)."""
        return part.etag if self.rng.random() < 0.1 else quoted(part.etag)

    def complete_right(self, up: Upload) -> bool:
        if not up.parts:
            return False
        self.complete(up, [(n, self.etag_text(up.parts[n])) for n in self.some_parts(up)], "right")
        return True

    def complete_wrong(self, up: Upload) -> None:
        """A list wrong on purpose: descending, naming a part never uploaded, or a wrong ETag."""
        numbers = sorted(up.parts)
        listed = [(n, self.etag_text(up.parts[n])) for n in self.some_parts(up)] if numbers else []
        way = self.rng.choice(["unknown"] + (["etag"] if listed else []) + (["order"] if len(numbers) >= 2 else []))
        if way == "order":
            if len(listed) < 2:
                listed = [(n, self.etag_text(up.parts[n])) for n in numbers]
            i = self.rng.randrange(len(listed) - 1)
            listed[i], listed[i + 1] = listed[i + 1], listed[i]
        elif way == "etag":
            i = self.rng.randrange(len(listed))
            others = [p.etag for p in up.parts.values() if p.etag != unquoted(listed[i][1])]
            listed[i] = (listed[i][0], quoted(self.rng.choice(others) if others and self.rng.random() < 0.5
                                              else md5(b"never sent" + bytes([i]))))
        else:
            missing = [n for n in PART_NUMBERS if n not in up.parts]
            if not missing:
                return
            number = self.rng.choice(missing)
            etag = self.rng.choice([p.etag for p in up.parts.values()] or [md5(b"never sent")])
            listed = sorted([*listed, (number, quoted(etag))])
        self.complete(up, listed, f"wrong: {way}")

    def complete_again(self, uid: str) -> None:
        """A completed upload's completion sent again: the same list (ETags quoted or not)
        answers its object while that is still the key's current one; another list, or an
        object since replaced or deleted, is NoSuchUpload."""
        done = self.model.completed[uid]
        same = self.rng.random() < 0.7
        listed = [(n, self.rng.choice((quoted, unquoted))(e)) for n, e in done.listed]
        if not same:
            listed = listed[:-1] if len(listed) > 1 else [(listed[0][0], quoted(md5(b"other")))]
        response = self.send("POST", done.key, body=complete_xml(listed), query={"uploadId": uid},
                             note=f" parts={[(n, unquoted(e)[:6]) for n, e in listed]}")
        what = f"CompleteMultipartUpload again {done.key} {self.label(uid)} ({'same' if same else 'other'} list)"
        if same and self.model.objects.get(done.key) is done.made:
            self.equal(response.status_code, 200, what)
            self.equal(texts(xml(response), "ETag"), [quoted(done.made.etag)], f"{what}: ETag")
            self.done["complete again -> 200"] += 1
        else:
            self.expect_error(response, 404, "NoSuchUpload", what)
            self.done["complete again -> NoSuchUpload"] += 1

    def abort(self, up: Upload) -> None:
        response = self.send("DELETE", up.key, query={"uploadId": up.uid})
        self.equal(response.status_code, 204, f"AbortMultipartUpload {up.key} {up.label}")
        self.model.uploads.remove(up)
        self.model.aborted.append(up.uid)
        self.done["abort"] += 1

    def no_such_upload(self, key: str, uid: str, action: str) -> None:
        """`action` on an upload id S3 does not hold for `key` (aborted, completed, unknown,
        or another key's): 404 NoSuchUpload, and nothing changes."""
        what = f"{action} {key} {self.label(uid)} (no such upload for the key)"
        if action == "UploadPart":
            number = self.rng.choice(PART_NUMBERS)
            response = self.send("PUT", key, body=b"late", query={"partNumber": str(number), "uploadId": uid})
        elif action == "ListParts":
            response = self.send("GET", key, query={"uploadId": uid})
        elif action == "Abort":
            response = self.send("DELETE", key, query={"uploadId": uid})
        else:
            listed = [(1, quoted(md5(b"late")))]
            response = self.send("POST", key, body=complete_xml(listed), query={"uploadId": uid})
        self.expect_error(response, 404, "NoSuchUpload", what)
        self.done[f"{action} -> NoSuchUpload"] += 1

    # -- objects --

    def put(self, key: str) -> None:
        body = f"put s{self.seed}-{self.step}-{key}".encode()
        response = self.send("PUT", key, body=body)
        self.equal(response.status_code, 200, f"PUT {key}")
        self.equal(response.headers.get("etag"), quoted(md5(body)), f"PUT {key}: ETag")
        self.model.objects[key] = Obj(body, md5(body))
        self.done["put"] += 1

    def delete(self, key: str) -> None:
        response = self.send("DELETE", key)
        self.equal(response.status_code, 204, f"DELETE {key}")
        self.model.objects.pop(key, None)
        self.done["delete"] += 1

    def get(self, key: str, method: str) -> None:
        response = self.send(method, key)
        obj = self.model.objects.get(key)
        what = f"{method} {key}"
        if obj is None:
            self.expect_error(response, 404, "NoSuchKey", what, method)
            return
        self.equal(response.status_code, 200, what)
        if method == "GET":
            self.expect(response.content == obj.body,
                        f"{what}: body of {len(response.content)} bytes (MD5 {md5(response.content)}),"
                        f" S3 would answer {len(obj.body)} (MD5 {md5(obj.body)})")
        self.equal(response.headers.get("content-length"), str(len(obj.body)), f"{what}: content-length")
        self.equal(response.headers.get("etag"), quoted(obj.etag), f"{what}: ETag")
        self.equal(response.headers.get("x-amz-mp-parts-count"), None, f"{what}: x-amz-mp-parts-count")
        self.done[f"{method} object"] += 1

    def get_part(self, key: str, number: int, method: str) -> None:
        """GET / HEAD ?partNumber: the number-th part of the completed object (by position in
        the completion's list), the whole of a simple object for 1; past the last, InvalidPart."""
        response = self.send(method, key, query={"partNumber": str(number)})
        obj = self.model.objects.get(key)
        what = f"{method} {key}?partNumber={number}"
        if obj is None:
            self.expect_error(response, 404, "NoSuchKey", what, method)
            return
        sizes = obj.sizes or [len(obj.body)]
        if number > len(sizes):
            self.expect_error(response, 400, "InvalidPart", what, method)
            self.done[f"{method} ?partNumber -> InvalidPart"] += 1
            return
        start, length = sum(sizes[: number - 1]), sizes[number - 1]
        self.equal(response.status_code, 200 if obj.sizes is None else 206, what)
        if method == "GET":
            self.expect(response.content == obj.body[start:start + length],
                        f"{what}: body of {len(response.content)} bytes, S3 would answer bytes"
                        f" {start}..{start + length} of the object")
        self.equal(response.headers.get("content-length"), str(length), f"{what}: content-length")
        self.equal(response.headers.get("etag"), quoted(obj.etag), f"{what}: ETag")
        if obj.sizes is None:
            self.equal(response.headers.get("x-amz-mp-parts-count"), None, f"{what}: x-amz-mp-parts-count")
        else:
            self.equal(response.headers.get("x-amz-mp-parts-count"), str(len(sizes)), f"{what}: x-amz-mp-parts-count")
            if length:  # (a part of no bytes has no range to name)
                self.equal(response.headers.get("content-range"),
                           f"bytes {start}-{start + length - 1}/{len(obj.body)}", f"{what}: content-range")
        self.done[f"{method} ?partNumber"] += 1

    def full_check(self) -> None:
        """Every key read back (each part of an object of several), the uploads listed whole and paged by one, every pending
        upload's parts listed whole and paged by one."""
        for key in self.keys:
            self.get(key, "GET")
            obj = self.model.objects.get(key)
            if obj is not None and obj.sizes is not None and len(obj.sizes) > 1:
                for number in range(1, len(obj.sizes) + 2):
                    self.get_part(key, number, "GET")
        self.list_uploads("", "", 1000)
        self.list_uploads("", "", 1)
        self.list_uploads("", "/", 1)
        for up in list(self.model.uploads):
            self.list_parts(up, 1000)
            if len(up.parts) > 1:
                self.list_parts(up, 1)

    # -- the random walk --

    def _pending(self) -> Upload | None:
        """A pending upload: half the time the one last acted on (so that some gather
        parts), else any."""
        if self.focus in self.model.uploads and self.rng.random() < 0.5:
            return self.focus
        self.focus = self.rng.choice(self.model.uploads) if self.model.uploads else None
        return self.focus

    def _completable(self) -> Upload | None:
        """A pending upload, preferably one that parts of 5 MiB let complete with several parts."""
        def several(up: Upload) -> bool:
            big = [n for n, p in up.parts.items() if len(p.body) >= MIN_PART_SIZE - 1]
            return bool(big) and max(up.parts) > min(big)
        ready = [u for u in self.model.uploads if several(u)]
        if ready and self.rng.random() < 0.6:
            return self.rng.choice(ready)
        return self._pending()

    def _stale(self) -> tuple[str, str] | None:
        """(key, upload id) S3 does not hold for that key: aborted, completed, never issued,
        or a pending upload's id with another key."""
        choices: list[tuple[str, str]] = [(self.rng.choice(self.keys), "bm90LWFuLXVwbG9hZC1pZC1hdC1hbGw")]
        choices += [(self.model.completed[u].key, u) for u in self.model.completed]
        choices += [(self.rng.choice(self.keys), u) for u in self.model.aborted]
        choices += [(self.rng.choice([k for k in self.keys if k != u.key]), u.uid) for u in self.model.uploads]
        return self.rng.choice(choices)

    def operations(self) -> list[tuple[int, Callable[[], bool]]]:
        """(weight, operation); an operation answers False when it had nothing to act on."""
        rng = self.rng

        def on_upload(act: Callable[[Upload], object], pick: Callable[[], Upload | None] = self._pending) -> bool:
            up = pick()
            if up is None:
                return False
            return act(up) is not False

        def once(act: Callable[[], None]) -> bool:
            act()
            return True

        def stale(action: str) -> bool:
            chosen = self._stale()
            if chosen is None:
                return False
            self.no_such_upload(*chosen, action)
            return True

        def again() -> bool:
            if not self.model.completed:
                return False
            self.complete_again(rng.choice(list(self.model.completed)))
            return True

        def list_uploads() -> None:
            prefix, delimiter, max_uploads = rng.choice(self.prefixes), rng.choice(DELIMITERS), rng.choice(MAX_UPLOADS)
            key_marker = id_marker = ""
            if not delimiter and rng.random() < 0.3:  # start after a key (and one of its uploads)
                key_marker = rng.choice(self.keys)
                held = self.model.of_key(key_marker)
                if held and rng.random() < 0.6:
                    id_marker = rng.choice(held).uid
            self.list_uploads(prefix, delimiter, max_uploads, key_marker, id_marker)

        def list_parts(up: Upload) -> None:
            self.list_parts(up, rng.choice(MAX_PARTS), rng.choice(PART_MARKERS) if rng.random() < 0.2 else 0)

        return [
            (12, lambda: once(lambda: self.create(rng.choice(self.keys)))),
            (32, lambda: on_upload(lambda up: self.upload_part(up, rng.choice(PART_NUMBERS)))),
            (6, lambda: on_upload(list_parts)),
            (7, lambda: once(list_uploads)),
            (7, lambda: on_upload(self.complete_right, self._completable)),
            (5, lambda: on_upload(self.complete_wrong, self._completable)),
            (3, again),
            (3, lambda: on_upload(self.abort)),
            (6, lambda: stale(rng.choice(("UploadPart", "ListParts", "Abort", "Complete")))),
            (5, lambda: once(lambda: self.put(rng.choice(self.keys)))),
            (4, lambda: once(lambda: self.delete(rng.choice(self.keys)))),
            (4, lambda: once(lambda: self.get(rng.choice(self.keys), rng.choice(("GET", "GET", "HEAD"))))),
            (5, lambda: once(lambda: self.get_part(rng.choice(self.keys), rng.choice((1, 1, 2, 3, 10000)),
                                                   rng.choice(("GET", "GET", "HEAD"))))),
        ]

    def run(self) -> int:
        """Run the walk; returns the number of requests checked."""
        self.take_steps(self.operations(), self.steps, FULL_CHECK_EVERY, self.full_check)
        return self.requests


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_multipart_walk_matches_model(s3: InProcessS3, bucket: str, seed: int) -> None:
    assert Run(s3, bucket, seed, steps=200).run() > 200


@pytest.mark.parametrize("seed", [11, 12])
def test_long_keys_multipart_walk_matches_model(s3: InProcessS3, bucket: str, seed: int) -> None:
    """The same walk over keys at the upload index's cut (long_keys)."""
    keys, prefixes = long_keys(bucket)
    assert Run(s3, bucket, seed, steps=200, keys=keys, prefixes=prefixes).run() > 200



@pytest.mark.parametrize("seed", [21])
def test_multipart_walk_matches_model_on_postgresql(pg_s3: InProcessS3, seed: int) -> None:
    assert Run(pg_s3, "bkt", seed, steps=150).run() > 150

