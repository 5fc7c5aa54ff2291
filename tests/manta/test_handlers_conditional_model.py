"""A randomized, model-based test of ranges and conditional requests.

Each run drives the real S3 app in-process (tests/inprocess.py) with a seeded stream of
random operations on a few keys of an unversioned bucket, one of them starting as a
two-part multipart object (5 MiB + a small part, so that ranges cross its segments):
PUTs (0, 1, 2, 10, 1000 or, rarely, 100 000 random bytes: past the server's in-memory
paths), some of them conditional (If-None-Match: *, If-Match); DELETEs; GETs and HEADs
with a Range and/or conditional headers; CopyObject with x-amz-copy-source-if-* conditions
(onto another key, or onto itself with REPLACE, which changes Last-Modified and keeps the
ETag); UploadPartCopy with an x-amz-copy-source-range and conditions, followed by a
conditional CompleteMultipartUpload (or an abort). Next to the server runs a model of what
AWS S3 answers (RFC 9110 preconditions and ranges as S3 applies them): per key its bytes,
its ETag (as the write answered it) and its Last-Modified (as a HEAD after the write
answered it). Every answer is checked: status, error code, body bytes, Content-Range,
Content-Length, ETag and Last-Modified.

Where AWS's answer is not documented and not known here, the model accepts each plausible
answer (a set of outcomes rather than one); `Doubt` lists those points. Dates used in the
conditions: the object's Last-Modified exactly, one second before and after, another
object's or now, far past and far future, invalid strings, and Last-Modified +-1 s in the
two obsolete HTTP-date forms (RFC 850, asctime). Most runs stamp objects with a stepped
clock (`SteppedClock`): objects years old and seconds apart; one uses the real clock.

Not modelled, because the server does not implement them: If-Range, conditional
CopyObject on the destination (If-Match / If-None-Match with x-amz-copy-source),
conditional DeleteObject, and If-None-Match with an ETag on a write (the server answers
501 NotImplemented; checked).

Answers the server gives that S3 would not are checked by the focused tests at the end of
this file (they fail), and kept out of the walk so that it can find others.

The stepped-clock runs are deterministic (random.Random(seed), and the server's mtimes from
the clock); a failure names the seed, the step, the model and the tail of the request
history.
"""

from __future__ import annotations

import email.utils
import hashlib
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import pytest

from manta.server.s3 import multipart as multipart_module
from manta.server.s3 import obj as obj_module
from tests.inprocess import NS, InProcessS3, error_code, xml
from tests.manta.walk import Checks

KEYS = ("a", "b", "dir/c", "d e", "mp")
SIZES = (0, 1, 2, 10, 1000, 100_000)  # 100 000: past the server's in-memory paths (64 KiB)
SIZE_WEIGHTS = (3, 3, 3, 3, 3, 1)
MIB = 1024 * 1024
START = 1_700_000_000.25  # the stepped clock's first time (Tue, 14 Nov 2023 22:13:20 GMT)
ZERO_ETAG = '"' + "0" * 32 + '"'
FAR_PAST = 631152000  # Mon, 01 Jan 1990 00:00:00 GMT
FAR_FUTURE = 4102444800  # Fri, 01 Jan 2100 00:00:00 GMT
INVALID_DATES = ("not a date", "Sun, 32 Nov 2020 00:00:00 GMT", "Tue, 01 Foo 2020 00:00:00 GMT", "yesterday")

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def md5_etag(body: bytes) -> str:
    return f'"{hashlib.md5(body).hexdigest()}"'


def multipart_etag(parts: list[bytes]) -> str:
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def imf_date(t: int) -> str:
    """RFC 9110's preferred HTTP-date (IMF-fixdate)."""
    return email.utils.formatdate(t, usegmt=True)


def rfc850_date(t: int) -> str:
    g = time.gmtime(t)
    return (f"{LONG_DAYS[g.tm_wday]}, {g.tm_mday:02d}-{MONTHS[g.tm_mon - 1]}-{g.tm_year % 100:02d} "
            f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} GMT")


def asctime_date(t: int) -> str:
    g = time.gmtime(t)
    return (f"{DAYS[g.tm_wday]} {MONTHS[g.tm_mon - 1]} {g.tm_mday:2d} "
            f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} {g.tm_year}")


def seconds(http_date: str) -> int:
    return int(email.utils.parsedate_to_datetime(http_date).timestamp())


# -- the model ---------------------------------------------------------------------------


@dataclass
class Obj:
    body: bytes
    etag: str  # quoted, as the write answered it
    modified: str  # Last-Modified, as the HEAD after the write answered it
    parts: tuple[int, ...] = ()  # a multipart object's part sizes (where ranges may cross)

    @property
    def mtime(self) -> int:
        return seconds(self.modified)

    @property
    def multipart(self) -> bool:
        return "-" in self.etag


