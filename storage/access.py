"""Who may do what to a bucket and its objects: the one decision, from the bucket's owner,
its policy (storage.policy), its ACLs, its public access block and its ownership controls.

    decide(Ask(principal, action, bucket, key, context), BucketAccess, object ACL)
        1. a policy statement that applies and denies      -> DENY (explicit: nothing overrides it,
           but the owner may always manage the policy itself, as S3's root user may)
        2. the principal owns the bucket                    -> ALLOW
        3. a policy statement that applies and allows       -> ALLOW, unless RestrictPublicBuckets
           is set and the policy is public (then only the owner's account gets in)
        4. an ACL grant (the bucket's for bucket permissions, the object's for object ones)
           to the principal, to AuthenticatedUsers (any signer) or AllUsers (anyone)
                                                            -> ALLOW, unless ACLs are disabled
           (ownership BucketOwnerEnforced) or the grant is public and IgnorePublicAcls is set
        5. otherwise                                        -> NOT_ALLOWED (an implicit deny)

A principal is an account name, or None for an unsigned request. Objects are owned by
their bucket's owner (writes by others included, as with S3's BucketOwnerEnforced and
BucketOwnerPreferred), so an object ACL's owner grant is the bucket owner's.

Storage forms (once, here): an ACL is text in the bucket record (`acl`) and the object
record (`"acl"`): a canned name (private, public-read, public-read-write,
authenticated-read) or, for grants that no canned ACL states, the JSON list of
[kind, grantee, permission]. The public access block and the ownership controls are JSON
bucket configurations (`bucketconf` kinds "publicaccessblock", "ownership"), the policy
the JSON document as given (kind "policy"); the bucket record's `conf` says which exist,
so `bucket_access` reads nothing more for a bucket that has none.

Reads made later on behalf of a request (`readable`: a job's inputs and assets, read when
its tasks run) are decided with the condition keys of the requests that named them: the
keys that describe the connection and the principal (`LASTING_KEYS`, kept by `lasting`),
with aws:CurrentTime/EpochTime those of the check, and allowed only if every one of those
contexts allows. With no context known, the worst case (`worst_case`): a Deny with
conditions binds as if they held and an Allow with conditions allows nothing, so a missing
key never turns a Deny into an Allow.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from storage.policy import ALLOW, DENY, Policy, parse_policy, worst
from storage.records.buckets import BucketRecord

if TYPE_CHECKING:
    from storage.store import Store

__all__ = ["ACL_KINDS", "ALL_USERS", "AUTHENTICATED_USERS", "CANNED", "OWNER_ENFORCED", "Ask", "BucketAccess",
           "Decision", "Grant", "LASTING_KEYS", "OWNERSHIPS", "OWNERSHIP_KIND", "POLICY_KIND", "PUBLIC_BLOCK_KIND",
           "PublicAccessBlock",
           "acl_text", "bucket_access", "decide", "grants_of", "is_public_acl", "lasting", "object_acl_permission",
           "readable", "time_keys", "worst_case"]

POLICY_KIND = "policy"
PUBLIC_BLOCK_KIND = "publicaccessblock"
OWNERSHIP_KIND = "ownership"
ACL_KINDS = frozenset((POLICY_KIND, PUBLIC_BLOCK_KIND, OWNERSHIP_KIND))  # what can refuse a bucket's owner
OWNER_ENFORCED = "BucketOwnerEnforced"
OWNERSHIPS = ("BucketOwnerEnforced", "BucketOwnerPreferred", "ObjectWriter")

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
PERMISSIONS = ("READ", "WRITE", "READ_ACP", "WRITE_ACP", "FULL_CONTROL")

Grant = tuple[str, str, str]  # (grantee kind: "id" | "uri", grantee, permission)

# canned ACLs beyond the owner's FULL_CONTROL
CANNED: dict[str, frozenset[Grant]] = {
    "private": frozenset(),
    "public-read": frozenset({("uri", ALL_USERS, "READ")}),
    "public-read-write": frozenset({("uri", ALL_USERS, "READ"), ("uri", ALL_USERS, "WRITE")}),
    "authenticated-read": frozenset({("uri", AUTHENTICATED_USERS, "READ")}),
}

# the ACL permission that allows an action: on the bucket's ACL, or on the object's
BUCKET_ACL_PERMISSION = {
    "s3:ListBucket": "READ", "s3:ListBucketVersions": "READ", "s3:ListBucketMultipartUploads": "READ",
    # WRITE lets a grantee delete objects but not versions: S3 allows s3:DeleteObjectVersion
    # by a bucket WRITE grant only to the bucket's owner (who may anyway), so no grant
    # lets another destroy a versioned bucket's history
    "s3:PutObject": "WRITE", "s3:DeleteObject": "WRITE",
    "s3:AbortMultipartUpload": "WRITE", "s3:ListMultipartUploadParts": "WRITE",
    "s3:GetBucketAcl": "READ_ACP", "s3:PutBucketAcl": "WRITE_ACP",
}
OBJECT_ACL_PERMISSION = {
    "s3:GetObject": "READ", "s3:GetObjectVersion": "READ", "s3:GetObjectAttributes": "READ",
    "s3:GetObjectVersionAttributes": "READ",
    "s3:GetObjectAcl": "READ_ACP", "s3:PutObjectAcl": "WRITE_ACP",
}
# the condition keys a request's context keeps for the reads made later on its behalf: those
# of its connection and its principal (a request's own headers and query are not a read's)
LASTING_KEYS = ("aws:sourceip", "aws:securetransport", "aws:useragent", "aws:referer", "aws:principalaccount",
                "aws:principalarn", "aws:principaltype", "s3:authtype", "s3:signatureversion")
# the owner may always manage the policy, even when it denies the owner (no lock-out)
POLICY_ACTIONS = frozenset(("s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"))


class Decision(Enum):
    ALLOW = "allow"
    DENY = "deny"                # an explicit Deny in the policy
    NOT_ALLOWED = "not-allowed"  # nothing allows it (an object's ACL may, if not read yet)


@dataclass(frozen=True)
class Ask:
    """One request for access: who (None: anonymous), which action (`s3:GetObject`), on
    which bucket and key (None: the bucket itself), with the request's condition keys
    (lower-cased: `aws:sourceip`, `aws:securetransport`, `s3:prefix`...)."""

    principal: str | None
    action: str
    bucket: str
    key: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)

    @property
    def resource(self) -> str:
        return f"arn:aws:s3:::{self.bucket}" if self.key is None else f"arn:aws:s3:::{self.bucket}/{self.key}"


@dataclass(frozen=True)
class PublicAccessBlock:
    block_public_acls: bool = False
    ignore_public_acls: bool = False
    block_public_policy: bool = False
    restrict_public_buckets: bool = False

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> PublicAccessBlock:
        return cls(**json.loads(raw)) if raw else cls()


NO_BLOCK = PublicAccessBlock()


@dataclass(frozen=True)
class BucketAccess:
    """What decides access to one bucket, read from its record and configurations."""

    owner: str
    acl: str | None = None                      # the bucket's ACL text (None: private)
    policy: Policy | None = None
    block: PublicAccessBlock = NO_BLOCK
    ownership: str | None = None                # None: ACLs enabled (ObjectWriter)

    @property
    def acls_enabled(self) -> bool:
        return self.ownership != OWNER_ENFORCED


def bucket_access(catalog: Any, record: BucketRecord, txn: Any) -> BucketAccess:
    """The bucket's access settings; reads only the configurations its record lists
    (`catalog.bucketconf`, in `txn`)."""
    policy = block = ownership = None
    conf = catalog.bucketconf
    if POLICY_KIND in record.conf:
        raw = conf.of(record, POLICY_KIND, txn)
        policy = parse_policy(raw, record.name) if raw else None
    if PUBLIC_BLOCK_KIND in record.conf:
        block = PublicAccessBlock.decode(conf.of(record, PUBLIC_BLOCK_KIND, txn))
    if OWNERSHIP_KIND in record.conf:
        raw = conf.of(record, OWNERSHIP_KIND, txn)
        ownership = raw.decode() if raw else None
    return BucketAccess(record.owner, record.acl, policy, block or NO_BLOCK, ownership)


def grants_of(acl: Any, owner: str) -> frozenset[Grant]:
    """The grants an ACL text states, the owner's FULL_CONTROL included."""
    owner_grant = ("id", owner, "FULL_CONTROL")
    if not acl or not isinstance(acl, str):
        return frozenset({owner_grant})
    if acl in CANNED:
        return CANNED[acl] | {owner_grant}
    if acl.startswith("["):
        return frozenset(tuple(g) for g in json.loads(acl))  # type: ignore[misc]
    return frozenset({owner_grant})  # an object-only canned name stored before: private


