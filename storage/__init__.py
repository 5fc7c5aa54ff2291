"""Storage: blobs replicated over nodes (directories or ZFS datasets), the catalog (an
engine under typed repositories: storage.records), multipart uploads, scrub/repair and garbage collection."""

from storage import errors
from storage.blobs import BlobInfo, BlobWriter, DirectoryBlobStore, MemoryBlobWriter
from storage.catalog import BucketRef, Catalog
from storage.daemons import Daemon, JournalFlusher, OrphanCollector, Repairer
from storage.node import LocalNode, NodeSpec, parse_spec
from storage.nodeapi import Node
from storage.objects import Listing, ObjectStore, WriteCondition
from storage.quota import DEFAULT_QUOTA, Quota, parse_quota
from storage.records import Account, BlobRecord, BucketRecord, NodeRecord, RepairRecord, Usage
from storage.remote import Heartbeat, RemoteNode
from storage.replicas import BLOCK, BlobMeta, BlobReader, ReplicatedWriter
from storage.scrub import Scrubber, ScrubReport
from storage.store import Store, StoreConfig
from storage.uploads import MIN_PART_SIZE, UploadStore

__all__ = [
    "BLOCK",
    "DEFAULT_QUOTA",
    "MIN_PART_SIZE",
    "Account",
    "BlobInfo",
    "BlobMeta",
    "BlobReader",
    "BlobRecord",
    "BlobWriter",
    "BucketRecord",
    "BucketRef",
    "Catalog",
    "Daemon",
    "DirectoryBlobStore",
    "Heartbeat",
    "JournalFlusher",
    "Listing",
    "LocalNode",
    "MemoryBlobWriter",
    "Node",
    "NodeRecord",
    "NodeSpec",
    "ObjectStore",
    "OrphanCollector",
    "Quota",
    "RemoteNode",
    "RepairRecord",
    "Repairer",
    "ReplicatedWriter",
    "ScrubReport",
    "Scrubber",
    "Store",
    "StoreConfig",
    "UploadStore",
    "Usage",
    "WriteCondition",
    "errors",
    "parse_quota",
    "parse_spec",
]