class Doubt:
    """Points where AWS S3's answer is not known here; the model accepts each listed answer.

    - ETAG_FORMS: a weak (W/"..."), unquoted or comma-separated ETag that names the object's
      ETag may or may not match (RFC 9110: If-Match compares strongly, so W/ never matches;
      If-None-Match weakly; a list matches if any member does).
    - OBSOLETE_DATES: RFC 850 and asctime dates may be honoured or ignored (RFC 9110 says a
      recipient MUST accept them; S3 does not say).
    - FUTURE_IMS: an If-Modified-Since later than the request's time may be ignored (RFC
      2616 called it invalid; RFC 9110 does not; S3 reportedly ignores it).
    - NONE_MATCH_THEN_SINCE: If-None-Match that does not match with If-Modified-Since that
      says "not modified": RFC 9110 ignores If-Modified-Since (200 / the copy proceeds);
      S3 documents only the opposite combination.
    - SUFFIX_ZERO: bytes=-0 is unsatisfiable by RFC 9110 (416); S3 may ignore it (200).
    - EMPTY_SUFFIX: a suffix range of a 0-byte object: 416, or the empty body with 200.
    - MULTI_RANGE: S3 serves one range: the whole object (200) or the first range.
    - LOOSE_RANGE: a Range header outside the strict grammar S3 may still read (unit in
      capitals, spaces, a '+' sign, "--n"): the range as read, or ignored (200); "--n"
      also 416 (read as a negative suffix).
    - COPY_RANGE_PAST_END: an x-amz-copy-source-range past the source's end or reversed:
      400 InvalidArgument, 400 or 416 InvalidRange (ceph's s3-tests accept 400 or 416, with
      InvalidRange in one copy of them and InvalidArgument in another).
    - COPY_RANGE_UNIT: an x-amz-copy-source-range in another unit than bytes ("items=1-2"):
      400 InvalidArgument (ceph's s3-tests expect it for a malformed range) or 416 InvalidRange.
    - COPY_RANGE_SIGNED: an x-amz-copy-source-range with a negative last byte
      ("bytes=0--1"): malformed (400 InvalidArgument), or read as a reversed range (as
      COPY_RANGE_PAST_END).
    - COPY_OF_MULTIPART: CopyObject of a multipart object: the copy keeps the source's
      ETag or gets the MD5 of its bytes.
    - PUT_IF_MATCH_STAR: If-Match: * on a PUT (S3 documents only ETags).
    - RANGE_416_CONTENT_RANGE: a 416 may carry Content-Range: bytes */size (RFC 9110
      SHOULD) or not; if it does, it must name the size.
    """


@dataclass(frozen=True)
class TagCond:
    """An If-Match / If-None-Match value: the ETags it names (unquoted), `star` for "*",
    `sure` False for a form S3 may not read as RFC 9110 does (weak, unquoted, a list)."""

    text: str
    tags: tuple[str, ...] = ()
    star: bool = False
    sure: bool = True

    def matches(self, etag: str) -> frozenset[bool]:
        if self.star:
            return frozenset({True})
        if etag.strip('"') not in self.tags:
            return frozenset({False})
        return frozenset({True}) if self.sure else frozenset({True, False})  # Doubt.ETAG_FORMS


@dataclass(frozen=True)
class DateCond:
    """An If-Modified-Since / If-Unmodified-Since value and the seconds it may stand for
    (None: ignored, as an invalid date is)."""

    text: str
    at: frozenset[int | None]


@dataclass(frozen=True)
class Conds:
    match: TagCond | None = None
    none_match: TagCond | None = None
    unmodified: DateCond | None = None
    modified: DateCond | None = None

    def headers(self, prefix: str) -> dict[str, str]:
        named = {"match": self.match, "none-match": self.none_match,
                 "unmodified-since": self.unmodified, "modified-since": self.modified}
        return {prefix + name: c.text for name, c in named.items() if c is not None}


def _decide(mtime: int, match: bool | None, none_match: bool | None, unmodified: int | None,
            modified: int | None) -> set[str]:
    """RFC 9110 13.2.2 for GET/HEAD, one reading of each header (None: absent or ignored):
    "ok", "412" or "304". S3 documents the two exceptions RFC 9110 already makes: If-Match
    true wins over If-Unmodified-Since false, If-None-Match false over If-Modified-Since true."""
    if match is False:
        return {"412"}
    if match is None and unmodified is not None and mtime > unmodified:
        return {"412"}
    if none_match is True:
        return {"304"}
    if modified is not None and mtime <= modified:
        return {"304"} if none_match is None else {"ok", "304"}  # Doubt.NONE_MATCH_THEN_SINCE
    return {"ok"}


