"""A randomized, model-based security test of authorization: which account (or an unsigned
request) may do what to which bucket and object, under bucket policies, ACLs (canned and
x-amz-grant-* headers), the public access block and the object ownership controls,
compared request by request with an independent model of how AWS S3 decides.

The cast: three accounts (alice, bob, carol) and anonymous callers; two buckets, alice's
(never versioned) and bob's (versioning Enabled, so version ids, delete markers and
s3:GetObjectVersion / s3:DeleteObjectVersion come in), each holding a few keys chosen so
that resource patterns tell them apart ("public/a", "public/b", "private/x", "dir/sub/y")
and a sentinel object no request touches (DeleteBucket is then BucketNotEmpty when it is
allowed, and the walk keeps its buckets). Each step the owner of one bucket changes one of
its settings (a random policy of 1-3 statements from a small grammar, a bucket or object
ACL, the public access block, the ownership controls), then random principals send a batch
of random requests; each answer is compared with the model (`Bucket.evaluate`):

- allowed: the operation succeeds as S3 would answer it (bodies, listings, ACLs and tags
  compared), and the model takes its effect;
- denied: 403 AccessDenied, and nothing changes: after every step the catalog's records
  (objects, versions, ACLs, tags, uploads, the bucket's settings) are compared with the model.

The model is written from AWS's documentation, not from the server's code:

- evaluation: an explicit Deny that applies wins (the owner's account may still Get/Put/
  DeleteBucketPolicy); the bucket owner's account may do anything else; an Allow that
  applies permits (not when RestrictPublicBuckets is on and the policy is public: then
  only the owner's account gets in); then ACL grants (bucket READ: ListBucket,
  ListBucketVersions, ListBucketMultipartUploads; WRITE: PutObject; READ_ACP/WRITE_ACP: Get/
  PutBucketAcl; object READ: GetObject(Version), READ_ACP/WRITE_ACP: Get/PutObjectAcl;
  FULL_CONTROL: all; AllUsers: anyone, AuthenticatedUsers: any signer; none at all with
  BucketOwnerEnforced, no group grant with IgnorePublicAcls); else an implicit deny;
- a statement applies when Principal ("*", {"AWS": "*"}, account names, arn:aws:iam::NAME:
  root, {"CanonicalUser": NAME}: manta's canonical IDs are account names) or NotPrincipal,
  Action or NotAction (wildcards * and ?, case-insensitive), Resource or NotResource
  (bucket ARN for bucket actions, bucket/key for object actions, wildcards, case-sensitive)
  and every Condition hold (every operator, every key); conditions: StringEquals/Like,
  StringNotLike, StringLikeIfExists and Null on s3:prefix, Bool on aws:SecureTransport,
  IpAddress/NotIpAddress on aws:SourceIp; a missing key makes a condition false, except
  for negated operators and ...IfExists (true) and Null. s3:prefix is in the context of
  ListBucket / ListBucketVersions requests only (the walk also puts a stray ?prefix= on
  other bucket requests);
- "public" (GetBucketPolicyStatus, BlockPublicPolicy, RestrictPublicBuckets): an Allow to
  "*" not limited by a fixed aws:SourceIp range;
- the action each request needs: GET/HEAD object s3:GetObject (?versionId: GetObjectVersion),
  PUT s3:PutObject plus s3:PutObjectAcl for an ACL header and s3:PutObjectTagging for
  x-amz-tagging, DELETE s3:DeleteObject (?versionId: DeleteObjectVersion, DeleteObjects per
  key), ?tagging Get/Put/DeleteObjectTagging, ?acl Get/PutObjectAcl and Get/PutBucketAcl,
  CopyObject s3:GetObject on the source (GetObjectVersion for a version) and s3:PutObject
  on the destination, GetObjectAttributes s3:GetObject and s3:GetObjectAttributes (the
  Version forms in a versioned bucket), multipart s3:PutObject, AbortMultipartUpload, ListMultipartUploadParts,
  ListBucketMultipartUploads, listings ListBucket / ListBucketVersions (HEAD bucket too),
  Get/PutBucketVersioning, GetBucketLocation, DeleteBucket; policy management by another
  account than the owner's: 403 if no policy allows it, else 405 MethodNotAllowed;
- a missing key (or one whose latest version is a delete marker): 404 to a caller allowed
  the action who may list the bucket, 403 to one who may not (GetObject: as AWS documents);
- ACL settings: BlockPublicAcls refuses a public ACL (403), BucketOwnerEnforced refuses
  ACLs other than bucket-owner-full-control (400 AccessControlListNotSupported) and is
  refused while the bucket ACL grants to others (400 InvalidBucketAclWithObjectOwnership);
  BlockPublicPolicy refuses a public policy (403).

Where AWS's documentation leaves the answer open, or where manta documents a choice of its
own, the model accepts either answer and counts which one the server gave (a DOUBT
verdict, or an Outcome with a `doubt`); the walk fails on anything else. Doubts: bucket
WRITE as s3:DeleteObject, AbortMultipartUpload, ListMultipartUploadParts; a part or a
completion by another principal than the upload's initiator (AWS: "only the initiator");
the initiator's default right to abort and list its upload; RestrictPublicBuckets and ACL
grants; IAM user ARNs (manta has no users and reads arn:aws:iam::NAME:user/x as the
account NAME); 403 or 404 for missing keys in the cases AWS does not document; which
refusal comes first when several apply; 404 or 405 for a key whose latest version is a
delete marker. Objects belong to their bucket's owner whoever wrote them
(manta's documented choice, as with S3's BucketOwnerEnforced / BucketOwnerPreferred): the
model follows it, so ObjectWriter's "the writer owns its object" is not modelled. Not
modelled either (manta has none of them, or they are tested elsewhere): IAM users and
identity policies, access points, SigV2, presigned URLs, aws:PrincipalOrgID and the other
condition keys, the AccessControlPolicy body form of PUT ?acl, log-delivery-write,
x-amz-expected-bucket-owner, Object Lock, CORS, the jobs' reads.

Runs are deterministic (random.Random(seed)); a failure names the seed, the step, both
buckets' settings and the tail of the request history. Divergences from AWS that the walk
(or reading the code) found, all mended since (three were holes: a stray ?prefix=, a
wildcard principal ARN, version deletes by a WRITE grant), are accepted either way in the
walk ("KNOWN DIVERGENCE") and checked by small tests of their own at the end of this file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest

from storage import errors as se
from tests.inprocess import NS, InProcessS3, texts

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
ACCOUNTS: dict[str, tuple[str, str]] = {
    "alice": ("ALICEACCESSKEY000001", "alice-secret-key-00000000000000000000000"),
    "bob": ("BOBACCESSKEY00000001", "bob-secret-key-0000000000000000000000000"),
    "carol": ("CAROLACCESSKEY000001", "carol-secret-key-00000000000000000000000"),
}
PRINCIPALS: tuple[str | None, ...] = ("alice", "bob", "carol", None)  # None: an unsigned request
PLAIN, VERSIONED = "acl-alice", "acl-bob"
OWNERS = {PLAIN: "alice", VERSIONED: "bob"}
KEYS = ("public/a", "public/b", "private/x", "dir/sub/y")
SENTINEL = "zz/keep"  # in both buckets, never a request's key: a bucket is never empty
LIST_PREFIXES: tuple[str | None, ...] = (None, "public/", "private/", "dir/", "dir/sub/", "p")
# the in-process client: plain HTTP from loopback
CONTEXT: dict[str, str] = {"aws:sourceip": "127.0.0.1", "aws:securetransport": "false"}
ENFORCED = "BucketOwnerEnforced"
OWNERSHIPS = ("BucketOwnerEnforced", "BucketOwnerPreferred", "ObjectWriter")
POLICY_ACTIONS = frozenset(("s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"))
LISTINGS = frozenset(("s3:ListBucket", "s3:ListBucketVersions"))  # the actions whose requests carry s3:prefix
HISTORY_TAIL = 30

Grant = tuple[str, str, str]  # ("id", account, permission) | ("uri", group URI, permission)
Acl = frozenset[Grant]
GRANT_HEADERS = {"READ": "x-amz-grant-read", "WRITE": "x-amz-grant-write", "READ_ACP": "x-amz-grant-read-acp",
                 "WRITE_ACP": "x-amz-grant-write-acp", "FULL_CONTROL": "x-amz-grant-full-control"}
# canned ACLs: the grants besides the owner's FULL_CONTROL (AWS's "Canned ACL" table);
# bucket-owner-read / -full-control on an object of the bucket's owner: the owner's alone
CANNED_EXTRA: dict[str, Acl] = {
    "private": frozenset(), "public-read": frozenset({("uri", ALL_USERS, "READ")}),
    "public-read-write": frozenset({("uri", ALL_USERS, "READ"), ("uri", ALL_USERS, "WRITE")}),
    "authenticated-read": frozenset({("uri", AUTHENTICATED, "READ")}),
    "bucket-owner-read": frozenset(), "bucket-owner-full-control": frozenset(),
}
BUCKET_CANNED = ("private", "public-read", "public-read-write", "authenticated-read")
OBJECT_CANNED = (*BUCKET_CANNED, "bucket-owner-read", "bucket-owner-full-control")

# What an ACL permission allows (AWS: "Mapping of ACL permissions and access policy
# permissions"); FULL_CONTROL: all of its level's.
BUCKET_ACL_ACTIONS = {
    "READ": {"s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads"},
    "WRITE": {"s3:PutObject"},
    "READ_ACP": {"s3:GetBucketAcl"},
    "WRITE_ACP": {"s3:PutBucketAcl"},
}
OBJECT_ACL_ACTIONS = {
    "READ": {"s3:GetObject", "s3:GetObjectVersion"},
    "READ_ACP": {"s3:GetObjectAcl", "s3:GetObjectVersionAcl"},
    "WRITE_ACP": {"s3:PutObjectAcl", "s3:PutObjectVersionAcl"},
}
OBJECT_ACTIONS = frozenset(a for actions in OBJECT_ACL_ACTIONS.values() for a in actions) | {
    "s3:GetObjectAttributes", "s3:GetObjectVersionAttributes"}
# bucket WRITE beyond s3:PutObject: AWS's table says WRITE lets "the bucket and object owners
# of existing objects" delete and overwrite them (older pages: "delete any object"), and is
# silent on the multipart calls; manta maps WRITE to all of these
WRITE_DOUBTS = {
    "s3:DeleteObject": "bucket WRITE grant -> s3:DeleteObject on an object the grantee does not own",
    "s3:AbortMultipartUpload": "bucket WRITE grant -> s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts": "bucket WRITE grant -> s3:ListMultipartUploadParts",
}
# Divergences the walk found, each kept out of it (accepted either way, counted) and checked
# by a test of its own at the end of this file.
KNOWN_WRITE_DELETES_VERSIONS = ("KNOWN DIVERGENCE (test_a_bucket_write_grant_does_not_delete_versions): "
                                "bucket WRITE grant -> s3:DeleteObjectVersion for a grantee not the owner")
KNOWN_STRAY_PREFIX = ("KNOWN DIVERGENCE (test_s3_prefix_is_a_key_of_listings_only): a ?prefix= on a request "
                      "other than a listing fills s3:prefix")
USER_ARN = ("a policy naming an IAM user ARN (arn:aws:iam::NAME:user/eve): manta, which has no IAM users, takes it "
            "for the account NAME")
ATTRIBUTE_ACTIONS = frozenset(("s3:GetObjectAttributes", "s3:GetObjectVersionAttributes"))
KNOWN_MISSING_404 = ("KNOWN DIVERGENCE (test_a_missing_key_is_403_without_list_bucket): a missing key, "
                     "s3:GetObject allowed but not s3:ListBucket")

# -- the policy grammar -------------------------------------------------------------------

ACTIONS = (
    "s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion",
    "s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads", "s3:ListMultipartUploadParts",
    "s3:AbortMultipartUpload", "s3:GetObjectTagging", "s3:PutObjectTagging", "s3:DeleteObjectTagging",
    "s3:GetObjectAcl", "s3:PutObjectAcl", "s3:GetBucketAcl", "s3:PutBucketAcl", "s3:GetBucketPolicy",
    "s3:PutBucketPolicy", "s3:DeleteBucketPolicy", "s3:GetBucketVersioning", "s3:PutBucketVersioning",
    "s3:DeleteBucket", "s3:GetBucketLocation", "s3:GetBucketPolicyStatus", "s3:PutBucketPublicAccessBlock",
    "s3:PutBucketOwnershipControls", "s3:GetObjectVersionTagging",
)
WILDCARD_ACTIONS = ("s3:*", "*", "s3:Get*", "s3:Put*", "s3:List*", "s3:*Object", "s3:GetObject*", "s3:Delete*",
                    "s3:*Acl", "s3:?etObject", "s3:getobject", "S3:ListBucket", "s3:*Multipart*", "s3:*Tagging")
CONDITIONS: tuple[dict[str, dict[str, Any]], ...] = (
    {"StringLike": {"s3:prefix": ["public/*", "dir/*"]}},
    {"StringEquals": {"s3:prefix": "private/"}},
    {"StringNotLike": {"s3:prefix": "private/*"}},
    {"StringLikeIfExists": {"s3:prefix": "public/*"}},
    {"Null": {"s3:prefix": "true"}},
    {"Null": {"s3:prefix": "false"}},
    {"Bool": {"aws:SecureTransport": "false"}},
    {"Bool": {"aws:SecureTransport": True}},
    {"IpAddress": {"aws:SourceIp": "127.0.0.1/32"}},
    {"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}},
    {"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}},
    {"NotIpAddress": {"aws:SourceIp": "192.0.2.0/24"}},
    {"StringLike": {"s3:prefix": "public/*"}, "Bool": {"aws:SecureTransport": "false"}},  # both must hold
    {"IpAddress": {"aws:SourceIp": ["192.0.2.0/24", "127.0.0.0/16"]}, "StringNotLike": {"s3:prefix": "dir/*"}},
)


def resources(bucket: str) -> tuple[str, ...]:
    arn = f"arn:aws:s3:::{bucket}"
    return (arn, arn + "/*", arn + "/public/*", arn + "/private/*", arn + "/dir/*/y", arn + "/public/?",
            arn + "/dir/sub/y", arn + "*", arn + "/*/a", arn + "/p*", arn + "/Public/*")  # ARNs are case-sensitive


def principal_forms(name: str) -> tuple[str, ...]:
    return (name, f"arn:aws:iam::{name}:root")


def principal_element(rng: random.Random, names: list[str]) -> dict[str, Any]:
    """A Principal naming these accounts: by name, by root ARN, as a CanonicalUser (manta's
    canonical IDs are the account names), now and then by an IAM user ARN."""
    if len(names) == 1 and rng.random() < 0.1:
        return {"CanonicalUser": names[0]}
    forms = [f"arn:aws:iam::{n}:user/eve" if rng.random() < 0.08 else rng.choice(principal_forms(n)) for n in names]
    return {"AWS": forms[0] if len(forms) == 1 else forms}


# -- the model: policies ------------------------------------------------------------------


def wildcard(pattern: str, text: str) -> bool:
    """IAM's wildcard match: `*` any run of characters (none, or `/`, included), `?` one."""
    p = t = 0
    star, resume = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] != "*" and (pattern[p] == "?" or pattern[p] == text[t]):
            p, t = p + 1, t + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume, p = p, t, p + 1
        elif star >= 0:
            resume += 1
            p, t = star + 1, resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def named(value: Any, user_arns: bool = False) -> set[str]:
    """The principals a Principal / NotPrincipal element names: accounts, or "*" (anyone,
    anonymous callers included: "*" and {"AWS": "*"} are the same). An IAM user ARN names
    a user, not its account (`user_arns`: manta's reading, the account)."""
    if value == "*":
        return {"*"}
    out: set[str] = set(as_list(value.get("CanonicalUser", [])))
    for item in as_list(value.get("AWS", [])):
        if item == "*":
            out.add("*")
        elif item.startswith("arn:aws:iam::"):
            account, _, rest = item.removeprefix("arn:aws:iam::").partition(":")
            if rest == "root" or user_arns:
                out.add(account)
        else:
            out.add(item)
    return out


