"""Bucket policies: the JSON policy language subset S3 users write, parsed, validated and
evaluated (pure: no catalog, no I/O).

    {"Version": "2012-10-17", "Id"?: "...",
     "Statement": [{"Sid"?, "Effect": "Allow"|"Deny",
                    "Principal"|"NotPrincipal": "*" | {"AWS": name | [names]} | {"CanonicalUser": ...},
                    "Action"|"NotAction": "s3:GetObject" | ["s3:Get*", ...],
                    "Resource"|"NotResource": "arn:aws:s3:::bucket/prefix*" | [...],
                    "Condition"?: {"Operator[IfExists]": {"key": value | [values]}}}]}

Principals are account names (an account here is an AWS account: `"bob"`,
`"arn:aws:iam::bob:root"`, or any IAM ARN of that account) or `*` (anyone, anonymous
included). Action and resource patterns take `*` and `?` (actions case-insensitively).
A statement applies when its principal, action, resource and every condition match
(several values of one key: any of them). `evaluate` answers DENY when any applying
statement denies, ALLOW when one allows and none denies, None otherwise.

Conditions, as IAM evaluates them: a key missing from the request context makes a
condition false, except negated operators (StringNotEquals, NotIpAddress...), which
are then true, `...IfExists` (true when missing) and `Null`. Keys are case-insensitive.

`is_public` follows S3's "meaning of public": an Allow statement is public unless it
names fixed principals (no `*`) or is limited by a fixed `aws:SourceIp` range (or another
fixed source key such as aws:SourceAccount or aws:SourceArn).
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["ALLOW", "DENY", "MAX_POLICY_BYTES", "Condition", "Policy", "PolicyError", "Statement",
           "check_keys", "matches", "parse_policy", "principal_name", "worst"]

ALLOW = "Allow"
DENY = "Deny"
MAX_POLICY_BYTES = 20 * 1024
VERSIONS = ("2012-10-17", "2008-10-17")
ARN_PREFIX = "arn:aws:s3:::"
ANYONE = "*"

STRING_OPS = {"StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
              "StringLike", "StringNotLike"}
NUMERIC_OPS = {"NumericEquals", "NumericNotEquals", "NumericLessThan", "NumericLessThanEquals",
               "NumericGreaterThan", "NumericGreaterThanEquals"}
DATE_OPS = {"DateEquals", "DateNotEquals", "DateLessThan", "DateLessThanEquals", "DateGreaterThan",
            "DateGreaterThanEquals"}
IP_OPS = {"IpAddress", "NotIpAddress"}
ARN_OPS = {"ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike"}
OPERATORS = STRING_OPS | NUMERIC_OPS | DATE_OPS | IP_OPS | ARN_OPS | {"Bool", "Null"}
NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "NumericNotEquals",
           "DateNotEquals", "NotIpAddress", "ArnNotEquals", "ArnNotLike"}
# request headers S3 offers as s3: condition keys, and the list parameters it offers
HEADER_KEYS = ("x-amz-acl", "x-amz-content-sha256", "x-amz-copy-source", "x-amz-metadata-directive",
               "x-amz-server-side-encryption", "x-amz-storage-class", "x-amz-grant-read", "x-amz-grant-write",
               "x-amz-grant-read-acp", "x-amz-grant-write-acp", "x-amz-grant-full-control")
LIST_KEYS = ("prefix", "delimiter", "max-keys")
# every condition key a request's context can hold (manta/server/s3/access.py context_of).
# A condition on any other would never hold: an Allow would grant nothing and, worse, a
# Deny would bind nothing. A policy naming one is MalformedPolicy (`check_keys`, at
# PutBucketPolicy); one stored before that check is read for the worst case (`_worst`).
CONDITION_KEYS = frozenset({
    "aws:securetransport", "aws:currenttime", "aws:epochtime", "aws:sourceip", "aws:useragent", "aws:referer",
    "aws:principalaccount", "aws:principalarn", "aws:principaltype", "s3:signatureversion", "s3:authtype",
    "s3:versionid", *("s3:" + h for h in HEADER_KEYS), *("s3:" + n for n in LIST_KEYS)})
# condition keys that, fixed by a positive comparison (`FIXING_OPS`) to values without
# wildcards, make an Allow to `*` non-public: they say who may come (a request header does
# not: any client sends what it likes)
FIXING_KEYS = {"aws:sourceip", "aws:principalaccount", "aws:principalarn"}
FIXING_OPS = {"StringEquals", "StringEqualsIgnoreCase", "StringLike", "IpAddress", "ArnEquals", "ArnLike"}

# the S3 actions a policy may name (wildcards aside): those of the S3 API reference
S3_ACTIONS = frozenset(a.lower() for a in (
    "AbortMultipartUpload BypassGovernanceRetention CreateBucket DeleteBucket DeleteBucketOwnershipControls "
    "DeleteBucketPolicy DeleteBucketWebsite DeleteObject DeleteObjectTagging DeleteObjectVersion "
    "DeleteObjectVersionTagging GetAccelerateConfiguration GetAnalyticsConfiguration GetBucketAcl "
    "GetBucketCORS GetBucketLocation GetBucketLogging GetBucketNotification GetBucketObjectLockConfiguration "
    "GetBucketOwnershipControls GetBucketPolicy GetBucketPolicyStatus GetBucketPublicAccessBlock "
    "GetBucketRequestPayment GetBucketTagging GetBucketVersioning GetBucketWebsite GetEncryptionConfiguration "
    "GetInventoryConfiguration GetLifecycleConfiguration GetMetricsConfiguration GetObject GetObjectAcl "
    "GetObjectAttributes GetObjectLegalHold GetObjectRetention GetObjectTagging GetObjectTorrent "
    "GetObjectVersion GetObjectVersionAcl GetObjectVersionAttributes GetObjectVersionTagging "
    "GetReplicationConfiguration ListBucket ListBucketMultipartUploads ListBucketVersions "
    "ListMultipartUploadParts ListAllMyBuckets PutAccelerateConfiguration PutAnalyticsConfiguration "
    "PutBucketAcl PutBucketCORS PutBucketLogging PutBucketNotification PutBucketObjectLockConfiguration "
    "PutBucketOwnershipControls PutBucketPolicy PutBucketPublicAccessBlock PutBucketRequestPayment "
    "PutBucketTagging PutBucketVersioning PutBucketWebsite PutEncryptionConfiguration "
    "PutInventoryConfiguration PutLifecycleConfiguration PutMetricsConfiguration PutObject PutObjectAcl "
    "PutObjectLegalHold PutObjectRetention PutObjectTagging PutObjectVersionAcl PutObjectVersionTagging "
    "PutReplicationConfiguration ReplicateObject RestoreObject").split())

_IAM_ARN = re.compile(r"arn:aws:iam::([^:]+):(.+)")


class PolicyError(ValueError):
    """A policy document that is not valid (S3's MalformedPolicy); the message says why."""


@functools.lru_cache(maxsize=4096)
def _pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def matches(pattern: str, text: str, ignore_case: bool = False) -> bool:
    """Whether `text` matches a policy pattern (`*`: any run of characters, `?`: one)."""
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == text.lower() if ignore_case else pattern == text
    return _pattern(pattern, ignore_case).fullmatch(text) is not None


def principal_name(text: str) -> str:
    """The account a principal names: a bare account name, or the account of an IAM ARN
    (`arn:aws:iam::bob:root` -> bob)."""
    found = _IAM_ARN.fullmatch(text)
    return found.group(1) if found else text


@dataclass(frozen=True)
class Condition:
    operator: str       # base operator, e.g. "StringLike"
    key: str            # lower-cased
    values: tuple[str, ...]
    if_exists: bool = False
    for_all: bool = False  # ForAllValues: every value of the key matches (none: vacuously true)

    def holds(self, context: Mapping[str, str]) -> bool:
        value = context.get(self.key)
        if self.operator == "Null":
            return (value is None) == (self.values[0].lower() == "true")
        if value is None:
            return self.if_exists or self.operator in NEGATED or self.for_all
        if self.operator in NEGATED:
            return not any(_compare(self.operator, value, v) for v in self.values)
        return any(_compare(self.operator, value, v) for v in self.values)


def _compare(operator: str, actual: str, wanted: str) -> bool:
    """Whether `actual` (the request's) satisfies one policy value under `operator` (its
    positive form for a negated operator)."""
    op = operator.replace("Not", "", 1) if operator in NEGATED else operator
    if op in ("StringEquals", "ArnEquals"):
        return actual == wanted
    if op == "StringEqualsIgnoreCase":
        return actual.lower() == wanted.lower()
    if op in ("StringLike", "ArnLike"):
        return matches(wanted, actual)
    if op == "Bool":
        return actual.lower() == wanted.lower()
    if op == "IpAddress":
        try:
            return ipaddress.ip_address(actual) in ipaddress.ip_network(wanted, strict=False)
        except ValueError:
            return False
    if op.startswith("Numeric"):
        try:
            return _ordered(op.removeprefix("Numeric"), float(actual), float(wanted))
        except ValueError:
            return False
    if op.startswith("Date"):
        try:
            return _ordered(op.removeprefix("Date"), _epoch(actual), _epoch(wanted))
        except ValueError:
            return False
    return False


def _ordered(relation: str, a: float, b: float) -> bool:
    return {"Equals": a == b, "LessThan": a < b, "LessThanEquals": a <= b,
            "GreaterThan": a > b, "GreaterThanEquals": a >= b}[relation]


def _epoch(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


@dataclass(frozen=True)
class Statement:
    effect: str
    principals: tuple[str, ...]          # account names or "*"
    actions: tuple[str, ...]             # lower-cased patterns
    resources: tuple[str, ...]           # ARN patterns
    conditions: tuple[Condition, ...] = ()
    not_principal: bool = False
    not_action: bool = False
    not_resource: bool = False
    sid: str = ""

    def applies(self, principal: str | None, action: str, resource: str, context: Mapping[str, str]) -> bool:
        named = any(p == ANYONE or p == principal for p in self.principals)
        if named == self.not_principal:
            return False
        acted = any(matches(a, action, ignore_case=True) for a in self.actions)
        if acted == self.not_action:
            return False
        on = any(matches(r, resource) for r in self.resources)
        if on == self.not_resource:
            return False
        return all(c.holds(context) for c in self.conditions)

    @property
    def public(self) -> bool:
        if self.effect != ALLOW:
            return False
        if self.not_principal or ANYONE in self.principals:
            return not any(c.key in FIXING_KEYS and c.operator in FIXING_OPS and not (c.if_exists or c.for_all)
                           and not any(("*" in v or "?" in v) or _open_range(c, v) for v in c.values)
                           for c in self.conditions)
        return False


def _open_range(condition: Condition, value: str) -> bool:
    """An aws:SourceIp range too wide to be "fixed" (S3: wider than /8 for IPv4, /32 for IPv6)."""
    if condition.key != "aws:sourceip":
        return False
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return True
    return network.prefixlen < (8 if network.version == 4 else 32)


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]

    def evaluate(self, principal: str | None, action: str, resource: str,
                 context: Mapping[str, str]) -> str | None:
        """DENY if a statement that applies denies, else ALLOW if one allows, else None.
        `principal` None: an anonymous request (only `*` names it)."""
        allowed = False
        for statement in self.statements:
            if statement.applies(principal, action, resource, context):
                if statement.effect == DENY:
                    return DENY
                allowed = True
        return ALLOW if allowed else None

    @property
    def public(self) -> bool:
        return any(s.public for s in self.statements)

    def principals(self) -> set[str]:
        """The accounts the policy names (not `*`)."""
        return {p for s in self.statements for p in s.principals if p != ANYONE}


def _strings(value: Any, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) and i for i in items):
        raise PolicyError(f"{what} must be a string or a non-empty list of strings")
    return tuple(items)