def preconditions(obj: Obj, conds: Conds, now: int, copy: bool) -> set[str]:
    """What the preconditions may answer for `obj`: "ok", "412", "304" (a copy: "ok", "412")."""
    out: set[str] = set()
    modified_at: frozenset[int | None] = frozenset({None})
    if conds.modified is not None:
        modified_at = conds.modified.at
        if any(t is not None and t > now for t in modified_at):
            modified_at = modified_at | {None}  # Doubt.FUTURE_IMS
    for m in conds.match.matches(obj.etag) if conds.match else (None,):
        for n in conds.none_match.matches(obj.etag) if conds.none_match else (None,):
            for u in conds.unmodified.at if conds.unmodified else (None,):
                for s in modified_at:
                    out |= _decide(obj.mtime, m, n, u, s)
    return {"412" if copy and o == "304" else o for o in out}


# Outcomes: ("200",) the whole object; ("206", start, length); ("304",); ("412",); ("416",);
# ("404",); ("400", code) ... (errors of a copy carry their code).
Outcome = tuple[object, ...]
WHOLE: Outcome = ("200",)

_FIRST_LAST = re.compile(r"bytes=([0-9]+)-([0-9]*)")
_SUFFIX = re.compile(r"bytes=-([0-9]+)")


def _strict_range(text: str, size: int) -> set[Outcome] | None:
    """The outcomes of a Range in S3's grammar (RFC 9110, one range); None if it is not one."""
    if m := _FIRST_LAST.fullmatch(text):
        first, last = int(m[1]), int(m[2]) if m[2] else None
        if last is not None and last < first:
            return {WHOLE}  # not a valid range: ignored
        if first >= size:
            return {("416",)}
        end = size - 1 if last is None else min(last, size - 1)
        return {("206", first, end - first + 1)}
    if m := _SUFFIX.fullmatch(text):
        n = int(m[1])
        if n == 0:
            return {("416",), WHOLE}  # Doubt.SUFFIX_ZERO
        if size == 0:
            return {("416",), WHOLE}  # Doubt.EMPTY_SUFFIX
        n = min(n, size)
        return {("206", size - n, n)}
    return None


def range_outcomes(text: str, size: int) -> set[Outcome]:
    strict = _strict_range(text, size)
    if strict is not None:
        return strict
    unit, eq, spec = text.partition("=")
    if eq and unit == "bytes" and "," in spec:  # Doubt.MULTI_RANGE
        first = _strict_range("bytes=" + spec.split(",")[0], size)
        return {WHOLE} | (first or set())
    loose = re.sub(r"^bytes=", "bytes=", re.sub(r"\s+", "", text).replace("+", ""), flags=re.IGNORECASE)
    loose = loose.replace("bytes=--", "bytes=-")
    if loose != text and (read := _strict_range(loose, size)) is not None:  # Doubt.LOOSE_RANGE
        return {WHOLE} | read | ({("416",)} if "--" in text else set())
    return {WHOLE}  # not a range S3 reads: ignored


def copy_range_outcomes(text: str | None, size: int) -> set[Outcome]:
    """UploadPartCopy's x-amz-copy-source-range: ("200", start, length) or an error."""
    if text is None:
        return {("200", 0, size)}
    m = re.fullmatch(r"bytes=([0-9]+)-([0-9]+)", text)
    if m is None:
        if re.fullmatch(r"[a-z]+=[0-9]+-[0-9]+", text):  # another unit: Doubt.COPY_RANGE_UNIT
            return {("400", "InvalidArgument"), ("416", "InvalidRange")}
        if re.fullmatch(r"bytes=[0-9]+--[0-9]+", text):  # a negative last byte: Doubt.COPY_RANGE_SIGNED
            return {("400", "InvalidArgument"), ("400", "InvalidRange"), ("416", "InvalidRange")}
        return {("400", "InvalidArgument")}
    first, last = int(m[1]), int(m[2])
    if first <= last < size:
        return {("200", first, last - first + 1)}
    return {("400", "InvalidArgument"), ("400", "InvalidRange"), ("416", "InvalidRange")}  # Doubt.COPY_RANGE_PAST_END


# -- the run -----------------------------------------------------------------------------


