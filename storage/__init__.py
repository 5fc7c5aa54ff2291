"""Storage: blobs on a directory (or ZFS dataset), the LMDB catalog, uploads, GC."""

from storage import errors
from storage.blobs import BlobInfo, BlobWriter, DirectoryBlobStore, MemoryBlobWriter
from storage.catalog import Catalog
from storage.objects import Listing, ObjectStore
from storage.store import JournalFlusher, OrphanCollector, Store, StoreConfig
from storage.uploads import MIN_PART_SIZE, UploadStore

__all__ = [
    "MIN_PART_SIZE",
    "BlobInfo",
    "BlobWriter",
    "Catalog",
    "DirectoryBlobStore",
    "JournalFlusher",
    "Listing",
    "MemoryBlobWriter",
    "ObjectStore",
    "OrphanCollector",
    "Store",
    "StoreConfig",
    "UploadStore",
    "errors",
]