def condition_holds(operator: str, actual: str | None, values: list[Any]) -> bool:
    """One condition operator on one key (AWS: a key missing from the request makes the
    condition false, except for negated operators and ...IfExists, true; Null tests it)."""
    base = operator.removesuffix("IfExists")
    wanted = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    if base == "Null":
        return (actual is None) == (wanted[0] == "true")
    if actual is None:
        return operator.endswith("IfExists") or base in ("StringNotEquals", "StringNotLike", "NotIpAddress")
    if base == "StringEquals":
        return actual in wanted
    if base == "StringNotEquals":
        return actual not in wanted
    if base == "StringLike":
        return any(wildcard(v, actual) for v in wanted)
    if base == "StringNotLike":
        return not any(wildcard(v, actual) for v in wanted)
    if base == "Bool":
        return actual.lower() in wanted
    if base in ("IpAddress", "NotIpAddress"):
        inside = any(ipaddress.ip_address(actual) in ipaddress.ip_network(v, strict=False) for v in wanted)
        return inside == (base == "IpAddress")
    raise AssertionError(f"the model has no operator {operator}")


def applies(statement: dict[str, Any], who: str | None, action: str, resource: str,
            context: Mapping[str, str], user_arns: bool = False) -> bool:
    if "Principal" in statement:
        names = named(statement["Principal"], user_arns)
        if not ("*" in names or (who is not None and who in names)):
            return False
    else:
        names = named(statement["NotPrincipal"], user_arns)
        if "*" in names or (who is not None and who in names):
            return False
    positive = "Action" in statement
    listed = as_list(statement["Action"] if positive else statement["NotAction"])
    if any(wildcard(a.lower(), action.lower()) for a in listed) != positive:
        return False
    positive = "Resource" in statement
    listed = as_list(statement["Resource"] if positive else statement["NotResource"])
    if any(wildcard(r, resource) for r in listed) != positive:
        return False
    for operator, block in statement.get("Condition", {}).items():
        for key, values in block.items():
            if not condition_holds(operator, context.get(key.lower()), as_list(values)):
                return False
    return True


def statement_public(statement: dict[str, Any]) -> bool:
    """AWS's "meaning of public": an Allow to anyone that no fixed aws:SourceIp range limits."""
    if statement["Effect"] != "Allow":
        return False
    if "NotPrincipal" in statement:
        return True
    if "*" not in named(statement["Principal"]):
        return False
    for operator, block in statement.get("Condition", {}).items():
        for key, values in block.items():
            if operator == "IpAddress" and key.lower() == "aws:sourceip" and all(
                    ipaddress.ip_network(v, strict=False).prefixlen >= 8 for v in as_list(values)):
                return False
    return True


def policy_public(policy: dict[str, Any] | None) -> bool:
    return policy is not None and any(statement_public(s) for s in policy["Statement"])


# -- the model: verdicts -------------------------------------------------------------------

ALLOWED, EXPLICIT, IMPLICIT, DOUBT = "allowed", "explicit-deny", "implicit-deny", "doubt"


@dataclass(frozen=True)
class Verdict:
    kind: str
    why: str = ""  # for DOUBT: what AWS leaves open

    @property
    def allowed(self) -> bool:
        return self.kind == ALLOWED

    @property
    def denied(self) -> bool:
        return self.kind in (EXPLICIT, IMPLICIT)


YES = Verdict(ALLOWED)
NO = Verdict(IMPLICIT)


def doubt(why: str) -> Verdict:
    return Verdict(DOUBT, why)


def all_of(*verdicts: Verdict) -> Verdict:
    """A request that needs every one of these permissions."""
    for kind in (EXPLICIT, IMPLICIT):
        for v in verdicts:
            if v.kind == kind:
                return v
    doubts = sorted({v.why for v in verdicts if v.kind == DOUBT})
    return doubt("; ".join(doubts)) if doubts else YES


@dataclass(frozen=True)
class Block:
    block_acls: bool = False
    ignore_acls: bool = False
    block_policy: bool = False
    restrict: bool = False

    def xml(self) -> bytes:
        flags = (("BlockPublicAcls", self.block_acls), ("IgnorePublicAcls", self.ignore_acls),
                 ("BlockPublicPolicy", self.block_policy), ("RestrictPublicBuckets", self.restrict))
        inner = "".join(f"<{tag}>{'true' if on else 'false'}</{tag}>" for tag, on in flags)
        return f"<PublicAccessBlockConfiguration>{inner}</PublicAccessBlockConfiguration>".encode()


NO_BLOCK = Block()


@dataclass
class Version:
    vid: str | None         # None in the bucket never versioned
    body: bytes | None      # None: a delete marker
    acl: Acl = frozenset()
    tags: dict[str, str] = field(default_factory=dict)
    etag: str = ""

    @property
    def marker(self) -> bool:
        return self.body is None


@dataclass
class Upload:
    key: str
    initiator: str | None
    acl: Acl
    parts: dict[int, str] = field(default_factory=dict)  # number -> ETag


def owner_only(owner: str) -> Acl:
    return frozenset({("id", owner, "FULL_CONTROL")})


def canned(name: str, owner: str) -> Acl:
    return CANNED_EXTRA[name] | owner_only(owner)


