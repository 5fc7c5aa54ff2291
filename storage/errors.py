"""Typed storage-layer errors. The S3 layer maps each to one S3 error code."""

from __future__ import annotations

import errno


class StorageError(Exception):
    """Base of every storage-layer error."""


class NoSuchBucket(StorageError):
    def __init__(self, bucket: str) -> None:
        super().__init__(f"bucket {bucket!r} does not exist")
        self.bucket = bucket


class BucketAlreadyExists(StorageError):
    def __init__(self, bucket: str, owned_by_you: bool) -> None:
        super().__init__(f"bucket {bucket!r} already exists")
        self.bucket = bucket
        self.owned_by_you = owned_by_you


class BucketNotEmpty(StorageError):
    def __init__(self, bucket: str) -> None:
        super().__init__(f"bucket {bucket!r} is not empty")
        self.bucket = bucket


class NoSuchKey(StorageError):
    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"key {key!r} does not exist in bucket {bucket!r}")
        self.bucket = bucket
        self.key = key


class NoSuchVersion(StorageError):
    def __init__(self, bucket: str, key: str, version_id: str) -> None:
        super().__init__(f"version {version_id!r} of key {key!r} does not exist in bucket {bucket!r}")
        self.bucket = bucket
        self.key = key
        self.version_id = version_id


class InvalidVersionId(StorageError):
    def __init__(self, version_id: str) -> None:
        super().__init__(f"invalid version id {version_id!r}")
        self.version_id = version_id


class DeleteMarker(StorageError):
    """The version asked for (`latest`: the key's current state) is a delete marker."""

    def __init__(self, bucket: str, key: str, version_id: str, mtime: float, latest: bool) -> None:
        super().__init__(f"{'the latest version' if latest else 'version ' + repr(version_id)} of key "
                         f"{key!r} in bucket {bucket!r} is a delete marker")
        self.bucket = bucket
        self.key = key
        self.version_id = version_id
        self.mtime = mtime
        self.latest = latest


class NoSuchUpload(StorageError):
    def __init__(self, upload_id: str) -> None:
        super().__init__(f"upload {upload_id!r} does not exist")
        self.upload_id = upload_id


class NoSuchAccount(StorageError):
    def __init__(self, access_key: str) -> None:
        super().__init__(f"no account with access key {access_key!r}")
        self.access_key = access_key


class AccountExists(StorageError):
    def __init__(self, name: str) -> None:
        super().__init__(f"account {name!r} already exists")
        self.name = name


class BlobMissing(StorageError):
    def __init__(self, blob_id: str) -> None:
        super().__init__(f"blob {blob_id} is missing")
        self.blob_id = blob_id


class BlobDamaged(StorageError):
    """One replica is bad (a block failed its CRC32C, or the file is short); the node is fine."""

    def __init__(self, blob_id: str, reason: str) -> None:
        super().__init__(f"blob {blob_id}: {reason}")
        self.blob_id = blob_id
        self.reason = reason


class SourceChanged(StorageError):
    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"object {bucket}/{key} changed during the operation")
        self.bucket = bucket
        self.key = key


class PreconditionFailed(StorageError):
    """A conditional write's precondition on the key's current object did not hold."""

    def __init__(self, bucket: str, key: str, condition: str) -> None:
        super().__init__(f"{condition} did not hold for {bucket}/{key}")
        self.bucket = bucket
        self.key = key
        self.condition = condition


class InvalidPart(StorageError):
    def __init__(self, number: int) -> None:
        super().__init__(f"part {number} was not found or its ETag does not match")
        self.number = number


class InvalidPartOrder(StorageError):
    def __init__(self) -> None:
        super().__init__("the list of parts was not in ascending order")


class EntityTooSmall(StorageError):
    def __init__(self, number: int, size: int, minimum: int) -> None:
        super().__init__(f"part {number} is {size} bytes, below the minimum of {minimum}")
        self.number = number
        self.size = size
        self.minimum = minimum


class BlobUnavailable(StorageError):
    """No replica of a blob could be read correctly."""

    def __init__(self, blob_id: str) -> None:
        super().__init__(f"no readable replica of blob {blob_id}")
        self.blob_id = blob_id


class InsufficientNodes(StorageError):
    """Fewer healthy nodes with space than the copies a write needs."""

    def __init__(self, wanted: int, available: int) -> None:
        super().__init__(f"a write needs {wanted} healthy nodes with space, {available} available")
        self.wanted = wanted
        self.available = available


class NoSuchBlob(StorageError):
    def __init__(self, blob_id: str) -> None:
        super().__init__(f"blob {blob_id} is not in the catalog")
        self.blob_id = blob_id


class QuotaExceeded(StorageError):
    """A write or a job would take an account past one of its limits (storage.quota)."""

    def __init__(self, account: str, resource: str, limit: int) -> None:
        super().__init__(f"account {account!r} is at its {resource} limit ({limit})")
        self.account = account
        self.resource = resource
        self.limit = limit


RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class ResourceExhausted(StorageError):
    """The process or host ran out of file descriptors or memory (EMFILE, ENFILE, ENOMEM):
    a shortage of this server's, not damage to a replica or a failed node. Retry later."""

    def __init__(self, operation: str, cause: OSError) -> None:
        super().__init__(f"{operation}: {cause.strerror or cause}")
        self.operation = operation
        self.errno = cause.errno

    @staticmethod
    def raise_if(exc: OSError, operation: str) -> None:
        """Re-raise `exc` as ResourceExhausted when its errno is a resource shortage."""
        if exc.errno in RESOURCE_ERRNOS:
            raise ResourceExhausted(operation, exc) from exc


class ObjectLocked(StorageError):
    """A version's Object Lock forbids the change: deleting it, or shortening or removing its
    retention (storage.objectlock says which)."""

    def __init__(self, bucket: str, key: str, version_id: str, reason: str) -> None:
        super().__init__(f"version {version_id!r} of {bucket}/{key} is locked: {reason}")
        self.bucket = bucket
        self.key = key
        self.version_id = version_id
        self.reason = reason


class ObjectLockNotEnabled(StorageError):
    """Object Lock settings given for a bucket that does not have Object Lock."""

    def __init__(self, bucket: str) -> None:
        super().__init__(f"bucket {bucket!r} does not have Object Lock enabled")
        self.bucket = bucket


class InvalidBucketState(StorageError):
    """The request conflicts with the bucket's state (suspending versioning where Object
    Lock is enabled, enabling Object Lock where versioning is not)."""

    def __init__(self, bucket: str, reason: str) -> None:
        super().__init__(f"bucket {bucket!r}: {reason}")  # `reason` is fit for a client
        self.bucket = bucket
        self.reason = reason
