"""The catalog's typed repositories (one module per record kind, each owning its tables'
key and value encoding) and their dataclass records; storage.catalog puts them together."""

from storage.records.accounts import Account, Accounts
from storage.records.blobrefs import BlobRecord, BlobRefs
from storage.records.buckets import (
    Bucket,
    BucketRecord,
    BucketRef,
    Buckets,
    bucket_name,
    generation_of,
)
from storage.records.nodes import NodeRecord, Nodes
from storage.records.repairs import Journal, RepairRecord, Repairs
from storage.records.usage import USAGE_BUILT, Usage, UsageLedger

__all__ = [
    "USAGE_BUILT",
    "Account",
    "Accounts",
    "BlobRecord",
    "BlobRefs",
    "Bucket",
    "BucketRecord",
    "BucketRef",
    "Buckets",
    "Journal",
    "NodeRecord",
    "Nodes",
    "RepairRecord",
    "Repairs",
    "Usage",
    "UsageLedger",
    "bucket_name",
    "generation_of",
]