def acl_text(grants: frozenset[Grant] | set[Grant], owner: str) -> str:
    """How an ACL is stored: the canned name its grants amount to, else its grants as JSON."""
    owner_grant = ("id", owner, "FULL_CONTROL")
    if owner_grant in grants:
        for name, extra in CANNED.items():
            if set(grants) == extra | {owner_grant}:
                return name
    return json.dumps(sorted([list(g) for g in grants]))


def is_public_acl(grants: frozenset[Grant] | set[Grant]) -> bool:
    return any(kind == "uri" and who in (ALL_USERS, AUTHENTICATED_USERS) for kind, who, _ in grants)


def object_acl_permission(action: str) -> str | None:
    """The object ACL permission that allows `action`, or None when no object ACL can."""
    return OBJECT_ACL_PERMISSION.get(action)


def _granted(grants: frozenset[Grant], principal: str | None, permission: str, ignore_public: bool) -> bool:
    for kind, who, given in grants:
        if given != permission and given != "FULL_CONTROL":
            continue
        if kind == "id" and principal is not None and who == principal:
            return True
        if kind == "uri" and not ignore_public:
            if who == ALL_USERS or (who == AUTHENTICATED_USERS and principal is not None):
                return True
    return False


def decide(ask: Ask, bucket: BucketAccess, object_acl: Any = None) -> Decision:
    """The decision for `ask` (see the module docstring). `object_acl`: the object's ACL
    text, for actions an object ACL can allow (None: not read, or no object)."""
    verdict = bucket.policy.evaluate(ask.principal, ask.action, ask.resource, ask.context) if bucket.policy else None
    owner = ask.principal is not None and ask.principal == bucket.owner
    if verdict == DENY and not (owner and ask.action in POLICY_ACTIONS):
        return Decision.DENY
    if owner:
        return Decision.ALLOW
    if verdict == ALLOW and not (bucket.block.restrict_public_buckets and bucket.policy and bucket.policy.public):
        return Decision.ALLOW
    if bucket.acls_enabled:
        ignore = bucket.block.ignore_public_acls
        permission = BUCKET_ACL_PERMISSION.get(ask.action)
        if permission and _granted(grants_of(bucket.acl, bucket.owner), ask.principal, permission, ignore):
            return Decision.ALLOW
        permission = OBJECT_ACL_PERMISSION.get(ask.action)
        if permission and object_acl is not None and _granted(
                grants_of(object_acl, bucket.owner), ask.principal, permission, ignore):
            return Decision.ALLOW
    return Decision.NOT_ALLOWED


