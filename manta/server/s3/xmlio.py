"""XML in and out: S3 response documents and bounded, strict parsing of request bodies."""

from __future__ import annotations

import datetime as dt
import functools
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from manta.server.s3 import errors as s3e
from manta.server.s3.xmltext import escape

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def iso8601(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def http_date(ts: float) -> str:
    """An HTTP date (RFC 9110 IMF-fixdate), of the second `ts` falls in."""
    return _http_date(math.floor(ts))


@functools.lru_cache(maxsize=4096)  # an object's Last-Modified, on every GET and HEAD of it
def _http_date(second: int) -> str:
    return dt.datetime.fromtimestamp(second, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def el(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def document(root: str, body: Iterable[str]) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}">'
            + "".join(body) + f"</{root}>").encode()


def parse(body: bytes, root: str) -> ET.Element:
    """Parse a request body whose root element must be `root` (namespace optional). A
    document type declaration is MalformedXML, as S3 answers: its entities would expand
    past every limit on the body's size (a 2 MiB DeleteObjects became 200 MB)."""
    if not body.strip():
        raise s3e.MalformedXML()
    parser = ET.XMLParser(target=_NoDoctype())
    try:
        parser.feed(body)
        tree = parser.close()
    except (ET.ParseError, _Doctype):
        raise s3e.MalformedXML() from None
    if local(tree.tag) != root:
        raise s3e.MalformedXML()
    return tree


class _Doctype(Exception):
    pass


class _NoDoctype(ET.TreeBuilder):
    """A tree builder that stops at a document type declaration, before its entities."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise _Doctype(name)


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def children(node: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in node if local(c.tag) == name]


def child_text(node: ET.Element, name: str, default: str | None = None) -> str | None:
    for c in node:
        if local(c.tag) == name:
            return c.text or ""
    return default
