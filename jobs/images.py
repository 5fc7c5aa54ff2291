"""Task images: named, content-addressed read-only trees that phases bind at /opt/manta/image.

    NAME --catalog (table `jobs`, key \\0img\\0NAME)--> ImageRecord {id, kind, object, size}
    object `_images/<id>.tar` (owned by the root account; a name no S3 bucket can take)
        --every node fetches the same bytes--> its own cache (jobs/imagetree.py)

Kinds: `python` (a venv over the host's python3, built from a requirements text by
jobs/imagebuild.py; the id hashes the kind, the text, the python version and machine) and
`import` (any tree from a tar the admin uploads; the id hashes the tar's bytes). Building
what a name already holds does nothing; building the same content under a new name shares
the object. `python-data` (DEFAULT) is built from the project's pinned
jobs/requirements/python-data.txt the first time anything asks for it: a job naming it
when it does not exist yet builds it before its first task runs.

A phase names its image by name; each task resolves the name when it is sent (so a
rebuilt name reaches later tasks) and its request carries the id and the object's
replicas. `rm` drops the name, and the object when no other name holds that id; nodes'
unpacked trees stay until their node directory goes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jobs.errors import ImageError, NoSuchImage
from jobs.imagebuild import BuildConfig, build_python, image_id, python_version
from jobs.spec import IMAGE_NAME
from storage import BlobMeta, BucketRef, Store
from storage import errors as se
from storage.catalog import Txn
from storage.engine import EngineUnavailable

__all__ = ["DEFAULT", "IMAGES_BUCKET", "ImageRecord", "Images", "check_name", "default_requirements"]

DEFAULT = "python-data"
IMAGES_BUCKET = "_images"
KEY_PREFIX = b"\0img\0"
CHUNK = 1 << 20


def default_requirements() -> str:
    return (Path(__file__).parent / "requirements" / f"{DEFAULT}.txt").read_text()


@dataclass(frozen=True)
class ImageRecord:
    name: str
    id: str
    kind: str            # "python" | "import"
    object: str          # bucket/key of the tar
    size: int            # bytes of the tar
    created: float
    requirements: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ImageRecord:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def check_name(name: str) -> None:
    if not IMAGE_NAME.match(name):
        raise ImageError(f"image names are 1-64 lowercase letters, digits and . _ -, not {name!r}")


class Images:
    """The image catalog and builds, in the front door's process."""

    def __init__(self, store: Store, config: BuildConfig) -> None:
        self.store = store
        self.config = config
        self._lock = threading.Lock()
        self._version: str | None = None

    # -- reads ------------------------------------------------------------------------

    def get(self, name: str) -> ImageRecord | None:
        with self.store.catalog.read() as txn:
            raw = self.store.catalog.get(txn, "jobs", KEY_PREFIX + name.encode())
        return ImageRecord.from_dict(raw) if raw is not None else None

    def list(self) -> list[ImageRecord]:
        with self.store.catalog.read() as txn:
            return [ImageRecord.from_dict(r) for _, r in self.store.catalog.scan(txn, "jobs", prefix=KEY_PREFIX)]

    def known(self, name: str) -> bool:
        """Can a job name this image (it exists, or it is the default, built at first use)?"""
        return name == DEFAULT or self.get(name) is not None

    def resolve(self, name: str) -> ImageRecord:
        """The image a task of a phase naming `name` gets; the default is built if missing."""
        record = self.get(name)
        if record is not None:
            return record
        if name != DEFAULT:
            raise NoSuchImage(name)
        return self.build(DEFAULT)

    # -- changes ----------------------------------------------------------------------

    def build(self, name: str, requirements: str | None = None) -> ImageRecord:
        """Build (or find built) a Python image of `requirements` (the default's pinned
        list for DEFAULT when None) and name it `name`."""
        check_name(name)
        if requirements is None:
            if name != DEFAULT:
                raise ImageError(f"image {name!r} needs a requirements file (only {DEFAULT} has its own)")
            requirements = default_requirements()
        with self._lock:
            if self._version is None:
                self._version = python_version(self.config.python)
            ident = image_id("python", requirements, self._version)
            current = self.get(name)
            if current is not None and current.id == ident:
                return current
            ident, tar, _ = build_python(requirements, self._version, self.config)
            return self._name(name, ident, "python", tar, requirements)

    def import_blob(self, name: str, blob: BlobMeta) -> ImageRecord:
        """Name an uploaded tar (`blob`: its BlobMeta, already on the nodes) as an image."""
        check_name(name)
        ident = image_id("import", blob.sha256.hex(), "")
        with self._lock:
            return self._name(name, ident, "import", None, "", blob)

    def remove(self, name: str) -> None:
        record = self.get(name)
        if record is None:
            raise NoSuchImage(name)
        catalog = self.store.catalog
        catalog.write(lambda txn: catalog.delete(txn, "jobs", KEY_PREFIX + name.encode()))
        if not any(r.id == record.id for r in self.list()):
            bucket, key = record.object.split("/", 1)
            self.store.free(self.store.objects.delete(BucketRef(bucket, self._owner()), key))

    # -- the object and the name --------------------------------------------------------

    def _owner(self) -> str:
        roots = sorted(a.name for a in self.store.catalog.accounts.all() if a.root)
        if not roots:
            raise ImageError("there is no root account to own the images")
        return roots[0]

    def _name(self, name: str, ident: str, kind: str, tar: str | None, requirements: str,
              blob: BlobMeta | None = None) -> ImageRecord:
        """Store the tar as `_images/<id>.tar` unless it is there, and point `name` at it.
        `tar`: a file to store; `blob`: an uploaded blob to use as it is."""
        owner = self._owner()
        key = f"{ident}.tar"
        existing = self._object(owner, key)
        catalog = self.store.catalog
        if existing is not None:
            size = existing["size"]
            if blob is not None:
                self.store.free([blob.blob_id])
            blob = None
        else:
            if blob is None:
                assert tar is not None
                blob = self._store_file(tar)
            size = blob.size
        record = ImageRecord(name, ident, kind, f"{IMAGES_BUCKET}/{key}", size, time.time(), requirements)

        def op(txn: Txn) -> list[str]:
            freed: list[str] = []
            if blob is not None:
                catalog.buckets.ensure_in(txn, IMAGES_BUCKET, owner)
                freed = self.store.objects.put_in(
                    txn, IMAGES_BUCKET, key, _object_record(blob), {blob.blob_id: blob.record()}, owner=owner)
            catalog.put(txn, "jobs", KEY_PREFIX + name.encode(), record.to_dict())
            return freed

        try:
            self.store.free(catalog.write(op))
        except BaseException as exc:
            # a commit of unknown outcome may have stored the object: the orphan GC decides
            if blob is not None and not isinstance(exc, EngineUnavailable):
                self.store.free([blob.blob_id])
            raise
        return record

    def _object(self, owner: str, key: str) -> dict[str, Any] | None:
        try:
            return self.store.objects.get(BucketRef(IMAGES_BUCKET, owner), key)  # type: ignore[no-any-return]
        except (se.NoSuchBucket, se.NoSuchKey):
            return None

    def _store_file(self, path: str) -> BlobMeta:
        writer = self.store.writer()
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    writer.write(chunk)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise


def _object_record(blob: BlobMeta) -> dict[str, Any]:
    return {"size": blob.size, "etag": blob.md5.hex(), "sha256": blob.sha256, "mtime": time.time(),
            "segments": [[blob.blob_id, blob.size]], "headers": {"content-type": "application/x-tar"},
            "meta": {}, "checksums": {}, "checksum_type": None, "parts": None}