# what a principal with a wildcard in it (other than `*` alone: "arn:aws:iam::*:root")
# stands for in a stored policy: S3 refuses such a principal (MalformedPolicy, `check_keys`
# at PutBucketPolicy); one stored before that check binds as the worst case (`_statement`)
WILD_PRINCIPAL = "\0wildcard"


def _principals(value: Any) -> tuple[str, ...]:
    if value == ANYONE:
        return (ANYONE,)
    if not isinstance(value, dict) or not value:
        raise PolicyError("Invalid principal in policy")
    names: list[str] = []
    for kind, given in value.items():
        if kind not in ("AWS", "CanonicalUser", "Service", "Federated"):
            raise PolicyError("Invalid principal in policy")
        for text in _strings(given, "Principal"):
            if kind in ("Service", "Federated"):
                continue  # no such principals sign requests here: they never match
            if text == ANYONE:
                names.append(ANYONE)
            else:  # a wildcard inside a name is no principal (it was read as `*`: anyone)
                names.append(WILD_PRINCIPAL if "*" in text or "?" in text else principal_name(text))
    return tuple(names)


def _bound_principals(principals: tuple[str, ...], effect: str, not_principal: bool) -> tuple[str, ...]:
    """A stored statement's WILD_PRINCIPALs as they bind at worst: anyone where that makes
    the statement deny more or allow less (a Deny's Principal, an Allow's NotPrincipal),
    else no one."""
    if WILD_PRINCIPAL not in principals:
        return principals
    if (effect == DENY) != not_principal:
        return tuple(ANYONE if p == WILD_PRINCIPAL else p for p in principals)
    return tuple(p for p in principals if p != WILD_PRINCIPAL)