class SteppedClock:
    """Stands for the `time` module in the server modules that stamp an object's mtime
    (s3/obj.py for PUT and copy, s3/multipart.py for completion): its time() is a value the
    walk moves forward between writes (0 to 7 s), so that objects are years old and a few
    seconds apart, some in the same second. Runs with it are reproducible to the second."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


@dataclass
class Run(Checks):
    """One seeded run against one bucket: random operations, each checked against the model."""

    s3: InProcessS3
    bucket: str
    seed: int
    steps: int
    clock: SteppedClock | None = None  # None: the server stamps objects with the real time
    rng: random.Random = field(init=False)
    objects: dict[str, Obj] = field(default_factory=dict)
    seen_etags: list[str] = field(default_factory=list)
    step: int = 0
    history: list[str] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- plumbing --

    def state(self) -> str:
        model = {k: (len(o.body), o.etag, o.modified) for k, o in sorted(self.objects.items())}
        return f"model: {model}"

    def send(self, method: str, key: str, *, body: bytes = b"", query: Mapping[str, str] | None = None,
             headers: Mapping[str, str] | None = None) -> httpx.Response:
        response = self.s3.request(method, f"/{self.bucket}/{key}", body=body, query=query, headers=headers)
        self.requests += 1
        answered = {h: response.headers[h] for h in ("etag", "content-range", "last-modified")
                    if h in response.headers}
        code = ""
        if response.status_code >= 300 and response.content:
            code = " " + (re.search(rb"<Code>(\w+)</Code>", response.content) or [b"", b"?"])[1].decode()
        shown_body = f" body={len(body)}B" if body and not body.startswith(b"<") else ""
        self.history.append(f"  [{self.step}] {method} {key!r} {dict(query or {})} {dict(headers or {})}"
                            f"{shown_body} -> {response.status_code}{code} {answered}")
        return response

    def code(self, response: httpx.Response, method: str) -> str | None:
        """The error code of an error response (HEAD has no body to carry one)."""
        if method == "HEAD":
            self.equal(response.content, b"", "HEAD error: body")
            return None
        return error_code(response)

    def new_body(self) -> bytes:
        return self.rng.randbytes(self.rng.choices(SIZES, SIZE_WEIGHTS)[0])

    def now(self) -> float:
        """The time the server stamps a write with."""
        return self.clock.now if self.clock is not None else time.time()

    def tick(self) -> None:
        """Before a write: the stepped clock moves on."""
        if self.clock is not None:
            self.clock.now += self.rng.choice((0.0, 0.0, 0.25, 1.0, 1.0, 2.0, 7.0))

    def remember(self, key: str, body: bytes, etag: str, before: float, after: float,
                 parts: tuple[int, ...] = ()) -> None:
        """The model's new object at `key`, with the Last-Modified a HEAD answers (checked:
        within the seconds the write ran in)."""
        head = self.send("HEAD", key)
        what = f"HEAD {key} after a write"
        self.equal(head.status_code, 200, what)
        self.equal(head.headers.get("etag"), etag, f"{what}: ETag")
        self.equal(head.headers.get("content-length"), str(len(body)), f"{what}: Content-Length")
        modified = head.headers.get("last-modified", "")
        self.expect(int(before) <= seconds(modified) <= int(after),
                    f"{what}: Last-Modified {modified} is not the time of the write "
                    f"({imf_date(int(before))} .. {imf_date(int(after))})")
        self.objects[key] = Obj(body, etag, modified, parts)
        if etag not in self.seen_etags:
            self.seen_etags.append(etag)

    # -- what the requests carry --

    def pick_key(self) -> str:
        """Mostly a key that holds an object, sometimes any (maybe missing)."""
        if self.objects and self.rng.random() < 0.85:
            return self.rng.choice(sorted(self.objects))
        return self.rng.choice(KEYS)

    def some_etag(self, obj: Obj | None) -> str:
        """An ETag (quoted) to name: the object's, one seen before, or one never seen."""
        roll = self.rng.random()
        if obj is not None and roll < 0.5:
            return obj.etag
        if self.seen_etags and roll < 0.85:
            return self.rng.choice(self.seen_etags)
        return ZERO_ETAG

    def tag_cond(self, obj: Obj | None) -> TagCond:
        etag = self.some_etag(obj)
        bare = etag.strip('"')
        form = self.rng.choices(("quoted", "star", "weak", "unquoted", "list"), (10, 2, 2, 2, 2))[0]
        if form == "quoted":
            return TagCond(etag, (bare,))
        if form == "star":
            return TagCond("*", star=True)
        if form == "weak":
            return TagCond(f"W/{etag}", (bare,), sure=False)
        if form == "unquoted":
            return TagCond(bare, (bare,), sure=False)
        other = self.some_etag(None)
        return TagCond(f"{other}, {etag}", (other.strip('"'), bare), sure=False)

    def date_cond(self, obj: Obj | None) -> DateCond:
        """A date around the object's Last-Modified (or another object's, or now)."""
        bases = [int(self.now())] + [o.mtime for o in self.objects.values()]
        base = obj.mtime if obj is not None and self.rng.random() < 0.7 else self.rng.choice(bases)
        kind = self.rng.choices(("exact", "before", "after", "past", "future", "invalid", "rfc850", "asctime"),
                                (4, 3, 3, 1, 1, 1, 1, 1))[0]
        if kind == "invalid":
            return DateCond(self.rng.choice(INVALID_DATES), frozenset({None}))
        t = {"exact": base, "before": base - 1, "after": base + 1, "past": FAR_PAST, "future": FAR_FUTURE,
             "rfc850": base + self.rng.choice((-1, 0, 1)), "asctime": base + self.rng.choice((-1, 0, 1))}[kind]
        if kind == "rfc850":
            return DateCond(rfc850_date(t), frozenset({t, None}))  # Doubt.OBSOLETE_DATES
        if kind == "asctime":
            return DateCond(asctime_date(t), frozenset({t, None}))  # Doubt.OBSOLETE_DATES
        return DateCond(imf_date(t), frozenset({t}))

    def conds(self, obj: Obj | None, chance: float) -> Conds:
        """Each of the four headers with probability `chance`."""
        rng = self.rng
        return Conds(match=self.tag_cond(obj) if rng.random() < chance else None,
                     none_match=self.tag_cond(obj) if rng.random() < chance else None,
                     unmodified=self.date_cond(obj) if rng.random() < chance else None,
                     modified=self.date_cond(obj) if rng.random() < chance else None)

    def range_text(self, size: int, parts: tuple[int, ...] = ()) -> str:
        rng = self.rng
        span = max(size, 1)
        edges = [sum(parts[:i]) + d for i in range(1, len(parts)) for d in (-1, 0, 1)]  # part boundaries
        a = rng.choice((0, 1, rng.randrange(span), size - 1, size, size + 1, size + 50, *edges)) if size else \
            rng.choice((0, 1, 5))
        a = max(a, 0)
        b = max(0, a + rng.choice((0, 1, 3, rng.randrange(span + 2))))
        n = rng.choice((0, 1, 2, rng.randrange(span) + 1, size, size + 1, size + 100))
        form = rng.choices(("first-last", "first-", "suffix", "reversed", "invalid", "multi", "loose"),
                           (8, 3, 4, 1, 2, 1, 2))[0]
        if form == "first-last":
            return f"bytes={a}-{b}"
        if form == "first-":
            return f"bytes={a}-"
        if form == "suffix":
            return f"bytes=-{n}"
        if form == "reversed":
            return f"bytes={a + 2}-{a}"
        if form == "invalid":
            return rng.choice(("items=0-1", "bytes=abc", "bytes=", "bytes=-", "bytes=1-2-3", "0-1", "bytes 0-1",
                               f"bytes={a}", "bytes=x-5"))
        if form == "multi":
            return f"bytes={a}-{b},{b + 2}-{b + 4}"
        return rng.choice((f"Bytes={a}-{b}", f"bytes= {a}-{b}", f"BYTES=-{n}", f"bytes=+{a}-{b}",
                           f"bytes=-+{n}", f"bytes=--{n}"))

    # -- operations --

    def put(self) -> None:
        """A PUT, plain or conditional (If-None-Match: *, If-Match with an ETag)."""
        key = self.pick_key()
        obj = self.objects.get(key)
        body = self.new_body()
        kind = self.rng.choices(("plain", "create", "match", "match-bare", "match-star", "none-match-etag"),
                                (6, 3, 4, 1, 1, 1))[0]
        headers: dict[str, str] = {}
        etag = self.some_etag(obj)
        want: set[Outcome]
        if kind == "plain":
            want = {("200",)}
        elif kind == "create":
            headers["If-None-Match"] = "*"
            want = {("412", "PreconditionFailed")} if obj else {("200",)}
        elif kind == "match":
            headers["If-Match"] = etag
            want = {("404", "NoSuchKey")} if obj is None else \
                {("200",)} if obj.etag == etag else {("412", "PreconditionFailed")}
        elif kind == "match-bare":  # Doubt.ETAG_FORMS
            headers["If-Match"] = etag.strip('"')
            want = {("404", "NoSuchKey")} if obj is None else \
                {("200",), ("412", "PreconditionFailed")} if obj.etag == etag else {("412", "PreconditionFailed")}
        elif kind == "match-star":  # Doubt.PUT_IF_MATCH_STAR
            headers["If-Match"] = "*"
            want = {("200",), ("412", "PreconditionFailed")} if obj else \
                {("404", "NoSuchKey"), ("412", "PreconditionFailed")}
        else:
            headers["If-None-Match"] = etag
            want = {("501", "NotImplemented")}
        self.tick()
        before = self.now()
        response = self.send("PUT", key, body=body, headers=headers)
        after = self.now()
        what = f"PUT {key!r} {headers}"
        got: Outcome = ("200",) if response.status_code == 200 else \
            (str(response.status_code), error_code(response))
        self.expect(got in want, f"{what}: got {got}, S3 would answer one of {sorted(want)}")
        if got == ("200",):
            self.equal(response.headers.get("etag"), md5_etag(body), f"{what}: ETag")
            self.remember(key, body, md5_etag(body), before, after)

    def delete(self) -> None:
        key = self.pick_key()
        response = self.send("DELETE", key)
        self.equal(response.status_code, 204, f"DELETE {key!r}")
        self.objects.pop(key, None)

    def get(self) -> None:
        """GET or HEAD with a Range and/or conditional headers."""
        rng = self.rng
        key = self.pick_key()
        obj = self.objects.get(key)
        method = "GET" if rng.random() < 0.75 else "HEAD"
        conds = self.conds(obj, rng.choice((0.0, 0.25, 0.5)))
        headers = conds.headers("if-")
        range_text = None
        if rng.random() < 0.6:
            range_text = self.range_text(len(obj.body), obj.parts) if obj else self.range_text(rng.choice(SIZES))
        if range_text is not None:
            headers["range"] = range_text
        now = int(time.time())  # the real clock: Doubt.FUTURE_IMS is about the server's time
        response = self.send(method, key, headers=headers)
        what = f"{method} {key!r} {headers}"
        if obj is None:
            self.equal(response.status_code, 404, what)
            self.equal(self.code(response, method), None if method == "HEAD" else "NoSuchKey", what)
            return
        want: set[Outcome] = set()
        for verdict in preconditions(obj, conds, now, copy=False):
            if verdict != "ok":
                want.add((verdict,))
            else:
                want |= range_outcomes(range_text, len(obj.body)) if range_text is not None else {WHOLE}
        status = str(response.status_code)
        got: Outcome = (status,)
        content_range = response.headers.get("content-range")
        if status == "206":
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range or "")
            self.expect(m is not None, f"{what}: 206 with Content-Range {content_range!r}")
            assert m is not None
            self.equal(int(m[3]), len(obj.body), f"{what}: the size in Content-Range")
            got = ("206", int(m[1]), int(m[2]) - int(m[1]) + 1)
        self.expect(got in want, f"{what}: got {got}, S3 would answer one of {sorted(want, key=str)}")
        self.check_answer(response, method, obj, got, what)

    def check_answer(self, response: httpx.Response, method: str, obj: Obj, got: Outcome, what: str) -> None:
        """The headers and body of a GET/HEAD answer whose outcome is `got`."""
        headers = response.headers
        size = len(obj.body)
        if got[0] in ("200", "206"):
            start, length = (0, size) if got[0] == "200" else (int(str(got[1])), int(str(got[2])))
            if method == "GET":
                self.equal(response.content, obj.body[start:start + length], f"{what}: body")
            else:
                self.equal(response.content, b"", f"{what}: HEAD body")
            self.equal(headers.get("content-length"), str(length), f"{what}: Content-Length")
            self.equal(headers.get("etag"), obj.etag, f"{what}: ETag")
            self.equal(headers.get("last-modified"), obj.modified, f"{what}: Last-Modified")
            want_range = f"bytes {start}-{start + length - 1}/{size}" if got[0] == "206" else None
            self.equal(headers.get("content-range"), want_range, f"{what}: Content-Range")
        elif got[0] == "304":
            self.equal(response.content, b"", f"{what}: 304 body")
            self.equal(headers.get("etag"), obj.etag, f"{what}: 304 ETag")
            self.expect(headers.get("last-modified") in (None, obj.modified), f"{what}: 304 Last-Modified")
            self.equal(headers.get("content-range"), None, f"{what}: 304 Content-Range")
        elif got[0] == "412":
            self.equal(self.code(response, method), None if method == "HEAD" else "PreconditionFailed", what)
        elif got[0] == "416":
            self.equal(self.code(response, method), None if method == "HEAD" else "InvalidRange", what)
            if method == "GET":
                self.equal(xml(response).findtext("ActualObjectSize"), str(size), f"{what}: ActualObjectSize")
            # Doubt.RANGE_416_CONTENT_RANGE
            self.expect(headers.get("content-range") in (None, f"bytes */{size}"),
                        f"{what}: 416 Content-Range {headers.get('content-range')!r}")

    def copy_source(self, key: str) -> str:
        source = f"{self.bucket}/{urllib.parse.quote(key)}"
        return "/" + source if self.rng.random() < 0.5 else source

    def copy(self) -> None:
        """CopyObject with x-amz-copy-source-if-* conditions; onto itself with REPLACE."""
        rng = self.rng
        src = self.pick_key()
        dst = src if rng.random() < 0.25 else rng.choice(KEYS)
        obj = self.objects.get(src)
        onto_itself = src == dst
        directive = "REPLACE" if onto_itself and rng.random() < 0.85 else rng.choice(("COPY", "REPLACE", None))
        conds = Conds() if onto_itself and directive != "REPLACE" else self.conds(obj, rng.choice((0.0, 0.3, 0.6)))
        headers = {"x-amz-copy-source": self.copy_source(src), **conds.headers("x-amz-copy-source-if-")}
        if directive is not None:
            headers["x-amz-metadata-directive"] = directive
        want: set[Outcome] = set()
        if obj is None:
            want = {("404", "NoSuchKey")}
        else:
            now = int(time.time())
            for verdict in preconditions(obj, conds, now, copy=True):
                if verdict == "412":
                    want.add(("412", "PreconditionFailed"))
                elif onto_itself and directive != "REPLACE":
                    want.add(("400", "InvalidRequest"))
                else:
                    want.add(("200",))
        self.tick()
        before = self.now()
        response = self.send("PUT", dst, headers=headers)
        after = self.now()
        what = f"CopyObject {src!r} -> {dst!r} {headers}"
        got: Outcome = ("200",) if response.status_code == 200 else \
            (str(response.status_code), error_code(response))
        self.expect(got in want, f"{what}: got {got}, S3 would answer one of {sorted(want)}")
        if got != ("200",):
            return
        assert obj is not None
        result = xml(response)
        self.equal(result.tag, f"{NS}CopyObjectResult", f"{what}: result")
        etag = result.findtext(f"{NS}ETag") or ""
        # Doubt.COPY_OF_MULTIPART
        self.expect(etag == obj.etag or (obj.multipart and etag == md5_etag(obj.body)),
                    f"{what}: copy's ETag {etag!r}, source's {obj.etag!r}")
        modified = result.findtext(f"{NS}LastModified") or ""
        self.expect(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", modified) is not None,
                    f"{what}: LastModified {modified!r}")
        self.remember(dst, obj.body, etag, before, after, obj.parts)
        self.equal(modified[:19], time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.objects[dst].mtime)),
                   f"{what}: CopyObjectResult LastModified against the copy's Last-Modified")

    def part_copy(self) -> None:
        """UploadPartCopy (x-amz-copy-source-range, conditions) then a conditional
        CompleteMultipartUpload of that one part, or an abort."""
        rng = self.rng
        src, dst = self.pick_key(), rng.choice(KEYS)
        obj = self.objects.get(src)
        self.tick()
        begun = self.now()
        created = self.send("POST", dst, query={"uploads": ""})
        self.equal(created.status_code, 200, f"CreateMultipartUpload {dst!r}")
        upload = xml(created).findtext(f"{NS}UploadId") or ""
        conds = self.conds(obj, rng.choice((0.0, 0.3)))
        headers = {"x-amz-copy-source": self.copy_source(src), **conds.headers("x-amz-copy-source-if-")}
        size = len(obj.body) if obj else 10
        range_text: str | None = None
        if rng.random() < 0.7:
            edges = [sum(obj.parts[:i]) for i in range(1, len(obj.parts))] if obj else []
            a = max(0, rng.choice((0, 1, rng.randrange(max(size, 1)), size - 1, size, *edges)))
            b = a + rng.choice((0, 1, 5, size))
            range_text = rng.choice((f"bytes={a}-{b}",) * 6 + (
                f"bytes={a + 3}-{a}", f"bytes={a}-", f"bytes=-{a + 1}", "bytes=0-1,3-4", f"{a}-{b}",
                "bytes=x-y", f"items={a}-{b}", f"bytes={a}--1"))
            headers["x-amz-copy-source-range"] = range_text
        want: set[Outcome] = set()
        if obj is None:
            want = {("404", "NoSuchKey")}
        else:
            for verdict in preconditions(obj, conds, int(time.time()), copy=True):
                if verdict == "412":
                    want.add(("412", "PreconditionFailed"))
                else:
                    want |= copy_range_outcomes(range_text, size)
        query = {"partNumber": "1", "uploadId": upload}
        response = self.send("PUT", dst, query=query, headers=headers)
        what = f"UploadPartCopy {src!r} -> {dst!r} {headers}"
        got: Outcome = (str(response.status_code), error_code(response)) if response.status_code != 200 else ()
        if response.status_code == 200:
            assert obj is not None
            part_etag = xml(response).findtext(f"{NS}ETag") or ""
            copied = next((o for o in want if o[0] == "200" and md5_etag(
                obj.body[int(str(o[1])):int(str(o[1])) + int(str(o[2]))]) == part_etag), None)
            self.expect(copied is not None, f"{what}: part ETag {part_etag!r}, "
                                            f"S3 would answer one of {sorted(want, key=str)}")
            assert copied is not None
            got = copied
        self.expect(got in want, f"{what}: got {got}, S3 would answer one of {sorted(want, key=str)}")
        if got[0] != "200":
            self.abort(dst, upload)
            return
        assert obj is not None
        start, length = int(str(got[1])), int(str(got[2]))
        self.complete(dst, upload, obj.body[start:start + length], begun)

    def complete(self, key: str, upload: str, data: bytes, begun: float) -> None:
        """CompleteMultipartUpload of one part holding `data`, maybe conditional."""
        obj = self.objects.get(key)
        part = (f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{md5_etag(data)}</ETag>"
                f"</Part></CompleteMultipartUpload>").encode()
        kind = self.rng.choice(("plain", "plain", "create", "match"))
        headers: dict[str, str] = {}
        want: Outcome = ("200",)
        if kind == "create":
            headers["If-None-Match"] = "*"
            want = ("412", "PreconditionFailed") if obj else ("200",)
        elif kind == "match":
            etag = self.some_etag(obj)
            headers["If-Match"] = etag
            want = ("404", "NoSuchKey") if obj is None else \
                ("200",) if obj.etag == etag else ("412", "PreconditionFailed")
        response = self.send("POST", key, body=part, query={"uploadId": upload}, headers=headers)
        after = self.now()
        what = f"CompleteMultipartUpload {key!r} {headers}"
        got: Outcome = ("200",) if response.status_code == 200 else \
            (str(response.status_code), error_code(response))
        self.equal(got, want, what)
        if got != ("200",):
            self.abort(key, upload)
            return
        etag = xml(response).findtext(f"{NS}ETag") or ""
        self.equal(etag, multipart_etag([data]), f"{what}: ETag")
        self.remember(key, data, etag, begun, after, (len(data),))

    def abort(self, key: str, upload: str) -> None:
        response = self.send("DELETE", key, query={"uploadId": upload})
        self.equal(response.status_code, 204, f"AbortMultipartUpload {key!r}")

    def two_part_object(self, key: str) -> None:
        """A multipart object of a 5 MiB part and a small one (ranges then cross segments)."""
        self.tick()
        begun = self.now()
        created = self.send("POST", key, query={"uploads": ""})
        self.equal(created.status_code, 200, f"CreateMultipartUpload {key!r}")
        upload = xml(created).findtext(f"{NS}UploadId") or ""
        parts = [self.rng.randbytes(5 * MIB), self.rng.randbytes(self.rng.choice((1, 1000)))]
        listed = ""
        for number, data in enumerate(parts, 1):
            sent = self.send("PUT", key, body=data, query={"partNumber": str(number), "uploadId": upload})
            self.equal((sent.status_code, sent.headers.get("etag")), (200, md5_etag(data)), f"UploadPart {number}")
            listed += f"<Part><PartNumber>{number}</PartNumber><ETag>{md5_etag(data)}</ETag></Part>"
        done = self.send("POST", key, body=f"<CompleteMultipartUpload>{listed}</CompleteMultipartUpload>".encode(),
                         query={"uploadId": upload})
        self.equal(done.status_code, 200, f"CompleteMultipartUpload {key!r}")
        etag = xml(done).findtext(f"{NS}ETag") or ""
        self.equal(etag, multipart_etag(parts), "CompleteMultipartUpload: ETag")
        self.remember(key, b"".join(parts), etag, begun, self.now(), tuple(len(p) for p in parts))

    def run(self) -> int:
        """Run the walk; returns the number of requests checked."""
        self.two_part_object("mp")
        ops: list[tuple[int, Callable[[], None]]] = [
            (16, self.put), (4, self.delete), (45, self.get), (10, self.copy), (5, self.part_copy)]
        weights = [w for w, _ in ops]
        for step in range(1, self.steps + 1):
            self.step = step
            self.rng.choices(ops, weights)[0][1]()
        return self.requests


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_conditional_walk_matches_model(s3: InProcessS3, bucket: str, seed: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SteppedClock(START)
    monkeypatch.setattr(obj_module, "time", clock)
    monkeypatch.setattr(multipart_module, "time", clock)
    assert Run(s3, bucket, seed, steps=400, clock=clock).run() > 400


def test_conditional_walk_matches_model_on_the_real_clock(s3: InProcessS3, bucket: str) -> None:
    """The same walk with the server's own clock: objects a second or two old at most."""
    assert Run(s3, bucket, 5, steps=300).run() > 300


# -- answers the server gives that S3 would not (kept out of the walk) ----------------------


def test_a_range_number_with_an_underscore_is_not_a_range(s3: InProcessS3, bucket: str) -> None:
    """RFC 9110's first-pos and last-pos are 1*DIGIT: "1_0" is no number, so the header is
    not a valid range and S3 ignores it (200, the whole object). Python's int() would read
    "1_0" as 10 and "+1" as 1 (obj.byte_pos reads ASCII digits only)."""
    data = bytes(range(100))
    s3.put(bucket, "k", data)
    for header in ("bytes=1_0-20", "bytes=10-2_0", "bytes=-1_0", "bytes=+1-2", "bytes=1-+2", "bytes=--1"):
        got = s3.request("GET", f"/{bucket}/k", headers={"range": header})
        assert (got.status_code, got.headers.get("content-range")) == (200, None), header
        assert got.content == data, header


def test_a_copy_source_range_number_with_an_underscore_is_invalid_argument(s3: InProcessS3, bucket: str) -> None:
    """x-amz-copy-source-range must be bytes=first-last in digits (S3 answers 400
    InvalidArgument to any other form); int() would read "1_0" as 10 and copy bytes 0-10."""
    s3.put(bucket, "src", bytes(range(100)))
    created = s3.request("POST", f"/{bucket}/dst", query={"uploads": ""})
    upload = xml(created).findtext(f"{NS}UploadId") or ""
    got = s3.request("PUT", f"/{bucket}/dst", query={"partNumber": "1", "uploadId": upload},
                     headers={"x-amz-copy-source": f"{bucket}/src", "x-amz-copy-source-range": "bytes=0-1_0"})
    assert got.status_code == 400 and error_code(got) == "InvalidArgument", (got.status_code, got.text)