@dataclass
class Bucket:
    """One bucket as S3 would hold it: its owner, settings, objects (versions newest
    first) and pending uploads."""

    name: str
    owner: str
    versioned: bool
    policy: dict[str, Any] | None = None
    policy_text: bytes | None = None
    acl: Acl = frozenset()
    block: Block | None = None
    ownership: str | None = None
    objects: dict[str, list[Version]] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)

    @property
    def acls_enabled(self) -> bool:
        return self.ownership != ENFORCED

    @property
    def blocks(self) -> Block:
        return self.block or NO_BLOCK

    def current(self, key: str) -> Version | None:
        """The key's latest version unless it is a delete marker (a GET's object)."""
        versions = self.objects.get(key, [])
        return versions[0] if versions and not versions[0].marker else None

    def evaluate(self, who: str | None, action: str, key: str | None, context: Mapping[str, str],
                 object_acl: Acl | None = None) -> Verdict:
        """S3's decision for `who` doing `action` on the bucket (key None) or a key, with the
        ACL of the object version concerned (None: no such object)."""
        verdict = self.evaluate_as(who, action, key, context, object_acl, False)
        if self.policy_text is None or b":user/" not in self.policy_text:
            return verdict
        if self.evaluate_as(who, action, key, context, object_acl, True) == verdict:
            return verdict
        return doubt(USER_ARN)

    def evaluate_as(self, who: str | None, action: str, key: str | None, context: Mapping[str, str],
                    object_acl: Acl | None, user_arns: bool) -> Verdict:
        resource = f"arn:aws:s3:::{self.name}" + ("" if key is None else f"/{key}")
        statements = self.policy["Statement"] if self.policy else []
        hits = [s["Effect"] for s in statements if applies(s, who, action, resource, context, user_arns)]
        owner = who is not None and who == self.owner
        if "Deny" in hits and not (owner and action in POLICY_ACTIONS):
            return Verdict(EXPLICIT)
        if owner:
            return YES
        restricted = self.blocks.restrict and policy_public(self.policy)
        if "Allow" in hits and not restricted:
            return YES
        granted = self.acl_allows(who, action, object_acl)
        if granted.allowed and restricted:
            return doubt("RestrictPublicBuckets with a public policy: are ACL grants shut out too")
        return granted

    def acl_allows(self, who: str | None, action: str, object_acl: Acl | None) -> Verdict:
        if not self.acls_enabled:
            return NO
        on_object = action in OBJECT_ACTIONS
        grants = object_acl if on_object else self.acl
        mapping = OBJECT_ACL_ACTIONS if on_object else BUCKET_ACL_ACTIONS
        ignore = self.blocks.ignore_acls
        found = NO
        for kind, grantee, permission in grants or ():
            if kind == "id" and grantee != who:
                continue
            if kind == "uri" and (ignore or not (grantee == ALL_USERS or (grantee == AUTHENTICATED and who))):
                continue
            given = set(mapping) if permission == "FULL_CONTROL" else {permission}
            if any(action in mapping.get(p, ()) for p in given):
                return YES
            if on_object and action in ATTRIBUTE_ACTIONS and given & {"READ"}:
                found = doubt("object READ grant -> s3:GetObject(Version)Attributes")
            if not on_object and action in WRITE_DOUBTS and given & {"WRITE"}:
                found = doubt(WRITE_DOUBTS[action])
            if not on_object and action == "s3:DeleteObjectVersion" and given & {"WRITE"}:
                found = doubt(KNOWN_WRITE_DELETES_VERSIONS)
        return found


# -- what the walk expects -----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One answer S3 could give: status, error code (None: a success, or not checked), what
    it means ("allow", "deny", "refused": a setting refuses it, "missing": 404), the doubt
    under which it is acceptable (empty: S3 answers it), and the checks and model change
    that come with it."""

    status: int
    code: str | None = None
    kind: str = "allow"
    doubt: str = ""
    then: Callable[[httpx.Response], None] | None = None

    def shown(self) -> str:
        return f"{self.status} {self.code or ''} ({self.kind}{', if ' + self.doubt if self.doubt else ''})"


DENIED = Outcome(403, "AccessDenied", "deny")


def gated(verdict: Verdict, on_allow: list[Outcome]) -> list[Outcome]:
    """The answers to a request the verdict decides: its own answers if allowed, 403 if not."""
    if verdict.allowed:
        return on_allow
    if verdict.denied:
        return [DENIED]
    return [*(replace(o, doubt=o.doubt or verdict.why) for o in on_allow), replace(DENIED, doubt=verdict.why)]


def either(why: str, *outcomes: Outcome) -> list[Outcome]:
    return [replace(o, doubt=o.doubt or why) for o in outcomes]


def write_outcomes(base: Verdict, verdict: Verdict, on_allow: list[Outcome]) -> list[Outcome]:
    """`gated` for a write whose ACL or tag headers take permissions of their own beside
    `base` (s3:PutObject): when those are what is denied, the bucket's refusal of the ACL
    may come first (which check comes first is no matter of access)."""
    outcomes = gated(verdict, on_allow)
    if verdict.denied and not base.denied:
        outcomes += either("an ACL the settings refuse, on a write denied its ACL or tags: which error first",
                           *(o for o in on_allow if o.kind == "refused"))
    return outcomes


@dataclass(frozen=True)
class AclAsk:
    """An ACL a request names: its headers, its grants, and what the bucket's settings see."""

    headers: dict[str, str]
    grants: Acl
    public: bool
    owner_only: bool  # bucket-owner-full-control, or the owner's FULL_CONTROL alone
    private: bool     # the canned private (is it "the owner's FULL_CONTROL" under BucketOwnerEnforced?)

    def shown(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.headers.items())


def grants_xml(root: ET.Element) -> Acl:
    out: set[Grant] = set()
    for grant in root.iter(NS + "Grant"):
        grantee = grant.find(NS + "Grantee")
        assert grantee is not None
        ident, uri = grantee.findtext(NS + "ID"), grantee.findtext(NS + "URI")
        out.add(("id", ident, grant.findtext(NS + "Permission") or "") if ident is not None
                else ("uri", uri or "", grant.findtext(NS + "Permission") or ""))
    return frozenset(out)


def stored_acl(text: Any, owner: str) -> Acl:
    """An ACL as the catalog records keep it (storage/access.py: a canned name, or the
    grants as a JSON list)."""
    if not text:
        return owner_only(owner)
    if text.startswith("["):
        return frozenset((kind, who, permission) for kind, who, permission in json.loads(text))
    return canned(text, owner)


def md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


# -- the walk ------------------------------------------------------------------------------