def _actions(value: Any) -> tuple[str, ...]:
    actions = tuple(a.lower() for a in _strings(value, "Action"))
    for action in actions:
        if action == "*":
            continue
        service, _, name = action.partition(":")
        if service != "s3" or not name:
            raise PolicyError("Policy has invalid action")
        if "*" not in name and "?" not in name and name not in S3_ACTIONS:
            raise PolicyError("Policy has invalid action")
    return actions


def _resources(value: Any, bucket: str) -> tuple[str, ...]:
    resources = _strings(value, "Resource")
    for resource in resources:
        if resource == "*":
            continue
        if not resource.startswith(ARN_PREFIX):
            raise PolicyError("Policy has invalid resource")
        name = resource[len(ARN_PREFIX):].partition("/")[0]
        if not matches(name, bucket):
            raise PolicyError("Policy has invalid resource")
    return resources


def _conditions(value: Any) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        raise PolicyError("Condition must be an object")
    out: list[Condition] = []
    for operator, block in value.items():
        if not isinstance(operator, str):
            raise PolicyError("Invalid Condition type")
        for_all = operator.startswith("ForAllValues:")  # keys here have one value (or none)
        base = operator.removeprefix("ForAnyValue:").removeprefix("ForAllValues:")
        if_exists = base.endswith("IfExists")
        base = base.removesuffix("IfExists")
        if base not in OPERATORS or (if_exists and base == "Null"):
            raise PolicyError(f"Invalid Condition type : {operator}")
        if not isinstance(block, dict) or not block:
            raise PolicyError(f"Invalid Condition block for {operator}")
        for key, raw in block.items():
            items = raw if isinstance(raw, list) else [raw]
            if not items or not all(isinstance(i, str | bool | int | float) for i in items):
                raise PolicyError(f"Invalid Condition value for {key}")
            values = tuple(str(i).lower() if isinstance(i, bool) else str(i) for i in items)
            _check_values(base, key, values)
            out.append(Condition(base, key.lower(), values, if_exists, for_all))
    return tuple(out)


