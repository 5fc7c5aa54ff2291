"""Bucket lifecycle configuration: the LifecycleConfiguration document, validated as S3
does, stored as storage.lifecycle's rules (which the storage daemon enforces).

    PUT ?lifecycle     LifecycleConfiguration XML (Content-MD5 or a flexible checksum
                       required) -> rules -> JSON in the bucket's configurations (kind
                       "lifecycle")
    GET ?lifecycle     the rules -> XML; none: 404 NoSuchLifecycleConfiguration
    DELETE ?lifecycle  204, with or without rules

Refusals: a document that does not follow the schema (unknown elements, a member twice,
Status other than Enabled/Disabled, no rules or more than 1000, both or neither of Filter
and Prefix, a Filter with two conditions outside And, Days with Date...) is MalformedXML;
values out of range (Days, NoncurrentDays, DaysAfterInitiation < 1, NewerNoncurrentVersions
outside 1..100, a Date not at midnight UTC, an ID over 255 characters, IDs repeated, size
bounds the wrong way round) are InvalidArgument; a rule without an action, tags with
ExpiredObjectDeleteMarker or AbortIncompleteMultipartUpload, or repeated tag keys are
InvalidRequest. Transitions (storage classes) are NotImplemented: there is one class.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import string
import xml.etree.ElementTree as ET
from typing import Any

from manta.server.s3 import bucketdoc
from manta.server.s3 import errors as s3e
from manta.server.s3.xmlio import children, document, el, local, parse
from storage.lifecycle import DAY_S, KIND, Filter, Rule, decode, encode

__all__ = ["delete_bucket_lifecycle", "get_bucket_lifecycle", "parse_rules", "put_bucket_lifecycle", "rules_xml"]

MAX_RULES = 1000
MAX_ID_CHARS = 255
MAX_NEWER_NONCURRENT = 100
MAX_DOCUMENT_BYTES = 1024 * 1024
_RULE_MEMBERS = {"ID", "Filter", "Prefix", "Status", "Expiration", "NoncurrentVersionExpiration",
                 "AbortIncompleteMultipartUpload", "Transition", "NoncurrentVersionTransition"}
_SIZES = {"ObjectSizeGreaterThan": "gt", "ObjectSizeLessThan": "lt"}


# -- the document -> rules --------------------------------------------------------------------

def parse_rules(body: bytes) -> list[Rule]:
    root = parse(body, "LifecycleConfiguration")
    if any(local(node.tag) != "Rule" for node in root):
        raise s3e.MalformedXML()
    nodes = children(root, "Rule")
    if not nodes or len(nodes) > MAX_RULES:
        raise s3e.MalformedXML()
    rules = [_rule(node) for node in nodes]
    ids = [rule.id for rule in rules]
    if len(set(ids)) != len(ids):
        raise s3e.InvalidArgument("Rule ID must be unique. Found same ID for more than one rule",
                                  ArgumentName="ID")
    return rules


def _members(node: ET.Element, allowed: set[str]) -> dict[str, list[ET.Element]]:
    found: dict[str, list[ET.Element]] = {}
    for child in node:
        name = local(child.tag)
        if name not in allowed:
            raise s3e.MalformedXML()
        found.setdefault(name, []).append(child)
    return found


def _one(found: dict[str, list[ET.Element]], name: str) -> ET.Element | None:
    nodes = found.get(name, [])
    if len(nodes) > 1:
        raise s3e.MalformedXML()
    return nodes[0] if nodes else None


def _text(node: ET.Element | None) -> str | None:
    if node is None:
        return None
    if len(node):
        raise s3e.MalformedXML()
    return node.text or ""


def _int(node: ET.Element | None) -> int | None:
    text = _text(node)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise s3e.MalformedXML() from None


def _positive(node: ET.Element | None, what: str, action: str) -> int | None:
    value = _int(node)
    if value is not None and value <= 0:
        raise s3e.InvalidArgument(f"'{what}' for {action} action must be a positive integer", ArgumentName=what)
    return value


def _rule(node: ET.Element) -> Rule:
    found = _members(node, _RULE_MEMBERS)
    if "Transition" in found or "NoncurrentVersionTransition" in found:
        raise s3e.NotImplemented_("Lifecycle transitions are not implemented: there is one storage class.")
    rule_id = _text(_one(found, "ID"))
    if rule_id is None or rule_id == "":
        rule_id = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(48))
    if len(rule_id) > MAX_ID_CHARS:
        raise s3e.InvalidArgument(f"ID length should not exceed allowed limit of {MAX_ID_CHARS}", ArgumentName="ID")
    status = _text(_one(found, "Status"))
    if status not in ("Enabled", "Disabled"):
        raise s3e.MalformedXML()
    flt_node, legacy = _one(found, "Filter"), _one(found, "Prefix")
    if (flt_node is None) == (legacy is None):
        raise s3e.MalformedXML()
    flt = _filter(flt_node) if flt_node is not None else Filter(_text(legacy) or "", form="legacy")
    rule = Rule(rule_id, status == "Enabled", flt)
    expiration = _one(found, "Expiration")
    if expiration is not None:
        rule = _expiration(rule, expiration)
    noncurrent = _one(found, "NoncurrentVersionExpiration")
    if noncurrent is not None:
        members = _members(noncurrent, {"NoncurrentDays", "NewerNoncurrentVersions"})
        days = _positive(_one(members, "NoncurrentDays"), "NoncurrentDays", "NoncurrentVersionExpiration")
        if days is None:
            raise s3e.MalformedXML()
        newer = _int(_one(members, "NewerNoncurrentVersions"))
        if newer is not None and not 1 <= newer <= MAX_NEWER_NONCURRENT:
            raise s3e.InvalidArgument(f"'NewerNoncurrentVersions' for NoncurrentVersionExpiration action must be "
                                      f"a positive integer up to {MAX_NEWER_NONCURRENT}",
                                      ArgumentName="NewerNoncurrentVersions")
        rule = _replace(rule, noncurrent_days=days, newer_noncurrent=newer)
    abort = _one(found, "AbortIncompleteMultipartUpload")
    if abort is not None:
        days = _positive(_one(_members(abort, {"DaysAfterInitiation"}), "DaysAfterInitiation"),
                         "DaysAfterInitiation", "AbortIncompleteMultipartUpload")
        if days is None:
            raise s3e.MalformedXML()
        if not flt.prefix_only:
            raise s3e.InvalidRequest("AbortIncompleteMultipartUpload cannot be specified with Tags or "
                                     "object size filters.")
        rule = _replace(rule, abort_days=days)
    if rule.expired_marker and flt.tags:
        raise s3e.InvalidRequest("ExpiredObjectDeleteMarker cannot be specified with Tags.")
    if (rule.expiration_days is None and rule.expiration_date is None and rule.expired_marker is None
            and rule.noncurrent_days is None and rule.abort_days is None):
        raise s3e.InvalidRequest("At least one action needs to be specified in a rule")
    return rule


def _replace(rule: Rule, **changes: Any) -> Rule:
    return dataclasses.replace(rule, **changes)


def _expiration(rule: Rule, node: ET.Element) -> Rule:
    members = _members(node, {"Days", "Date", "ExpiredObjectDeleteMarker"})
    days_node, date_node, marker_node = (_one(members, n) for n in ("Days", "Date", "ExpiredObjectDeleteMarker"))
    if sum(n is not None for n in (days_node, date_node, marker_node)) != 1:
        raise s3e.MalformedXML()
    if marker_node is not None:
        flag = (_text(marker_node) or "").strip()
        if flag not in ("true", "false"):
            raise s3e.MalformedXML()
        return _replace(rule, expired_marker=flag == "true")
    if days_node is not None:
        return _replace(rule, expiration_days=_positive(days_node, "Days", "Expiration"))
    return _replace(rule, expiration_date=_midnight(_text(date_node) or ""))


def _midnight(text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise s3e.InvalidArgument("Invalid date: 'Date' must be ISO 8601", ArgumentName="Date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    stamp = when.timestamp()
    if stamp % DAY_S:
        raise s3e.InvalidArgument("'Date' must be at midnight GMT", ArgumentName="Date")
    return stamp


def _tag(node: ET.Element) -> tuple[str, str]:
    members = _members(node, {"Key", "Value"})
    key, value = _text(_one(members, "Key")), _text(_one(members, "Value"))
    if key is None or value is None:
        raise s3e.MalformedXML()
    return key, value


def _size(node: ET.Element | None) -> int | None:
    value = _int(node)
    if value is not None and value < 0:
        raise s3e.InvalidArgument("Object size filters must be non-negative integers", ArgumentName="ObjectSize")
    return value


def _filter(node: ET.Element) -> Filter:
    found = _members(node, {"Prefix", "Tag", "And", *_SIZES})
    conditions = sum(len(v) for v in found.values())
    if conditions == 0:
        return Filter(form="none")
    if conditions > 1:
        raise s3e.MalformedXML()
    name, (child,) = next(iter(found.items()))
    if name == "Prefix":
        return Filter(_text(child) or "", form="prefix")
    if name == "Tag":
        return Filter(tags=(_tag(child),), form="tag")
    if name in _SIZES:
        size = _size(child)
        return Filter(size_gt=size, form="gt") if name == "ObjectSizeGreaterThan" else Filter(size_lt=size, form="lt")
    members = _members(child, {"Prefix", "Tag", *_SIZES})
    tags = tuple(_tag(t) for t in members.get("Tag", []))
    if len({k for k, _ in tags}) != len(tags):
        raise s3e.InvalidRequest("Duplicate Tag Keys are not allowed.")
    gt, lt = _size(_one(members, "ObjectSizeGreaterThan")), _size(_one(members, "ObjectSizeLessThan"))
    if gt is not None and lt is not None and gt >= lt:
        raise s3e.InvalidArgument("ObjectSizeGreaterThan must be less than ObjectSizeLessThan",
                                  ArgumentName="ObjectSizeGreaterThan")
    return Filter(_text(_one(members, "Prefix")) or "", tags, gt, lt, form="and")


# -- rules -> the document --------------------------------------------------------------------

def _tag_xml(key: str, value: str) -> str:
    return f"<Tag>{el('Key', key)}{el('Value', value)}</Tag>"


def _filter_xml(flt: Filter) -> str:
    if flt.form == "legacy":
        return el("Prefix", flt.prefix)
    if flt.form == "none":
        return "<Filter></Filter>"
    if flt.form == "prefix":
        return f"<Filter>{el('Prefix', flt.prefix)}</Filter>"
    if flt.form == "tag":
        return f"<Filter>{_tag_xml(*flt.tags[0])}</Filter>"
    if flt.form == "gt":
        return f"<Filter>{el('ObjectSizeGreaterThan', flt.size_gt)}</Filter>"
    if flt.form == "lt":
        return f"<Filter>{el('ObjectSizeLessThan', flt.size_lt)}</Filter>"
    parts = [el("Prefix", flt.prefix)] if flt.prefix else []
    parts += [_tag_xml(k, v) for k, v in flt.tags]
    if flt.size_gt is not None:
        parts.append(el("ObjectSizeGreaterThan", flt.size_gt))
    if flt.size_lt is not None:
        parts.append(el("ObjectSizeLessThan", flt.size_lt))
    return f"<Filter><And>{''.join(parts)}</And></Filter>"


def rules_xml(rules: list[Rule]) -> bytes:
    body = []
    for rule in rules:
        parts = [el("ID", rule.id), _filter_xml(rule.filter), el("Status", "Enabled" if rule.enabled else "Disabled")]
        if rule.expiration_days is not None:
            parts.append(f"<Expiration>{el('Days', rule.expiration_days)}</Expiration>")
        elif rule.expiration_date is not None:
            date = dt.datetime.fromtimestamp(rule.expiration_date, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            parts.append(f"<Expiration>{el('Date', date)}</Expiration>")
        elif rule.expired_marker is not None:
            flag = "true" if rule.expired_marker else "false"
            parts.append(f"<Expiration>{el('ExpiredObjectDeleteMarker', flag)}</Expiration>")
        if rule.noncurrent_days is not None:
            newer = (el("NewerNoncurrentVersions", rule.newer_noncurrent)
                     if rule.newer_noncurrent is not None else "")
            parts.append(f"<NoncurrentVersionExpiration>{el('NoncurrentDays', rule.noncurrent_days)}{newer}"
                         "</NoncurrentVersionExpiration>")
        if rule.abort_days is not None:
            parts.append("<AbortIncompleteMultipartUpload>"
                         f"{el('DaysAfterInitiation', rule.abort_days)}</AbortIncompleteMultipartUpload>")
        body.append(f"<Rule>{''.join(parts)}</Rule>")
    return document("LifecycleConfiguration", body)


# -- PutBucketLifecycleConfiguration, GetBucketLifecycleConfiguration, DeleteBucketLifecycle ----

put_bucket_lifecycle, get_bucket_lifecycle, delete_bucket_lifecycle = bucketdoc.handlers(
    KIND, MAX_DOCUMENT_BYTES, lambda body: encode(parse_rules(body)), lambda kept: rules_xml(decode(kept)),
    s3e.NoSuchLifecycleConfiguration)