def call(s3: InProcessS3, who: str | None, method: str, path: str, *, body: bytes = b"",
         query: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
    """A request by one of ACCOUNTS, or unsigned (None)."""
    if who is None:
        return s3.request(method, path, body=body, query=query, headers=headers, sign=False)
    ak, sk = ACCOUNTS[who]
    return s3.request(method, path, body=body, query=query, headers=headers, access_key=ak, secret_key=sk)



class Walk:
    def __init__(self, s3: InProcessS3, seed: int, steps: int) -> None:
        self.s3 = s3
        self.seed = seed
        self.steps = steps
        self.rng = random.Random(seed)
        self.step = 0
        self.history: list[str] = []
        self.stats: Counter[str] = Counter()
        self.buckets = {name: Bucket(name, owner, name == VERSIONED) for name, owner in OWNERS.items()}
        self.made = 0
        self.part_bodies: dict[str, bytes] = {}  # upload id -> the body of its part 1

    # -- plumbing --

    def fail(self, what: str) -> None:
        settings = []
        for b in self.buckets.values():
            acls = {k: sorted(vs[0].acl) for k, vs in b.objects.items() if vs and not vs[0].marker}
            settings.append(f"  {b.name} (owner {b.owner}): block={b.block} ownership={b.ownership}\n"
                            f"    bucket ACL: {sorted(b.acl)}\n    object ACLs: {acls}\n"
                            f"    policy: {b.policy_text.decode() if b.policy_text else None}")
        tail = "\n".join(self.history[-HISTORY_TAIL:])
        raise AssertionError(f"seed={self.seed} step={self.step}: {what}\n" + "\n".join(settings)
                             + f"\nlast {min(HISTORY_TAIL, len(self.history))} requests:\n{tail}")

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.fail(what)

    def send(self, who: str | None, method: str, bucket: str, key: str | None = None, *,
             query: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
             body: bytes = b"") -> httpx.Response:
        path = f"/{bucket}" if key is None else f"/{bucket}/{key}"
        response = call(self.s3, who, method, path, body=body, query=query, headers=headers)
        shown_headers = {k: v for k, v in (headers or {}).items() if k.startswith("x-amz-")}
        self.history.append(f"  [{self.step}] {who or 'anonymous'}: {method} {path}"
                            f"{' ?' + '&'.join(f'{k}={v}' if v else k for k, v in query.items()) if query else ''}"
                            f"{' ' + str(shown_headers) if shown_headers else ''}"
                            f" -> {response.status_code} {self.code(response, method) or ''}")
        return response

    @staticmethod
    def code(response: httpx.Response, method: str) -> str | None:
        if method == "HEAD" or response.status_code < 300 or not response.content:
            return None
        try:
            return ET.fromstring(response.content).findtext("Code")
        except ET.ParseError:
            return None

    def settle(self, what: str, response: httpx.Response, method: str, outcomes: list[Outcome]) -> Outcome:
        """The outcome the answer is (a failure if none): its checks and model change run."""
        self.history[-1] += "   model: " + " | ".join(o.shown() for o in outcomes)
        code = self.code(response, method)
        status = response.status_code
        ordered = sorted(outcomes, key=lambda o: bool(o.doubt))
        match = next((o for o in ordered if o.status == status
                      and (o.code is None or method == "HEAD" or o.code == code)), None)
        if match is None:
            if status < 300 and not any(o.status < 300 for o in outcomes):
                label = "ALLOWED WHAT S3 DENIES"
            elif status == 403 and any(o.status < 300 for o in outcomes) and not any(o.status == 403 for o in outcomes):
                label = "DENIED WHAT S3 ALLOWS"
            else:
                label = "UNEXPECTED ANSWER"
            self.fail(f"{label}: {what}: got {status} {code or ''}; S3 would answer "
                      + " or ".join(o.shown() for o in outcomes) + f"\n  body: {response.text[:300]}")
        assert match is not None
        self.stats[f"doubt: {match.doubt} -> {match.kind}" if match.doubt else match.kind] += 1
        if match.then is not None:
            match.then(response)
        return match

    def context(self, prefix: str | None = None) -> dict[str, str]:
        return {**CONTEXT, "s3:prefix": prefix} if prefix is not None else dict(CONTEXT)

    def verdict(self, b: Bucket, who: str | None, action: str, key: str | None = None,
                acl: Acl | None = None, prefix: str | None = None) -> Verdict:
        return b.evaluate(who, action, key, self.context(prefix), acl)

    def stray(self) -> dict[str, str]:
        """Now and then a ?prefix= on a bucket request that is no listing (a client may add any)."""
        return {"prefix": self.rng.choice(LIST_PREFIXES[1:]) or ""} if self.rng.random() < 0.25 else {}

    def bucket_verdict(self, b: Bucket, who: str | None, action: str, query: Mapping[str, str],
                       key: str | None = None, why: str = KNOWN_STRAY_PREFIX) -> Verdict:
        """The verdict for a request that may carry a ?prefix=: AWS's context holds s3:prefix
        for listings only."""
        prefix = query.get("prefix")
        if action in LISTINGS and key is None:
            return self.verdict(b, who, action, key, prefix=prefix)
        strict = self.verdict(b, who, action, key)
        if prefix is None or self.verdict(b, who, action, key, prefix=prefix).kind == strict.kind:
            return strict
        return doubt(why)

    def new_body(self) -> bytes:
        self.made += 1
        return f"s{self.seed}-{self.step}-{self.made}".encode()

    def pick_who(self) -> str | None:
        return self.rng.choice(PRINCIPALS)

    def pick_bucket(self) -> Bucket:
        return self.buckets[self.rng.choice((PLAIN, VERSIONED))]

    # -- model changes --

    def add_version(self, b: Bucket, key: str, response: httpx.Response, body: bytes | None, acl: Acl,
                    tags: dict[str, str], vid: str | None = None, etag: str | None = None) -> None:
        etag = "" if body is None else etag or md5(body)
        if not b.versioned:
            if body is None:
                b.objects.pop(key, None)
            else:
                b.objects[key] = [Version(None, body, acl, tags, etag)]
            return
        vid = vid or response.headers.get("x-amz-version-id")
        self.expect(vid is not None and vid != "null", f"{b.name}/{key}: a write answered no version id")
        assert vid is not None
        b.objects[key] = [Version(vid, body, acl, tags, etag), *b.objects.get(key, [])]

    def remove_version(self, b: Bucket, key: str, vid: str) -> None:
        kept = [v for v in b.objects.get(key, []) if v.vid != vid]
        if kept:
            b.objects[key] = kept
        else:
            b.objects.pop(key, None)

    # -- ACLs a request names --

    def acl_ask(self, b: Bucket, on_object: bool) -> AclAsk:
        owner = b.owner
        if self.rng.random() < 0.6:
            name = self.rng.choice(OBJECT_CANNED if on_object else BUCKET_CANNED)
            grants = canned(name, owner)
            return AclAsk({"x-amz-acl": name}, grants, bool(CANNED_EXTRA[name]),
                          name == "bucket-owner-full-control", name == "private")
        chosen: set[Grant] = set()
        headers: dict[str, list[str]] = {}
        for _ in range(self.rng.randint(1, 3)):
            permission = self.rng.choice(tuple(GRANT_HEADERS))
            if self.rng.random() < 0.6:
                grantee: tuple[str, str] = ("id", self.rng.choice(tuple(ACCOUNTS)))
            else:
                grantee = ("uri", self.rng.choice((ALL_USERS, AUTHENTICATED)))
            if (*grantee, permission) in chosen:
                continue
            chosen.add((grantee[0], grantee[1], permission))
            headers.setdefault(GRANT_HEADERS[permission], []).append(f'{grantee[0]}="{grantee[1]}"')
        if self.rng.random() < 0.4 and ("id", owner, "FULL_CONTROL") not in chosen:
            chosen.add(("id", owner, "FULL_CONTROL"))
            headers.setdefault(GRANT_HEADERS["FULL_CONTROL"], []).append(f'id="{owner}"')
        grants = frozenset(chosen)
        return AclAsk({k: ", ".join(v) for k, v in headers.items()}, grants,
                      any(kind == "uri" for kind, _, _ in grants), grants == owner_only(owner), False)

    def acl_outcomes(self, b: Bucket, ask: AclAsk | None, success: Outcome) -> list[Outcome]:
        """What the bucket's settings make of an ACL a request names, once the request is
        allowed (AWS: BucketOwnerEnforced takes bucket-owner-full-control alone,
        AccessControlListNotSupported; BlockPublicAcls refuses a public ACL, AccessDenied)."""
        if ask is None:
            return [success]
        unsupported = Outcome(400, "AccessControlListNotSupported", "refused")
        blocked = Outcome(403, "AccessDenied", "refused")
        if not b.acls_enabled:
            if ask.owner_only:
                return [success]
            if ask.private:
                return either("BucketOwnerEnforced: is the canned private the owner's FULL_CONTROL alone",
                              success, unsupported)
            if ask.public and b.blocks.block_acls:
                return either("BucketOwnerEnforced and BlockPublicAcls both refuse it: which error",
                              unsupported, blocked)
            return [unsupported]
        if ask.public and b.blocks.block_acls:
            return [blocked]
        return [success]

    def missing(self, b: Bucket, who: str | None, action: str, key: str, code: str,
                get_like: bool, allowed: Verdict | None = None) -> list[Outcome]:
        """The answers for an action on a key that does not exist (or whose latest version
        is a delete marker): 404 to whoever may list the bucket, else 403 (AWS documents
        it for GetObject: even to a caller allowed s3:GetObject). `allowed`: the verdict on
        the action when it takes more than `action` alone."""
        allowed = self.verdict(b, who, action, key) if allowed is None else allowed
        listing = self.verdict(b, who, "s3:ListBucket")
        nsk = Outcome(404, code, "missing")
        outcomes = self.missing_or_denied(allowed, listing, nsk, action, get_like)
        versions = b.objects.get(key, [])
        if not get_like and versions and versions[0].marker:  # 405, as for a delete marker named by id?
            outcomes += [replace(o, status=405, code="MethodNotAllowed",
                                 doubt="the latest version is a delete marker: 404 or 405")
                         for o in outcomes if o.status == 404]
        return outcomes

    @staticmethod
    def missing_or_denied(allowed: Verdict, listing: Verdict, nsk: Outcome, action: str,
                          get_like: bool) -> list[Outcome]:
        if allowed.kind == EXPLICIT:
            return [DENIED]
        if allowed.allowed and listing.allowed:
            return [nsk]
        if listing.kind == DOUBT:
            return either(listing.why, nsk, DENIED)
        if listing.denied:
            if allowed.denied:
                return [DENIED]
            if get_like:
                return either(KNOWN_MISSING_404, DENIED, nsk)
            return either(f"a missing key, {action} allowed but not s3:ListBucket: 403 or 404", DENIED, nsk)
        return either(f"a missing key that the caller may list but not {action}: 403 or 404", DENIED, nsk)

    # -- object operations --

    def get_object(self, who: str | None, b: Bucket, key: str, method: str) -> None:
        target = b.current(key)
        what = f"{method} {b.name}/{key} by {who}"
        if target is None:
            outcomes = self.missing(b, who, "s3:GetObject", key, "NoSuchKey", get_like=True)
        else:
            body, etag = target.body, target.etag

            def check(response: httpx.Response) -> None:
                if method == "GET":
                    self.expect(response.content == body, f"{what}: body {response.content!r}, S3 holds {body!r}")
                self.expect(response.headers.get("etag") == f'"{etag}"', f"{what}: etag")

            outcomes = gated(self.verdict(b, who, "s3:GetObject", key, target.acl), [Outcome(200, then=check)])
        self.settle(what, self.send(who, method, b.name, key), method, outcomes)

    def get_version(self, who: str | None, b: Bucket) -> bool:
        held = [(k, v) for k, vs in b.objects.items() for v in vs if not v.marker and k != SENTINEL]
        if not held:
            return False
        key, version = self.rng.choice(held)
        assert version.vid is not None and version.body is not None
        body = version.body
        what = f"GET {b.name}/{key}?versionId={version.vid} by {who}"

        def check(response: httpx.Response) -> None:
            self.expect(response.content == body, f"{what}: body {response.content!r}, S3 holds {body!r}")

        outcomes = gated(self.verdict(b, who, "s3:GetObjectVersion", key, version.acl), [Outcome(200, then=check)])
        self.settle(what, self.send(who, "GET", b.name, key, query={"versionId": version.vid}), "GET", outcomes)
        return True

    def put_object(self, who: str | None, b: Bucket, key: str) -> None:
        body = self.new_body()
        headers: dict[str, str] = {}
        ask = self.acl_ask(b, on_object=True) if self.rng.random() < 0.3 else None
        tags = {"t": str(self.step)} if self.rng.random() < 0.15 else {}
        needed = [self.verdict(b, who, "s3:PutObject", key)]
        if ask is not None:
            headers.update(ask.headers)
            needed.append(self.verdict(b, who, "s3:PutObjectAcl", key))
        if tags:
            headers["x-amz-tagging"] = f"t={self.step}"
            needed.append(self.verdict(b, who, "s3:PutObjectTagging", key))
        acl = ask.grants if ask is not None else canned("private", b.owner)
        what = f"PUT {b.name}/{key} by {who} {ask.shown() if ask else ''}{' x-amz-tagging' if tags else ''}"

        def done(response: httpx.Response) -> None:
            self.expect(response.headers.get("etag") == f'"{md5(body)}"', f"{what}: etag")
            self.add_version(b, key, response, body, acl, tags)

        outcomes = write_outcomes(needed[0], all_of(*needed), self.acl_outcomes(b, ask, Outcome(200, then=done)))
        self.settle(what, self.send(who, "PUT", b.name, key, body=body, headers=headers), "PUT", outcomes)

    def delete_object(self, who: str | None, b: Bucket, key: str) -> None:
        what = f"DELETE {b.name}/{key} by {who}"

        def done(response: httpx.Response) -> None:
            if b.versioned:
                self.expect(response.headers.get("x-amz-delete-marker") == "true", f"{what}: no delete marker")
            self.add_version(b, key, response, None, frozenset(), {})

        outcomes = gated(self.verdict(b, who, "s3:DeleteObject", key), [Outcome(204, then=done)])
        self.settle(what, self.send(who, "DELETE", b.name, key), "DELETE", outcomes)

    def delete_version(self, who: str | None, b: Bucket) -> bool:
        held = [(k, v) for k, vs in b.objects.items() for v in vs if k != SENTINEL]
        if not held:
            return False
        key, version = self.rng.choice(held)
        assert version.vid is not None
        vid = version.vid
        what = f"DELETE {b.name}/{key}?versionId={vid} by {who}"
        outcomes = gated(self.verdict(b, who, "s3:DeleteObjectVersion", key),
                         [Outcome(204, then=lambda _: self.remove_version(b, key, vid))])
        self.settle(what, self.send(who, "DELETE", b.name, key, query={"versionId": vid}), "DELETE", outcomes)
        return True

    def delete_objects(self, who: str | None, b: Bucket) -> None:
        keys = self.rng.sample(KEYS, self.rng.randint(1, 3))
        items: list[tuple[str, str | None]] = []
        for key in keys:
            versions = b.objects.get(key, [])
            vid = self.rng.choice(versions).vid if b.versioned and versions and self.rng.random() < 0.4 else None
            items.append((key, vid))
        body = "".join(f"<Object><Key>{k}</Key>{f'<VersionId>{v}</VersionId>' if v else ''}</Object>"
                       for k, v in items)
        query = {"delete": "", **self.stray()}
        what = f"DeleteObjects {b.name} {items} by {who}"
        response = self.send(who, "POST", b.name, query=query, body=f"<Delete>{body}</Delete>".encode())
        self.settle(what, response, "POST", [Outcome(200)])
        root = ET.fromstring(response.content)
        answered: dict[str, tuple[str, ET.Element]] = {}
        for child in root:
            answered[child.findtext(NS + "Key") or ""] = (child.tag.removeprefix(NS), child)
        for key, vid in items:
            action = "s3:DeleteObjectVersion" if vid else "s3:DeleteObject"
            tag, node = answered.get(key, ("none", root))
            self.history.append(f"    {key}{'?versionId=' + vid if vid else ''}: {tag} "
                                f"{node.findtext(NS + 'Code') or ''}")
            status = 204 if tag == "Deleted" else 403 if node.findtext(NS + "Code") == "AccessDenied" else 500

            def done(_: httpx.Response, key: str = key, vid: str | None = vid, node: ET.Element = node) -> None:
                if vid is not None:
                    self.remove_version(b, key, vid)
                elif b.versioned:
                    marker = node.findtext(NS + "DeleteMarkerVersionId")
                    self.expect(marker is not None, f"{what}: {key}: no DeleteMarkerVersionId")
                    self.add_version(b, key, response, None, frozenset(), {}, vid=marker)
                else:
                    b.objects.pop(key, None)

            outcomes = gated(self.bucket_verdict(b, who, action, query, key), [Outcome(204, then=done)])
            fake = httpx.Response(status, content=b"" if status == 204 else
                                  b"<Error><Code>AccessDenied</Code></Error>" if status == 403 else b"<Error/>")
            self.settle(f"{what}: {key}", fake, "POST", outcomes)

    def tagging(self, who: str | None, b: Bucket, key: str) -> None:
        method = self.rng.choice(("GET", "PUT", "PUT", "DELETE"))
        action = {"GET": "s3:GetObjectTagging", "PUT": "s3:PutObjectTagging", "DELETE": "s3:DeleteObjectTagging"}[method]
        target = b.current(key)
        what = f"{method} {b.name}/{key}?tagging by {who}"
        tags = {"k": f"v{self.step}"}
        body = (f"<Tagging><TagSet><Tag><Key>k</Key><Value>{tags['k']}</Value></Tag></TagSet></Tagging>".encode()
                if method == "PUT" else b"")
        if target is None:
            outcomes = self.missing(b, who, action, key, "NoSuchKey", get_like=False)
        else:
            version = target

            def done(response: httpx.Response) -> None:
                if method == "GET":
                    got = dict(zip(texts(ET.fromstring(response.content), "TagSet/Tag/Key"),
                                   texts(ET.fromstring(response.content), "TagSet/Tag/Value"), strict=True))
                    self.expect(got == version.tags, f"{what}: tags {got}, S3 holds {version.tags}")
                else:
                    version.tags = tags if method == "PUT" else {}

            outcomes = gated(self.verdict(b, who, action, key),
                             [Outcome(204 if method == "DELETE" else 200, then=done)])
        self.settle(what, self.send(who, method, b.name, key, query={"tagging": ""}, body=body), method, outcomes)

    def get_object_acl(self, who: str | None, b: Bucket, key: str) -> None:
        target = b.current(key)
        what = f"GET {b.name}/{key}?acl by {who}"
        if target is None:
            outcomes = self.missing(b, who, "s3:GetObjectAcl", key, "NoSuchKey", get_like=False)
        else:
            want = target.acl if b.acls_enabled else owner_only(b.owner)

            def check(response: httpx.Response) -> None:
                got = grants_xml(ET.fromstring(response.content))
                self.expect(got == want, f"{what}: grants {sorted(got)}, S3 shows {sorted(want)}")

            outcomes = gated(self.verdict(b, who, "s3:GetObjectAcl", key, target.acl), [Outcome(200, then=check)])
        self.settle(what, self.send(who, "GET", b.name, key, query={"acl": ""}), "GET", outcomes)

    def attributes(self, who: str | None, b: Bucket, key: str) -> None:
        """GetObjectAttributes (AWS: s3:GetObject and s3:GetObjectAttributes; in a versioned
        bucket s3:GetObjectVersion and s3:GetObjectVersionAttributes)."""
        target = b.current(key)
        what = f"GET {b.name}/{key}?attributes by {who}"
        read, attrs = (("s3:GetObjectVersion", "s3:GetObjectVersionAttributes") if b.versioned
                       else ("s3:GetObject", "s3:GetObjectAttributes"))
        if target is None:
            outcomes = self.missing(b, who, attrs, key, "NoSuchKey", get_like=False,
                                    allowed=all_of(self.verdict(b, who, read, key), self.verdict(b, who, attrs, key)))
            if outcomes != self.missing(b, who, "s3:GetObjectAttributes", key, "NoSuchKey", get_like=False):
                # which permissions turn a missing key's 404 into 403 here is not documented
                outcomes = either("a missing key's GetObjectAttributes: 403 or 404", DENIED,
                                  Outcome(404, "NoSuchKey", "missing"))
        else:
            etag = target.etag

            def check(response: httpx.Response) -> None:
                got = (ET.fromstring(response.content).findtext(NS + "ETag") or "").strip('"')
                self.expect(got == etag, f"{what}: ETag {got}, S3 holds {etag}")

            verdict = all_of(self.verdict(b, who, read, key, target.acl), self.verdict(b, who, attrs, key, target.acl))
            outcomes = gated(verdict, [Outcome(200, then=check)])
        response = self.send(who, "GET", b.name, key, query={"attributes": ""},
                             headers={"x-amz-object-attributes": "ETag"})
        self.settle(what, response, "GET", outcomes)

    def put_object_acl(self, who: str | None, b: Bucket, key: str) -> None:
        target = b.current(key)
        ask = self.acl_ask(b, on_object=True)
        what = f"PUT {b.name}/{key}?acl {ask.shown()} by {who}"
        if target is None:
            outcomes = self.missing(b, who, "s3:PutObjectAcl", key, "NoSuchKey", get_like=False)
            if any(o.kind == "missing" for o in outcomes):  # a setting may refuse the ACL first
                outcomes += either("a missing key and an ACL the settings refuse: which error",
                                   *self.acl_outcomes(b, ask, Outcome(404, "NoSuchKey", "missing")))
        else:
            version = target

            def done(_: httpx.Response) -> None:
                version.acl = ask.grants

            outcomes = gated(self.verdict(b, who, "s3:PutObjectAcl", key, target.acl),
                             self.acl_outcomes(b, ask, Outcome(200, then=done)))
        self.settle(what, self.send(who, "PUT", b.name, key, query={"acl": ""}, headers=ask.headers), "PUT", outcomes)

    def copy_object(self, who: str | None, dst: Bucket, key: str) -> None:
        src = self.pick_bucket()
        src_key = self.rng.choice(KEYS)
        versions = [v for v in src.objects.get(src_key, []) if not v.marker]
        by_version = src.versioned and versions and self.rng.random() < 0.25
        source = self.rng.choice(versions) if by_version else src.current(src_key)
        ask = self.acl_ask(dst, on_object=True) if self.rng.random() < 0.15 else None
        headers = {"x-amz-copy-source": f"/{src.name}/{src_key}" + (f"?versionId={source.vid}" if by_version
                                                                      and source else ""),
                   "x-amz-metadata-directive": "REPLACE", **(ask.headers if ask else {})}
        what = f"CopyObject {headers['x-amz-copy-source']} -> {dst.name}/{key} by {who} {ask.shown() if ask else ''}"
        get_action = "s3:GetObjectVersion" if by_version else "s3:GetObject"
        put = [self.verdict(dst, who, "s3:PutObject", key)]
        if ask is not None:
            put.append(self.verdict(dst, who, "s3:PutObjectAcl", key))
        if source is None:
            getting = self.verdict(src, who, get_action, src_key)
            if put[0].denied or getting.kind == EXPLICIT or (
                    self.verdict(src, who, "s3:ListBucket").denied and getting.denied):
                outcomes = [DENIED]
            else:
                outcomes = either("a copy whose source is missing (which check comes first): 403 or 404", DENIED,
                                  Outcome(404, "NoSuchKey", "missing"))
        else:
            body, source_tags, source_etag = source.body, dict(source.tags), source.etag
            assert body is not None
            needed = [*put, self.verdict(src, who, get_action, src_key, source.acl)]
            tag_verdict = YES
            if source_tags:
                tag_verdict = all_of(self.verdict(dst, who, "s3:PutObjectTagging", key), self.verdict(
                    src, who, "s3:GetObjectVersionTagging" if by_version else "s3:GetObjectTagging", src_key))
                if not tag_verdict.allowed:
                    tag_verdict = doubt("copying a tagged source takes s3:GetObjectTagging on it and "
                                        "s3:PutObjectTagging on the copy")
            acl = ask.grants if ask else canned("private", dst.owner)

            def done(response: httpx.Response) -> None:
                self.add_version(dst, key, response, body, acl, source_tags, etag=source_etag)

            outcomes = write_outcomes(put[0], all_of(*needed, tag_verdict),
                                      self.acl_outcomes(dst, ask, Outcome(200, then=done)))
        self.settle(what, self.send(who, "PUT", dst.name, key, headers=headers), "PUT", outcomes)

    # -- multipart --

    def create_upload(self, who: str | None, b: Bucket, key: str) -> None:
        ask = self.acl_ask(b, on_object=True) if self.rng.random() < 0.2 else None
        needed = [self.verdict(b, who, "s3:PutObject", key)]
        if ask is not None:
            needed.append(self.verdict(b, who, "s3:PutObjectAcl", key))
        what = f"CreateMultipartUpload {b.name}/{key} by {who} {ask.shown() if ask else ''}"

        def done(response: httpx.Response) -> None:
            upload_id = ET.fromstring(response.content).findtext(NS + "UploadId")
            self.expect(bool(upload_id), f"{what}: no UploadId")
            assert upload_id is not None
            b.uploads[upload_id] = Upload(key, who, ask.grants if ask else canned("private", b.owner))

        outcomes = write_outcomes(needed[0], all_of(*needed), self.acl_outcomes(b, ask, Outcome(200, then=done)))
        self.settle(what, self.send(who, "POST", b.name, key, query={"uploads": ""},
                                    headers=ask.headers if ask else None), "POST", outcomes)

    def pick_upload(self, b: Bucket, with_parts: bool = False) -> tuple[str, Upload] | None:
        held = [(i, u) for i, u in sorted(b.uploads.items()) if u.parts or not with_parts]
        return self.rng.choice(held) if held else None

    def not_initiator(self, who: str | None, upload: Upload, verdict: Verdict) -> Verdict:
        """AWS: "Only the initiator of a multipart upload can upload parts" (and complete it)."""
        if who == upload.initiator or verdict.denied:
            return verdict
        return all_of(verdict, doubt("a part or completion by another principal than the upload's initiator"))

    def initiator_default(self, who: str | None, upload: Upload, verdict: Verdict) -> Verdict:
        """AWS: the initiator may abort its upload and list its parts by default."""
        if verdict.kind == IMPLICIT and who is not None and who == upload.initiator:
            return doubt("the initiator aborts or lists its own upload without a grant")
        return verdict

    def upload_part(self, who: str | None, b: Bucket) -> bool:
        picked = self.pick_upload(b)
        if picked is None:
            return False
        upload_id, upload = picked
        body = self.new_body()
        what = f"UploadPart {b.name}/{upload.key} upload {upload_id[:8]}.. (by {upload.initiator}) by {who}"

        def done(response: httpx.Response) -> None:
            self.expect(response.headers.get("etag") == f'"{md5(body)}"', f"{what}: etag")
            upload.parts[1] = md5(body)
            self.part_bodies[upload_id] = body

        verdict = self.not_initiator(who, upload, self.verdict(b, who, "s3:PutObject", upload.key))
        outcomes = gated(verdict, [Outcome(200, then=done)])
        self.settle(what, self.send(who, "PUT", b.name, upload.key, query={"partNumber": "1", "uploadId": upload_id},
                                    body=body), "PUT", outcomes)
        return True

    def complete_upload(self, who: str | None, b: Bucket) -> bool:
        picked = self.pick_upload(b, with_parts=True)
        if picked is None:
            return False
        upload_id, upload = picked
        body = self.part_bodies[upload_id]
        xml_body = (f'<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"{upload.parts[1]}"</ETag>'
                    "</Part></CompleteMultipartUpload>").encode()
        what = f"CompleteMultipartUpload {b.name}/{upload.key} upload {upload_id[:8]}.. (by {upload.initiator}) by {who}"

        def done(response: httpx.Response) -> None:
            del b.uploads[upload_id]
            etag = (ET.fromstring(response.content).findtext(NS + "ETag") or "").strip('"')
            self.add_version(b, upload.key, response, body, upload.acl, {}, etag=etag)

        verdict = self.not_initiator(who, upload, self.verdict(b, who, "s3:PutObject", upload.key))
        outcomes = gated(verdict, [Outcome(200, then=done)])
        self.settle(what, self.send(who, "POST", b.name, upload.key, query={"uploadId": upload_id}, body=xml_body),
                    "POST", outcomes)
        return True

    def abort_upload(self, who: str | None, b: Bucket) -> bool:
        picked = self.pick_upload(b)
        if picked is None:
            return False
        upload_id, upload = picked
        what = f"AbortMultipartUpload {b.name}/{upload.key} upload {upload_id[:8]}.. (by {upload.initiator}) by {who}"
        verdict = self.initiator_default(who, upload, self.verdict(b, who, "s3:AbortMultipartUpload", upload.key))
        def done(_: httpx.Response) -> None:
            del b.uploads[upload_id]

        outcomes = gated(verdict, [Outcome(204, then=done)])
        self.settle(what, self.send(who, "DELETE", b.name, upload.key, query={"uploadId": upload_id}), "DELETE",
                    outcomes)
        return True

    def list_parts(self, who: str | None, b: Bucket) -> bool:
        picked = self.pick_upload(b)
        if picked is None:
            return False
        upload_id, upload = picked
        what = f"ListParts {b.name}/{upload.key} upload {upload_id[:8]}.. (by {upload.initiator}) by {who}"

        def check(response: httpx.Response) -> None:
            got = texts(ET.fromstring(response.content), "Part/PartNumber")
            self.expect(got == [str(n) for n in sorted(upload.parts)], f"{what}: parts {got}")

        verdict = self.initiator_default(who, upload, self.verdict(b, who, "s3:ListMultipartUploadParts", upload.key))
        outcomes = gated(verdict, [Outcome(200, then=check)])
        self.settle(what, self.send(who, "GET", b.name, upload.key, query={"uploadId": upload_id}), "GET", outcomes)
        return True

    def list_uploads(self, who: str | None, b: Bucket) -> None:
        what = f"ListMultipartUploads {b.name} by {who}"

        query = {"uploads": "", **self.stray()}
        want = sorted(i for i, u in b.uploads.items() if u.key.startswith(query.get("prefix", "")))

        def check(response: httpx.Response) -> None:
            got = sorted(texts(ET.fromstring(response.content), "Upload/UploadId"))
            self.expect(got == want, f"{what}: uploads {got}, S3 holds {want}")

        verdict = self.bucket_verdict(b, who, "s3:ListBucketMultipartUploads", query,
                                      why="does ListMultipartUploads' prefix fill s3:prefix")
        outcomes = gated(verdict, [Outcome(200, then=check)])
        self.settle(what, self.send(who, "GET", b.name, query=query), "GET", outcomes)

    # -- bucket operations --

    def list_objects(self, who: str | None, b: Bucket) -> None:
        prefix = self.rng.choice(LIST_PREFIXES)
        query = {"list-type": "2", **({"prefix": prefix} if prefix is not None else {})}
        what = f"ListObjectsV2 {b.name} prefix={prefix!r} by {who}"
        want = sorted(k for k in b.objects if b.current(k) is not None and k.startswith(prefix or ""))

        def check(response: httpx.Response) -> None:
            got = texts(ET.fromstring(response.content), "Contents/Key")
            self.expect(got == want, f"{what}: keys {got}, S3 holds {want}")

        outcomes = gated(self.verdict(b, who, "s3:ListBucket", prefix=prefix), [Outcome(200, then=check)])
        self.settle(what, self.send(who, "GET", b.name, query=query), "GET", outcomes)

    def list_versions(self, who: str | None, b: Bucket) -> None:
        what = f"ListObjectVersions {b.name} by {who}"
        want = [(k, v.vid or "null", v.marker) for k in sorted(b.objects) for v in b.objects[k]]

        def check(response: httpx.Response) -> None:
            got = [(c.findtext(NS + "Key"), c.findtext(NS + "VersionId"), c.tag == NS + "DeleteMarker")
                   for c in ET.fromstring(response.content) if c.tag in (NS + "Version", NS + "DeleteMarker")]
            self.expect(got == want, f"{what}: versions {got}, S3 holds {want}")

        outcomes = gated(self.verdict(b, who, "s3:ListBucketVersions"), [Outcome(200, then=check)])
        self.settle(what, self.send(who, "GET", b.name, query={"versions": ""}), "GET", outcomes)

    def head_bucket(self, who: str | None, b: Bucket) -> None:
        query = self.stray()
        verdict = self.verdict(b, who, "s3:ListBucket")
        if query and self.verdict(b, who, "s3:ListBucket", prefix=query["prefix"]).kind != verdict.kind:
            verdict = doubt("does a ?prefix= on HeadBucket fill s3:prefix")
        outcomes = gated(verdict, [Outcome(200)])
        self.settle(f"HEAD {b.name} by {who}", self.send(who, "HEAD", b.name, query=query), "HEAD", outcomes)

    def get_bucket_acl(self, who: str | None, b: Bucket) -> None:
        what = f"GET {b.name}?acl by {who}"
        want = b.acl if b.acls_enabled else owner_only(b.owner)

        def check(response: httpx.Response) -> None:
            got = grants_xml(ET.fromstring(response.content))
            self.expect(got == want, f"{what}: grants {sorted(got)}, S3 shows {sorted(want)}")

        query = {"acl": "", **self.stray()}
        outcomes = gated(self.bucket_verdict(b, who, "s3:GetBucketAcl", query), [Outcome(200, then=check)])
        self.settle(what, self.send(who, "GET", b.name, query=query), "GET", outcomes)

    def put_bucket_acl(self, who: str | None, b: Bucket) -> None:
        ask = self.acl_ask(b, on_object=False)
        what = f"PUT {b.name}?acl {ask.shown()} by {who}"

        def done(_: httpx.Response) -> None:
            b.acl = ask.grants

        query = {"acl": "", **self.stray()}
        outcomes = gated(self.bucket_verdict(b, who, "s3:PutBucketAcl", query),
                         self.acl_outcomes(b, ask, Outcome(200, then=done)))
        self.settle(what, self.send(who, "PUT", b.name, query=query, headers=ask.headers), "PUT", outcomes)

    def owners_only(self, who: str | None, b: Bucket, action: str, query: Mapping[str, str],
                    success: list[Outcome]) -> list[Outcome]:
        """Policy management (AWS: 403 without the permission; with it, 405 to any identity
        outside the bucket owner's account; the owner's account always may)."""
        verdict = self.bucket_verdict(b, who, action, query)
        if who == b.owner:
            return gated(verdict, success)
        return gated(verdict, [Outcome(405, "MethodNotAllowed", "refused")])

    def get_bucket_policy(self, who: str | None, b: Bucket) -> None:
        what = f"GET {b.name}?policy by {who}"
        text = b.policy_text

        def check(response: httpx.Response) -> None:
            self.expect(response.content == text, f"{what}: {response.content!r}, S3 holds {text!r}")

        success = [Outcome(200, then=check)] if text is not None else [Outcome(404, "NoSuchBucketPolicy", "missing")]
        query = {"policy": "", **self.stray()}
        outcomes = self.owners_only(who, b, "s3:GetBucketPolicy", query, success)
        self.settle(what, self.send(who, "GET", b.name, query=query), "GET", outcomes)

    def foreign_policy_change(self, who: str | None, b: Bucket) -> None:
        """Another principal than the owner's account puts an allow-everything policy, or
        deletes the policy."""
        if who == b.owner:
            return
        if self.rng.random() < 0.5:
            doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:*",
                                                           "Resource": [f"arn:aws:s3:::{b.name}",
                                                                        f"arn:aws:s3:::{b.name}/*"]}]}
            query = {"policy": "", **self.stray()}
            outcomes = self.owners_only(who, b, "s3:PutBucketPolicy", query, [])
            response = self.send(who, "PUT", b.name, query=query, body=json.dumps(doc).encode())
            self.settle(f"PUT {b.name}?policy (allow all) by {who}", response, "PUT", outcomes)
        else:
            query = {"policy": "", **self.stray()}
            outcomes = self.owners_only(who, b, "s3:DeleteBucketPolicy", query, [])
            self.settle(f"DELETE {b.name}?policy by {who}", self.send(who, "DELETE", b.name, query=query),
                        "DELETE", outcomes)

    def foreign_settings_read(self, who: str | None, b: Bucket) -> None:
        """GetBucketPolicyStatus / GetPublicAccessBlock / GetBucketOwnershipControls by another
        account (AWS documents the permission, not the 405 it gives for policies)."""
        if who == b.owner:
            return
        sub, action = self.rng.choice((("policyStatus", "s3:GetBucketPolicyStatus"),
                                       ("publicAccessBlock", "s3:GetBucketPublicAccessBlock"),
                                       ("ownershipControls", "s3:GetBucketOwnershipControls")))
        why = f"?{sub} read by another account that a policy allows: 405, or the answer"
        success = either(why, Outcome(405, "MethodNotAllowed", "refused"), Outcome(200), Outcome(404, None, "missing"))
        query = {sub: "", **self.stray()}
        outcomes = gated(self.bucket_verdict(b, who, action, query), success)
        self.settle(f"GET {b.name}?{sub} by {who}", self.send(who, "GET", b.name, query=query), "GET", outcomes)

    def versioning(self, who: str | None, b: Bucket) -> None:
        if self.rng.random() < 0.5 or not b.versioned:
            want = ["Enabled"] if b.versioned else []

            def check(response: httpx.Response) -> None:
                got = texts(ET.fromstring(response.content), "Status")
                self.expect(got == want, f"GET {b.name}?versioning: {got}")

            query = {"versioning": "", **self.stray()}
            outcomes = gated(self.bucket_verdict(b, who, "s3:GetBucketVersioning", query), [Outcome(200, then=check)])
            self.settle(f"GET {b.name}?versioning by {who}", self.send(who, "GET", b.name, query=query),
                        "GET", outcomes)
            return
        body = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
        query = {"versioning": "", **self.stray()}
        outcomes = gated(self.bucket_verdict(b, who, "s3:PutBucketVersioning", query), [Outcome(200)])
        self.settle(f"PUT {b.name}?versioning Enabled by {who}",
                    self.send(who, "PUT", b.name, query=query, body=body), "PUT", outcomes)

    def delete_bucket(self, who: str | None, b: Bucket) -> None:
        query = self.stray()
        outcomes = gated(self.bucket_verdict(b, who, "s3:DeleteBucket", query),
                         [Outcome(409, "BucketNotEmpty", "refused")])
        self.settle(f"DELETE {b.name} by {who}", self.send(who, "DELETE", b.name, query=query), "DELETE", outcomes)

    def location(self, who: str | None, b: Bucket) -> None:
        query = {"location": "", **self.stray()}
        outcomes = gated(self.bucket_verdict(b, who, "s3:GetBucketLocation", query), [Outcome(200)])
        self.settle(f"GET {b.name}?location by {who}", self.send(who, "GET", b.name, query=query), "GET", outcomes)

    # -- the owner's settings --

    def random_statement(self, b: Bucket) -> dict[str, Any]:
        rng = self.rng
        effect = "Allow" if rng.random() < 0.6 else "Deny"
        statement: dict[str, Any] = {"Effect": effect}
        if effect == "Deny" and rng.random() < 0.2:
            statement["NotPrincipal"] = principal_element(rng, rng.sample(tuple(ACCOUNTS), rng.randint(1, 2)))
        else:
            r = rng.random()
            if r < 0.25:
                statement["Principal"] = "*"
            elif r < 0.4:
                statement["Principal"] = {"AWS": "*"}
            else:
                statement["Principal"] = principal_element(rng, rng.sample(tuple(ACCOUNTS), rng.randint(1, 2)))
        actions = rng.sample(ACTIONS, rng.randint(1, 3))
        if rng.random() < 0.45:
            actions[0] = rng.choice(WILDCARD_ACTIONS)
        statement["NotAction" if rng.random() < 0.1 else "Action"] = actions[0] if len(actions) == 1 else actions
        chosen = rng.sample(resources(b.name), rng.randint(1, 3))
        statement["NotResource" if rng.random() < 0.1 else "Resource"] = chosen[0] if len(chosen) == 1 else chosen
        if rng.random() < 0.35:
            statement["Condition"] = json.loads(json.dumps(rng.choice(CONDITIONS)))
        return statement

    def put_policy(self, b: Bucket) -> None:
        doc = {"Version": "2012-10-17", "Statement": [self.random_statement(b) for _ in range(self.rng.randint(1, 3))]}
        text = json.dumps(doc).encode()

        def done(_: httpx.Response) -> None:
            b.policy, b.policy_text = doc, text

        if b.blocks.block_policy and policy_public(doc):
            outcomes = [Outcome(403, "AccessDenied", "refused")]  # BlockPublicPolicy
        else:
            outcomes = [Outcome(204, then=done)]
        if b":user/" in text:  # AWS refuses a principal that does not exist
            outcomes = either(USER_ARN, *outcomes, Outcome(400, "MalformedPolicy", "refused"))
        self.settle(f"PUT {b.name}?policy by its owner", self.send(b.owner, "PUT", b.name, query={"policy": ""},
                                                                   body=text), "PUT", outcomes)
        self.policy_status(b)

    def policy_status(self, b: Bucket) -> None:
        public = policy_public(b.policy)

        def check(response: httpx.Response) -> None:
            got = texts(ET.fromstring(response.content), "IsPublic")
            self.expect(got == ["true" if public else "false"], f"GET {b.name}?policyStatus: IsPublic {got}, "
                        f"S3 (the meaning of public): {public}")

        success = [Outcome(200, then=check)] if b.policy else [Outcome(404, "NoSuchBucketPolicy", "missing")]
        outcomes = gated(self.verdict(b, b.owner, "s3:GetBucketPolicyStatus"), success)
        self.settle(f"GET {b.name}?policyStatus by its owner",
                    self.send(b.owner, "GET", b.name, query={"policyStatus": ""}), "GET", outcomes)

    def delete_policy(self, b: Bucket) -> None:
        def done(_: httpx.Response) -> None:
            b.policy = b.policy_text = None

        self.settle(f"DELETE {b.name}?policy by its owner", self.send(b.owner, "DELETE", b.name, query={"policy": ""}),
                    "DELETE", [Outcome(204, then=done)])

    def put_block(self, b: Bucket) -> None:
        block = Block(*(self.rng.random() < 0.3 for _ in range(4)))

        def done(_: httpx.Response) -> None:
            b.block = block

        outcomes = gated(self.verdict(b, b.owner, "s3:PutBucketPublicAccessBlock"), [Outcome(200, then=done)])
        self.settle(f"PUT {b.name}?publicAccessBlock {block} by its owner",
                    self.send(b.owner, "PUT", b.name, query={"publicAccessBlock": ""}, body=block.xml()), "PUT",
                    outcomes)

    def delete_block(self, b: Bucket) -> None:
        def done(_: httpx.Response) -> None:
            b.block = None

        outcomes = gated(self.verdict(b, b.owner, "s3:PutBucketPublicAccessBlock"), [Outcome(204, then=done)])
        self.settle(f"DELETE {b.name}?publicAccessBlock by its owner",
                    self.send(b.owner, "DELETE", b.name, query={"publicAccessBlock": ""}), "DELETE", outcomes)

    def put_ownership(self, b: Bucket) -> None:
        ownership = self.rng.choice(OWNERSHIPS)
        body = (f"<OwnershipControls><Rule><ObjectOwnership>{ownership}</ObjectOwnership></Rule>"
                "</OwnershipControls>").encode()

        def done(_: httpx.Response) -> None:
            b.ownership = ownership

        success = [Outcome(200, then=done)]
        if ownership == ENFORCED and b.acl != owner_only(b.owner):
            refused = Outcome(400, "InvalidBucketAclWithObjectOwnership", "refused")
            if all(kind == "id" and who == b.owner for kind, who, _ in b.acl):
                success = either("BucketOwnerEnforced over a bucket ACL granting its owner alone, not FULL_CONTROL",
                                 success[0], refused)
            else:
                success = [refused]
        outcomes = gated(self.verdict(b, b.owner, "s3:PutBucketOwnershipControls"), success)
        self.settle(f"PUT {b.name}?ownershipControls {ownership} by its owner",
                    self.send(b.owner, "PUT", b.name, query={"ownershipControls": ""}, body=body), "PUT", outcomes)

    def delete_ownership(self, b: Bucket) -> None:
        def done(_: httpx.Response) -> None:
            b.ownership = None

        outcomes = gated(self.verdict(b, b.owner, "s3:PutBucketOwnershipControls"), [Outcome(204, then=done)])
        self.settle(f"DELETE {b.name}?ownershipControls by its owner",
                    self.send(b.owner, "DELETE", b.name, query={"ownershipControls": ""}), "DELETE", outcomes)

    def change_settings(self) -> None:
        b = self.pick_bucket()
        choices: list[tuple[int, Callable[[], None]]] = [
            (36, lambda: self.put_policy(b)),
            (6, lambda: self.delete_policy(b)),
            (14, lambda: self.put_bucket_acl(b.owner, b)),
            (14, lambda: self.put_object_acl(b.owner, b, self.rng.choice(KEYS))),
            (10, lambda: self.put_block(b)),
            (6, lambda: self.delete_block(b)),
            (8, lambda: self.put_ownership(b)),
            (6, lambda: self.delete_ownership(b)),
        ]
        self.rng.choices([c for _, c in choices], [w for w, _ in choices])[0]()

    # -- the catalog against the model --

    def verify_state(self) -> None:
        """Everything the model holds is what the catalog holds: so a denied request changed
        nothing, and an allowed one changed what S3 would have."""
        store = self.s3.store
        for b in self.buckets.values():
            where = f"catalog of {b.name}"
            record = store.catalog.buckets.get(b.name)
            self.expect(stored_acl(record.acl, b.owner) == b.acl,
                        f"{where}: bucket ACL {sorted(stored_acl(record.acl, b.owner))}, model {sorted(b.acl)}")
            conf = store.catalog.bucketconf
            self.expect(conf.get(b.name, "policy") == b.policy_text, f"{where}: policy {conf.get(b.name, 'policy')!r}")
            raw = conf.get(b.name, "publicaccessblock")
            got_block = None if raw is None else json.loads(raw)
            want_block = None if b.block is None else {
                "block_public_acls": b.block.block_acls, "ignore_public_acls": b.block.ignore_acls,
                "block_public_policy": b.block.block_policy, "restrict_public_buckets": b.block.restrict}
            self.expect(got_block == want_block, f"{where}: public access block {got_block}, model {want_block}")
            raw = conf.get(b.name, "ownership")
            self.expect((raw.decode() if raw else None) == b.ownership, f"{where}: ownership {raw!r}")
            uploads = sorted(u["upload_id"] for u in store.uploads.list_uploads(b.name))
            self.expect(uploads == sorted(b.uploads), f"{where}: uploads {uploads}, model {sorted(b.uploads)}")
            want = [(k, v.vid, v.marker, None if v.marker else v.etag, None if v.marker else v.acl,
                     v.tags) for k in sorted(b.objects) for v in b.objects[k]]
            got: list[tuple[Any, ...]] = []
            if b.versioned:
                for rec, _ in store.objects.list_versions(b.name).entries:
                    marker = bool(rec.get("marker"))
                    got.append((rec["key"], rec["vid"], marker, None if marker else rec["etag"],
                                None if marker else stored_acl(rec.get("acl"), b.owner), rec.get("tags") or {}))
            else:
                for key in sorted({*KEYS, SENTINEL}):
                    try:
                        rec = store.objects.get(b.name, key)
                    except se.NoSuchKey:
                        continue
                    got.append((key, None, False, rec["etag"], stored_acl(rec.get("acl"), b.owner), rec.get("tags") or {}))
            if got != want:
                diff = [(g, w) for g, w in zip(got, want, strict=False) if g != w][:3]
                self.fail(f"{where}: objects differ from the model ({len(got)} vs {len(want)} entries); "
                          f"first differences (catalog, model): {diff}")

    # -- the run --

    def setup(self) -> None:
        for name, (ak, sk) in ACCOUNTS.items():
            self.s3.add_account(name, ak, sk)
        for b in self.buckets.values():
            self.settle(f"CreateBucket {b.name}", self.send(b.owner, "PUT", b.name), "PUT", [Outcome(200)])
            b.acl = canned("private", b.owner)
            if b.versioned:
                body = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
                self.settle(f"versioning {b.name}", self.send(b.owner, "PUT", b.name, query={"versioning": ""},
                                                              body=body), "PUT", [Outcome(200)])
            for key in (*KEYS, SENTINEL):
                body = self.new_body()
                name = "public-read" if key.startswith("public/") else "private"
                response = self.send(b.owner, "PUT", b.name, key, body=body, headers={"x-amz-acl": name})
                self.settle(f"seed {b.name}/{key}", response, "PUT", [Outcome(200)])
                self.add_version(b, key, response, body, canned(name, b.owner), {})

    def random_request(self) -> None:
        rng = self.rng
        who, b, key = self.pick_who(), self.pick_bucket(), rng.choice(KEYS)
        ops: list[tuple[int, Callable[[], object]]] = [
            (14, lambda: self.get_object(who, b, key, "GET")),
            (4, lambda: self.get_object(who, b, key, "HEAD")),
            (5, lambda: self.get_version(who, b) if b.versioned else False),
            (12, lambda: self.put_object(who, b, key)),
            (5, lambda: self.delete_object(who, b, key)),
            (4, lambda: self.delete_version(who, b) if b.versioned else False),
            (3, lambda: self.delete_objects(who, b)),
            (6, lambda: self.tagging(who, b, key)),
            (3, lambda: self.get_object_acl(who, b, key)),
            (2, lambda: self.attributes(who, b, key)),
            (3, lambda: self.put_object_acl(who, b, key)),
            (6, lambda: self.copy_object(who, b, key)),
            (3, lambda: self.create_upload(who, b, key)),
            (3, lambda: self.upload_part(who, b)),
            (2, lambda: self.complete_upload(who, b)),
            (2, lambda: self.abort_upload(who, b)),
            (2, lambda: self.list_parts(who, b)),
            (2, lambda: self.list_uploads(who, b)),
            (7, lambda: self.list_objects(who, b)),
            (3, lambda: self.list_versions(who, b)),
            (2, lambda: self.head_bucket(who, b)),
            (2, lambda: self.get_bucket_acl(who, b)),
            (2, lambda: self.put_bucket_acl(who, b)),
            (2, lambda: self.get_bucket_policy(who, b)),
            (2, lambda: self.foreign_policy_change(who, b)),
            (1, lambda: self.foreign_settings_read(who, b)),
            (2, lambda: self.versioning(who, b)),
            (1, lambda: self.delete_bucket(who, b)),
            (1, lambda: self.location(who, b)),
        ]
        while rng.choices([op for _, op in ops], [w for w, _ in ops])[0]() is False:
            who, b, key = self.pick_who(), self.pick_bucket(), rng.choice(KEYS)

    def run(self) -> Counter[str]:
        self.setup()
        self.verify_state()
        for step in range(1, self.steps + 1):
            self.step = step
            self.change_settings()
            for _ in range(self.rng.randint(8, 14)):
                self.random_request()
            self.verify_state()
        return self.stats