def _check_values(operator: str, key: str, values: Iterable[str]) -> None:
    for v in values:
        try:
            if operator in IP_OPS:
                ipaddress.ip_network(v, strict=False)
            elif operator in NUMERIC_OPS:
                float(v)
            elif operator in DATE_OPS:
                _epoch(v)
            elif operator in ("Bool", "Null") and v.lower() not in ("true", "false"):
                raise ValueError(v)
        except ValueError:
            raise PolicyError(f"Invalid Condition value for {operator} on {key}: {v}") from None


def _statement(raw: Any, bucket: str) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyError("Statement must be an object")
    known = {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource", "NotResource",
             "Condition"}
    unknown = set(raw) - known
    if unknown:
        raise PolicyError(f"Unknown field {sorted(unknown)[0]}")
    effect = raw.get("Effect")
    if effect not in (ALLOW, DENY):
        raise PolicyError("Invalid effect: " + str(effect))
    pairs = [("Principal", "NotPrincipal"), ("Action", "NotAction"), ("Resource", "NotResource")]
    for positive, negative in pairs:
        if (positive in raw) == (negative in raw):
            what = "principal" if positive == "Principal" else positive.lower()
            raise PolicyError(f"Statement must have exactly one of {positive} and {negative}"
                              if positive in raw else f"Missing required field {what}")
    sid = raw.get("Sid", "")
    if not isinstance(sid, str):
        raise PolicyError("Sid must be a string")
    return Statement(
        effect=effect,
        principals=_bound_principals(_principals(raw.get("Principal", raw.get("NotPrincipal"))), effect,
                                     "NotPrincipal" in raw),
        actions=_actions(raw.get("Action", raw.get("NotAction"))),
        resources=_resources(raw.get("Resource", raw.get("NotResource")), bucket),
        conditions=_conditions(raw["Condition"]) if "Condition" in raw else (),
        not_principal="NotPrincipal" in raw, not_action="NotAction" in raw,
        not_resource="NotResource" in raw, sid=sid)


