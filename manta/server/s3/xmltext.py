"""Text inside the XML documents S3 answers with, object keys above all.

S3 keys may hold any character but NUL, and XML 1.0 cannot carry all of them:

- a parser turns a literal carriage return (and CR LF) into a line feed, so CR and LF are
  written as the character references &#13; and &#10;, which survive the round trip;
- the other C0 controls (but tab), U+FFFE, U+FFFF and lone surrogates are not allowed in
  XML 1.0 at all, not even as references. AWS writes them as references anyway (`&#x1;`),
  which parsers reject. Here a listing that would hold one answers with url-encoded keys
  and says so (<EncodingType>url</EncodingType>, as if encoding-type=url had been asked;
  `fits` tells the listing when), and any other document writes U+FFFD in their place so
  that it stays well-formed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["escape", "fits", "fit_all"]

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SPECIAL = re.compile("[&<>\r\n]")
_REFERENCES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;", "\n": "&#10;"}


def fits(text: str) -> bool:
    """Whether XML 1.0 can carry `text` as it is."""
    return _NOT_XML.search(text) is None


def fit_all(texts: Iterable[str]) -> bool:
    return all(fits(text) for text in texts)


def escape(text: str) -> str:
    """`text` as element content."""
    escaped = _SPECIAL.sub(lambda m: _REFERENCES[m.group()], text)
    return _NOT_XML.sub("\ufffd", escaped)