SEEDS = [1, 2, 3, 4]
STEPS = 150


@pytest.mark.parametrize("seed", SEEDS)
def test_access_walk_matches_model(s3: InProcessS3, seed: int) -> None:
    stats = Walk(s3, seed, STEPS).run()
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(stats.items()))
    print(f"seed {seed}: {summary}")
    assert stats["allow"] > 200 and stats["deny"] > 200, summary


# -- divergences from AWS, each kept out of the walk --------------------------------------


def answer(response: httpx.Response) -> tuple[int, str | None]:
    return response.status_code, Walk.code(response, "GET")


def alices_bucket(s3: InProcessS3, policy: list[dict[str, Any]] | None = None, versioned: bool = False) -> str:
    """The accounts, and alice's bucket "bkt" holding "secret" (and `policy`, if given)."""
    for name, (ak, sk) in ACCOUNTS.items():
        s3.add_account(name, ak, sk)
    assert call(s3, "alice", "PUT", "/bkt").status_code == 200
    if versioned:
        body = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
        assert call(s3, "alice", "PUT", "/bkt", query={"versioning": ""}, body=body).status_code == 200
    assert call(s3, "alice", "PUT", "/bkt/secret", body=b"alice's secret").status_code == 200
    if policy is not None:
        doc = json.dumps({"Version": "2012-10-17", "Statement": policy}).encode()
        reply = call(s3, "alice", "PUT", "/bkt", query={"policy": ""}, body=doc)
        assert reply.status_code == 204, reply.text
    return "bkt"