@functools.lru_cache(maxsize=256)
def parse_policy(text: bytes, bucket: str) -> Policy:
    """The policy a document states for `bucket` (its resources must name it); PolicyError
    when it is not valid. Cached: a bucket's policy is parsed once per process."""
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError("Policies must be no more than 20 KB")
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested deeper than Python recurses
        raise PolicyError("Policies must be valid JSON and the first byte must be '{'") from None
    if not isinstance(doc, dict):
        raise PolicyError("Policies must be valid JSON and the first byte must be '{'")
    unknown = set(doc) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyError(f"Unknown field {sorted(unknown)[0]}")
    if "Version" in doc and doc["Version"] not in VERSIONS:
        raise PolicyError("Invalid policy version: " + str(doc["Version"]))
    raw = doc.get("Statement")
    statements = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else None
    if not statements:
        raise PolicyError("Missing required field Statement")
    parsed = (worst(_statement(s, bucket), _unknown) for s in statements)
    return Policy(tuple(s for s in parsed if s is not None))


def check_keys(text: bytes) -> None:
    """PolicyError for a condition on a key no request's context holds (CONDITION_KEYS), as
    S3 refuses a key it does not know, and for a principal with a wildcard in it (other
    than `*` alone), as S3 refuses one: `parse_policy` has read such a statement for the
    worst case, which is not what its author meant. For a document `parse_policy` took."""
    doc = json.loads(text)
    raw = doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]
    for statement in raw:
        if WILD_PRINCIPAL in _principals(statement.get("Principal", statement.get("NotPrincipal"))):
            raise PolicyError("Invalid principal in policy")
        for block in (statement.get("Condition") or {}).values():
            for key in block:
                if key.lower() not in CONDITION_KEYS:
                    raise PolicyError(f"Policy has an invalid condition key: {key}")


def worst(statement: Statement, doubtful: Callable[[Condition], bool]) -> Statement | None:
    """The statement as it binds when its `doubtful` conditions may or may not hold: a Deny
    binds as if they held (they are dropped), an Allow with any of them allows nothing
    (None). For a stored policy's conditions on keys no context holds (`_unknown`), and for
    a reader whose context is not known (storage.access.worst_case: every condition)."""
    if not any(doubtful(c) for c in statement.conditions):
        return statement
    if statement.effect == DENY:
        return replace(statement, conditions=tuple(c for c in statement.conditions if not doubtful(c)))
    return None


def _unknown(condition: Condition) -> bool:
    return condition.key not in CONDITION_KEYS