def lasting(context: Mapping[str, str]) -> dict[str, str]:
    """The keys of a request's context (lower-cased names) that bind reads made later on
    its behalf (`LASTING_KEYS`)."""
    return {k: v for k, v in context.items() if k in LASTING_KEYS}


def time_keys(now: dt.datetime | None = None) -> dict[str, str]:
    """aws:CurrentTime and aws:EpochTime, of `now` (default: this moment)."""
    now = now or dt.datetime.now(dt.UTC)
    return {"aws:currenttime": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "aws:epochtime": str(int(now.timestamp()))}


def worst_case(settings: BucketAccess) -> BucketAccess:
    """The settings as they bind a reader whose request context is unknown: each Deny
    statement binds as if its conditions held, an Allow with conditions allows nothing
    (and none does when RestrictPublicBuckets refuses a public policy's Allow). No context
    gives less than this."""
    policy = settings.policy
    if policy is None or not any(s.conditions for s in policy.statements):
        return settings
    allows = not (settings.block.restrict_public_buckets and policy.public)
    kept = (worst(s, lambda _: True) for s in policy.statements if s.effect == DENY or allows)
    return replace(settings, policy=Policy(tuple(s for s in kept if s is not None)))


def readable(store: Store, principal: str, bucket: str, key: str,
             contexts: Sequence[Mapping[str, str]] | None = None) -> BucketRecord | None:
    """The bucket's record if `principal` may read bucket/key (`s3:GetObject`) under each
    of `contexts`, the condition keys of the requests the read is made for (their time
    keys are replaced by the time of this check), else None; raises NoSuchBucket.
    `contexts` None or empty: not known, decided for the worst case (`worst_case`). For the
    jobs, whose inputs may be objects others share."""
    now = time_keys()
    known = [{**context, **now} for context in contexts or ()]
    with store.catalog.read() as txn:
        record = store.catalog.buckets.get(bucket, txn)
        if record.owner == principal and POLICY_KIND not in record.conf:
            return record
        settings = bucket_access(store.catalog, record, txn)
        if not known:
            settings = worst_case(settings)
        asks = [Ask(principal, "s3:GetObject", bucket, key, context) for context in known or [now]]
        decisions = [decide(ask, settings) for ask in asks]
        if Decision.NOT_ALLOWED in decisions and settings.acls_enabled:
            found = store.objects.read_in(txn, bucket, key)
            acl = found.get("acl") if found else None
            decisions = [decide(ask, settings, acl) if decision is Decision.NOT_ALLOWED else decision
                         for ask, decision in zip(asks, decisions, strict=True)]
    return record if all(decision is Decision.ALLOW for decision in decisions) else None