def test_s3_prefix_is_a_key_of_listings_only(s3: InProcessS3) -> None:
    """AWS fills s3:prefix for ListBucket / ListBucketVersions requests only; for any other
    request the key is missing, so a condition on it is false (true for a negated operator).
    manta took it from the ?prefix= of any bucket-level request: bob, whom alice lets list
    under public/ (an Allow of s3:* on the bucket, conditioned on s3:prefix), added
    ?prefix=public/ to PutBucketAcl and made the bucket public-read-write; anyone could then
    overwrite alice's objects."""
    alices_bucket(s3, [{"Effect": "Allow", "Principal": {"AWS": "bob"}, "Action": "s3:*",
                        "Resource": "arn:aws:s3:::bkt", "Condition": {"StringLike": {"s3:prefix": "public/*"}}}])
    assert call(s3, "bob", "GET", "/bkt", query={"list-type": "2", "prefix": "public/"}).status_code == 200
    assert answer(call(s3, "bob", "PUT", "/bkt", query={"acl": ""}, headers={"x-amz-acl": "public-read-write"})) \
        == (403, "AccessDenied")
    escalated = call(s3, "bob", "PUT", "/bkt", query={"acl": "", "prefix": "public/"},
                     headers={"x-amz-acl": "public-read-write"})
    assert answer(escalated) == (403, "AccessDenied"), "a stray ?prefix= met the s3:prefix condition"
    assert call(s3, None, "PUT", "/bkt/secret", body=b"overwritten").status_code == 403
    assert call(s3, "alice", "GET", "/bkt/secret").content == b"alice's secret"


