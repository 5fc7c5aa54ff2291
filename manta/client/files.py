"""File objects and filesystem operations over a client: what `Client.open` returns and
what the `manta://` filesystem (`manta.client.fs`) is made of.

Reads are ranged GETs of `block_size` bytes; writes are one PUT when the file is smaller
than a block, else a multipart upload that is aborted if the `with` block raises, so a
failed write leaves no object. Buckets are the top-level directories; below them a
"directory" is a key prefix ending at a `/` (S3 has no directory objects, so `mkdir` below
a bucket makes nothing).
"""

from __future__ import annotations

from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from manta.client.paths import split_path

__all__ = ["BLOCK_SIZE", "ClientFileSystem", "MantaFile"]

BLOCK_SIZE = 8 * 1024 * 1024


def _entry(info: dict[str, Any]) -> dict[str, Any]:
    """A client description -> an fsspec one (directories without the trailing /)."""
    out = dict(info)
    out["name"] = info["name"].rstrip("/")
    out["type"] = "file" if info["type"] == "file" else "directory"
    out["size"] = info.get("size", 0)
    if info["type"] == "file":
        out["ETag"] = info.get("etag")
        out["LastModified"] = info.get("last_modified")
    return out


class ClientFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec operations on the objects of `client` (a `manta.Client`)."""

    protocol = "manta"
    root_marker = ""

    def __init__(self, client: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client

    @property
    def client(self) -> Any:
        return self._client

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return str(path).removeprefix("manta://").strip("/")

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        entries = [_entry(e) for e in self.client.ls(self._strip_protocol(path), detail=True)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if not path:
            return {"name": "", "type": "directory", "size": 0}
        return _entry(self.client.info(path))

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict[str, Any] | None = None, **kwargs: Any) -> MantaFile:
        return MantaFile(self, self._strip_protocol(path), mode, block_size or BLOCK_SIZE, autocommit,
                         cache_options=cache_options, **kwargs)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        if start is None and end is None:
            return self.client.get(path)
        size = self.size(path) if (start or 0) < 0 or end is None or end < 0 else 0
        first = (start or 0) + (size if (start or 0) < 0 else 0)
        last = size if end is None else end + (size if end < 0 else 0)
        return self.client.get_range(path, max(0, first), last)

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        self.client.put(self._strip_protocol(path), value)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        self.client.cp(self._strip_protocol(path1), self._strip_protocol(path2))

    def rm_file(self, path: str) -> None:
        self.client.rm(self._strip_protocol(path))

    def rm(self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None) -> None:
        paths = self._strip_protocol(path if isinstance(path, list) else [path])
        for p in paths:
            bucket, key = split_path(p)
            if recursive and not key:
                self.client.rb(bucket, force=True)
            else:
                self.client.rm(p, recursive=recursive)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        bucket, key = split_path(self._strip_protocol(path))
        if not key:
            self.client.mb(bucket)
        elif create_parents:
            self.client.mb(bucket, exist_ok=True)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        bucket, key = split_path(self._strip_protocol(path))
        self.client.mb(bucket, exist_ok=exist_ok or bool(key))

    def rmdir(self, path: str) -> None:
        bucket, key = split_path(self._strip_protocol(path))
        if not key:
            self.client.rb(bucket)

    def modified(self, path: str) -> Any:
        return self.info(path).get("last_modified")

    def created(self, path: str) -> Any:
        return self.modified(path)


class MantaFile(AbstractBufferedFile):  # type: ignore[misc]
    """Reads: ranged GETs. Writes: one PUT if the whole file fits in a block, else multipart."""

    fs: ClientFileSystem

    def __init__(self, fs: ClientFileSystem, path: str, mode: str = "rb", block_size: int = BLOCK_SIZE,
                 autocommit: bool = True, **kwargs: Any) -> None:
        if mode not in ("rb", "wb"):
            raise NotImplementedError(f"manta:// files open as rb or wb, not {mode}")
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        super().__init__(fs, path, mode, max(block_size, 5 * 1024 * 1024), autocommit, **kwargs)
        self.bucket, self.key = split_path(path)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.client.get_range(self.path, start, end)

    def _initiate_upload(self) -> None:
        """Nothing yet: a file that fits in one block is a single PUT when it is closed."""

    def _upload_chunk(self, final: bool = False) -> bool:
        client, s3 = self.fs.client, self.fs.client.s3
        data = self.buffer.getvalue()
        if final and self.upload_id is None:
            if self.autocommit:
                client.put(self.path, data)
            else:
                self._pending = data
            return True
        with client.errors(self.bucket, self.key):
            if self.upload_id is None:
                self.upload_id = s3.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
            if data or not self.parts:
                number = len(self.parts) + 1
                etag = s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                      PartNumber=number, Body=data)["ETag"]
                self.parts.append({"PartNumber": number, "ETag": etag})
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self) -> None:
        if self.upload_id is None:
            self.fs.client.put(self.path, getattr(self, "_pending", b""))
            return
        with self.fs.client.errors(self.bucket, self.key):
            self.fs.client.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                                        MultipartUpload={"Parts": self.parts})
        self.upload_id = None

    def discard(self) -> None:
        if self.upload_id is not None:
            try:
                self.fs.client.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            except Exception:  # noqa: S110 - best effort: the error that led here matters more
                pass
            self.upload_id = None
        self._pending = b""

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None and self.writable():
            self.discard()
            self.closed = True
            return
        self.close()
