"""Storage: blobs on a directory (or ZFS dataset), the LMDB catalog, uploads, GC."""

from storage import errors
from storage.blobs import BlobInfo, BlobWriter, DirectoryBlobStore
from storage.catalog import Catalog
from storage.objects import Listing, ObjectStore
from storage.store import OrphanCollector, Store, StoreConfig
from storage.uploads import MIN_PART_SIZE, UploadStore

__all__ = [
    "MIN_PART_SIZE",
    "BlobInfo",
    "BlobWriter",
    "Catalog",
    "DirectoryBlobStore",
    "Listing",
    "ObjectStore",
    "OrphanCollector",
    "Store",
    "StoreConfig",
    "UploadStore",
    "errors",
]