def test_a_wildcard_in_a_principal_arn_is_refused(s3: InProcessS3) -> None:
    """AWS: "You cannot use a wildcard to match part of a principal name or ARN"; a policy
    naming arn:aws:iam::*:root is MalformedPolicy. manta stored it and read it as "*",
    anonymous callers included: alice, meaning "any AWS account", opened her bucket to all."""
    alices_bucket(s3)
    doc = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::*:root"}, "Action": "s3:GetObject",
        "Resource": "arn:aws:s3:::bkt/*"}]}).encode()
    reply = call(s3, "alice", "PUT", "/bkt", query={"policy": ""}, body=doc)
    assert answer(call(s3, None, "GET", "/bkt/secret")) == (403, "AccessDenied"), "an unsigned GET read the object"
    assert answer(reply) == (400, "MalformedPolicy")


def test_a_bucket_write_grant_does_not_delete_versions(s3: InProcessS3) -> None:
    """AWS ("Mapping of ACL permissions and access policy permissions"): WRITE on a bucket
    is s3:PutObject, and only "when the grantee is the bucket owner" also
    s3:DeleteObjectVersion. manta mapped bucket WRITE to s3:DeleteObjectVersion for every
    grantee: with public-read-write on a versioned bucket anyone could destroy its history
    (DELETE ?versionId and DeleteObjects alike), which versioning is there to keep."""
    alices_bucket(s3, versioned=True)
    vid = call(s3, "alice", "PUT", "/bkt/kept", body=b"v1").headers["x-amz-version-id"]
    assert call(s3, "alice", "PUT", "/bkt", query={"acl": ""}, headers={"x-amz-acl": "public-read-write"}) \
        .status_code == 200
    assert call(s3, None, "PUT", "/bkt/new", body=b"anyone may write").status_code == 200  # WRITE: PutObject
    deleted = call(s3, None, "DELETE", "/bkt/kept", query={"versionId": vid})
    bulk = call(s3, "carol", "POST", "/bkt", query={"delete": ""},
                body=f"<Delete><Object><Key>secret</Key><VersionId>{vid}</VersionId></Object></Delete>".encode())
    assert answer(deleted) == (403, "AccessDenied"), "an unsigned DELETE ?versionId removed a version"
    assert b"<Deleted>" not in bulk.content
    assert call(s3, "alice", "GET", "/bkt/kept", query={"versionId": vid}).content == b"v1"


def test_object_attributes_take_get_object_too(s3: InProcessS3) -> None:
    """AWS (GetObjectAttributes): "If the bucket is not versioned, you need both the
    s3:GetObject and s3:GetObjectAttributes permissions" (versioned: s3:GetObjectVersion and
    s3:GetObjectVersionAttributes). manta decided s3:GetObjectAttributes alone, so an
    explicit Deny of s3:GetObject did not keep a key's ETag, size and checksums from its
    own account, nor did a grant of s3:GetObjectAttributes alone stay without s3:GetObject."""
    alices_bucket(s3, [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bkt/secret"},
        {"Effect": "Allow", "Principal": {"AWS": "bob"}, "Action": "s3:GetObjectAttributes",
         "Resource": "arn:aws:s3:::bkt/*"}])
    wanted = {"x-amz-object-attributes": "ETag,ObjectSize"}
    assert answer(call(s3, "alice", "GET", "/bkt/secret")) == (403, "AccessDenied")
    assert answer(call(s3, "alice", "GET", "/bkt/secret", query={"attributes": ""}, headers=wanted)) \
        == (403, "AccessDenied"), "an explicit Deny of s3:GetObject let GetObjectAttributes through"
    assert call(s3, "alice", "PUT", "/bkt/other", body=b"x").status_code == 200
    assert answer(call(s3, "bob", "GET", "/bkt/other", query={"attributes": ""}, headers=wanted)) \
        == (403, "AccessDenied"), "s3:GetObjectAttributes without s3:GetObject"


def test_a_missing_key_is_403_without_list_bucket(s3: InProcessS3) -> None:
    """AWS (GetObject): "If you don't have the s3:ListBucket permission, Amazon S3 returns an
    HTTP status code 403 Access Denied error" for a key that does not exist, even to a
    caller allowed s3:GetObject. manta answered 404 NoSuchKey (the caller learnt a key was
    missing without the right to list)."""
    alices_bucket(s3, [{"Effect": "Allow", "Principal": {"AWS": "bob"}, "Action": "s3:GetObject",
                        "Resource": "arn:aws:s3:::bkt/*"}])
    assert call(s3, "bob", "GET", "/bkt/secret").content == b"alice's secret"
    assert answer(call(s3, "bob", "GET", "/bkt", query={"list-type": "2"})) == (403, "AccessDenied")
    assert answer(call(s3, "bob", "GET", "/bkt/missing")) == (403, "AccessDenied")
    assert call(s3, "bob", "HEAD", "/bkt/missing").status_code == 403
