"""The Python client: objects through boto3, jobs through the signed jobs API.

    from manta import Client
    mc = Client()                                  # MANTA_URL and keys as the CLI finds them
    mc.mb("sensors", exist_ok=True)
    mc.put("sensors/2024/01-01.csv", b"...")        # bytes, a file object, an iterator, a Path
    job = mc.job(map="wc -l", reduce="awk '{s+=$1} END {print s}'", inputs="sensors/2024/")
    job.wait()                                     # progress bars (plain lines in a log)
    print(job.read_outputs().decode())

Paths are `bucket/key`. Uploads larger than one part (`part_size_mb`) are multipart, with
parts sent in parallel; any failure or interrupt aborts the upload, so an object is
either whole or absent. Every error is a `MantaError` subclass (`errors.py`), made by
`error_for` from the server's code in two places only: `Client.errors` (a context manager
around boto3 calls, used here and by `files.py`) and `Client.api` (manta's JSON API). The
`manta` command prints their messages. The not-found and permission ones are also
FileNotFoundError / PermissionError, so fsspec and pandas report them as usual. Jobs (`Job`, its one wait loop) are in `jobs.py`; progress on stderr (bars
in a terminal or notebook, plain lines elsewhere) in `progress.py`.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO, overload

from manta.client.errors import (
    BucketExists,
    MantaError,
    NoSuchBucket,
    NoSuchKey,
    Unreachable,
    error_for,
)
from manta.client.files import ClientFileSystem
from manta.client.functions import Upload
from manta.client.functions import functions_bucket as default_functions_bucket
from manta.client.jobs import Command, Job, job_phases
from manta.client.paths import need_key, split_path
from manta.client.pieces import Data, PieceReader
from manta.client.progress import Transfer
from manta.client.settings import Settings, boto3_session, resolve, ssl_context, tls_failure

__all__ = ["Client"]

REGION = "us-east-1"
PARALLEL_PARTS = 4
DELETE_BATCH = 1000


def _info(bucket: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A ListObjectsV2 entry or a HeadObject response -> the client's object description."""
    key = entry["Key"]
    return {"name": f"{bucket}/{key}", "bucket": bucket, "key": key, "type": "file",
            "size": entry.get("Size", entry.get("ContentLength", 0)),
            "etag": (entry.get("ETag") or "").strip('"'), "last_modified": entry.get("LastModified"),
            "content_type": entry.get("ContentType"), "metadata": entry.get("Metadata", {})}


class Client:
    """An S3 + jobs client for one manta server; see the module docstring."""

    def __init__(self, url: str | None = None, access_key: str | None = None, secret_key: str | None = None,
                 *, part_size_mb: float = 8, progress: bool | None = None, ca_bundle: str | None = None,
                 profile: str | None = None, functions_bucket: str | None = None) -> None:
        self.settings: Settings = resolve(url, access_key, secret_key, ca_bundle, profile)
        self.url = self.settings.url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"server URL {self.url!r} (from {self.settings.sources['url']}): "
                             "expected http://HOST:PORT or https://HOST:PORT")
        self.ca_bundle = self.settings.ca_bundle
        if self.ca_bundle is not None and not os.path.isfile(self.ca_bundle):
            raise ValueError(f"CA bundle {self.ca_bundle} (from {self.settings.sources['ca_bundle']}): no such file")
        self.access_key: str = self.settings.access_key or ""
        self._secret_key: str = self.settings.secret_key or ""
        self.part_size = max(5 * 1024 * 1024, int(part_size_mb * 1024 * 1024))
        self.progress = progress
        self.functions_bucket = functions_bucket or default_functions_bucket(self.access_key)
        self._s3: Any = None
        self._ssl: Any = None

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, access_key={self.access_key!r})"

    @property
    def s3(self) -> Any:
        """The boto3 S3 client underneath (s3v4, path-style addressing)."""
        if self._s3 is None:
            from botocore.config import Config

            self._s3 = boto3_session().client(
                "s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=self.access_key,
                aws_secret_access_key=self._secret_key, verify=self.ca_bundle,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, connect_timeout=5,
                              retries={"max_attempts": 2, "mode": "standard"},
                              max_pool_connections=2 * PARALLEL_PARTS))
        return self._s3

    @contextmanager
    def errors(self, bucket: str = "", key: str = "") -> Iterator[None]:
        """Turns what boto3 raises inside the block (calls on `s3` about `bucket`/`key`)
        into the client's `MantaError`s: `with client.errors(b, k): client.s3.get_object(...)`."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            ReadTimeoutError,
            SSLError,
        )

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise error_for(str(error.get("Code", "")), error.get("Message", ""), bucket, key, self.url,
                            self.settings.sources.get("access_key", "")) from None
        except SSLError as exc:
            raise Unreachable(tls_failure(self.url, exc) or f"cannot reach {self.url}: {exc}") from None
        except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError) as exc:
            raise Unreachable(f"cannot reach {self.url}: {exc}") from None
        except BotoCoreError as exc:
            raise MantaError(str(exc)) from None

    # -- buckets -----------------------------------------------------------------------

    def mb(self, bucket: str, exist_ok: bool = False) -> None:
        """Make a bucket. In us-east-1 S3 answers 200 to re-creating a bucket you own (and
        resets its ACL), so one of yours is looked for first."""
        with self.errors(bucket):
            mine = self.s3.list_buckets(Prefix=bucket)["Buckets"]
        if any(b["Name"] == bucket for b in mine):
            if exist_ok:
                return
            raise BucketExists(f"bucket {bucket} exists: you already own it", "BucketAlreadyOwnedByYou")
        try:
            with self.errors(bucket):
                self.s3.create_bucket(Bucket=bucket)
        except BucketExists as exc:
            if not (exist_ok and exc.code == "BucketAlreadyOwnedByYou"):
                raise

    def rb(self, bucket: str, force: bool = False) -> None:
        """Remove a bucket; `force` deletes its objects first."""
        if force:
            self.rm(bucket, recursive=True)
        with self.errors(bucket):
            self.s3.delete_bucket(Bucket=bucket)

    def buckets(self) -> list[dict[str, Any]]:
        with self.errors():
            found = self.s3.list_buckets().get("Buckets", [])
        return [{"name": b["Name"], "type": "bucket", "size": 0, "created": b["CreationDate"]} for b in found]

    # -- objects ---------------------------------------------------------------------

    def put(self, path: str, data: Data, *, content_type: str | None = None,
            metadata: dict[str, str] | None = None, progress: bool | None = None) -> dict[str, Any]:
        """Upload `data` to `bucket/key`; returns {"name", "size", "etag"}."""
        bucket, key = need_key(path)
        extra: dict[str, Any] = {"Metadata": metadata or {}}
        if content_type:
            extra["ContentType"] = content_type
        reader = PieceReader(data)
        show = self.progress if progress is None else progress
        try:
            first = reader.read(self.part_size)
            second = reader.read(self.part_size) if len(first) == self.part_size else b""
            if not second:
                with self.errors(bucket, key), Transfer(f"put {path}", len(first), show=show is True) as bar:
                    etag = self.s3.put_object(Bucket=bucket, Key=key, Body=first, **extra)["ETag"]
                    bar.update(len(first))
                return {"name": f"{bucket}/{key}", "size": len(first), "etag": etag.strip('"')}
            with Transfer(f"put {path}", reader.size, show=show is not False) as bar:
                return self._multipart(bucket, key, extra, reader, [first, second], bar)
        finally:
            reader.close()

    def _multipart(self, bucket: str, key: str, extra: dict[str, Any], reader: PieceReader,
                   pieces: list[bytes], bar: Transfer) -> dict[str, Any]:
        with self.errors(bucket, key):
            upload_id = self.s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]

        def send(number: int, body: bytes) -> dict[str, Any]:
            with self.errors(bucket, key):
                etag = self.s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                           Body=body)["ETag"]
            bar.update(len(body))
            return {"PartNumber": number, "ETag": etag}

        pending: list[Future[dict[str, Any]]] = []
        size = 0
        pool = ThreadPoolExecutor(PARALLEL_PARTS, thread_name_prefix="manta-put")
        try:
            number = 0
            while pieces:
                body = pieces.pop(0)
                number += 1
                size += len(body)
                for f in pending:
                    if f.done():
                        f.result()  # a failed part fails the upload now
                if len([f for f in pending if not f.done()]) >= PARALLEL_PARTS:
                    next(f for f in pending if not f.done()).result()
                pending.append(pool.submit(send, number, body))
                nxt = reader.read(self.part_size)
                if nxt:
                    pieces.append(nxt)
            parts = [f.result() for f in pending]
            with self.errors(bucket, key):
                etag = self.s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts})["ETag"]
        except BaseException:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True)
            try:
                self.s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:  # noqa: S110 - the original error is the one to report
                pass
            raise
        pool.shutdown()
        return {"name": f"{bucket}/{key}", "size": size, "etag": etag.strip('"')}

    @overload
    def get(self, path: str, dest: None = None, *, progress: bool | None = None) -> bytes: ...

    @overload
    def get(self, path: str, dest: str | os.PathLike[str] | BinaryIO, *, progress: bool | None = None) -> None: ...

    def get(self, path: str, dest: str | os.PathLike[str] | BinaryIO | None = None, *,
            progress: bool | None = None) -> bytes | None:
        """The object's bytes, or (with `dest`, a file name or binary file) stream it there."""
        bucket, key = need_key(path)
        with self.errors(bucket, key):
            response = self.s3.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            if dest is None:
                return body.read()  # type: ignore[no-any-return]
            size = response["ContentLength"]
            want = self.progress if progress is None else progress
            show = size > self.part_size if want is None else want
            with Transfer(f"get {path}", size, show=show) as bar:
                if isinstance(dest, str | os.PathLike):
                    self._get_to_file(body, os.fspath(dest), bar)
                else:
                    for chunk in body.iter_chunks(1024 * 1024):
                        dest.write(chunk)
                        bar.update(len(chunk))
        return None

    @staticmethod
    def _get_to_file(body: Any, dest: str, bar: Transfer) -> None:
        """Write to a temp file beside `dest`, renamed over it only when complete."""
        tmp = f"{dest}.manta-{os.getpid()}.part"
        try:
            with open(tmp, "wb") as fh:
                for chunk in body.iter_chunks(1024 * 1024):
                    fh.write(chunk)
                    bar.update(len(chunk))
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object."""
        bucket, key = need_key(path)
        if end <= start:
            return b""
        with self.errors(bucket, key):
            body = self.s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
            return body.read()  # type: ignore[no-any-return]

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        """A file object: "rb" is seekable (ranged GETs), "wb" uploads on close (multipart when large)."""
        return ClientFileSystem(client=self, skip_instance_cache=True).open(path, mode, **kwargs)

    def cp(self, src: str, dest: str) -> dict[str, Any]:
        """Server-side copy (no bytes move: the copy shares the source's blobs)."""
        src_bucket, src_key = need_key(src)
        bucket, key = need_key(dest)
        self._head(src_bucket, src_key)
        with self.errors(bucket, key):
            result = self.s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key})
        return {"name": f"{bucket}/{key}", "etag": result["CopyObjectResult"]["ETag"].strip('"')}

    def info(self, path: str) -> dict[str, Any]:
        """Describe a bucket, an object, or a "directory" (a prefix ending at a /)."""
        bucket, key = split_path(path)
        if not key:
            for b in self.buckets():
                if b["name"] == bucket:
                    return b
            self._check_bucket(bucket)
            raise NoSuchBucket(f"no such bucket: {bucket}", "NoSuchBucket")
        if not key.endswith("/"):
            try:
                return self._head(bucket, key)
            except NoSuchKey:
                pass
        prefix = key.rstrip("/") + "/"
        with self.errors(bucket, key):
            found = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0)
        if found:
            return {"name": f"{bucket}/{prefix}", "bucket": bucket, "key": prefix, "type": "directory", "size": 0}
        raise NoSuchKey(f"no such key: {bucket}/{key}", "NoSuchKey")

    def _check_bucket(self, bucket: str) -> None:
        with self.errors(bucket):
            self.s3.head_bucket(Bucket=bucket)

    def _head(self, bucket: str, key: str) -> dict[str, Any]:
        """HeadObject; a 404 is NoSuchBucket or NoSuchKey (a HEAD error has no code)."""
        try:
            with self.errors(bucket, key):
                return _info(bucket, {"Key": key, **self.s3.head_object(Bucket=bucket, Key=key)})
        except NoSuchKey:
            self._check_bucket(bucket)
            raise

    def ls(self, path: str = "", detail: bool = False) -> list[Any]:
        """Buckets (no path), or what is directly under `bucket[/prefix]`: objects and
        "directories" (names ending in /). Names are `bucket/key`; `detail` gives dicts."""
        if not path.strip("/"):
            entries = self.buckets()
        else:
            bucket, key = split_path(path)
            prefix = key if not key or key.endswith("/") else key + "/"
            entries = []
            with self.errors(bucket, key):
                pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
                for page in pages:
                    entries += [{"name": f"{bucket}/{p['Prefix']}", "bucket": bucket, "key": p["Prefix"],
                                 "type": "directory", "size": 0} for p in page.get("CommonPrefixes", [])]
                    entries += [_info(bucket, o) for o in page.get("Contents", [])]
            entries.sort(key=lambda e: e["name"])
            if not entries and key:
                entries = [self.info(path)]  # an object itself, or NoSuchKey
        return entries if detail else [e["name"] for e in entries]

    def find(self, path: str, name: str | None = None, detail: bool = False) -> list[Any]:
        """Every object whose key starts with `prefix` in `bucket/prefix` (recursive, in key
        order); `name` is a regular expression matched against the part after the last /."""
        found = self.scan(path, name)
        return list(found) if detail else [o["name"] for o in found]

    def scan(self, path: str, name: str | None = None) -> Iterator[dict[str, Any]]:
        """`find(path, name, detail=True)` as it is listed, one page at a time."""
        bucket, prefix = split_path(path)
        pattern = re.compile(name) if name else None
        with self.errors(bucket):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if pattern is None or pattern.search(obj["Key"].rsplit("/", 1)[-1]):
                        yield _info(bucket, obj)

    def rm(self, paths: str | Iterable[str], recursive: bool = False) -> list[str]:
        """Delete objects; `recursive` deletes everything under each `bucket[/prefix]`
        (keeping the bucket). A path that names nothing is NoSuchKey. Returns what was deleted."""
        names: list[str] = []
        for path in [paths] if isinstance(paths, str) else list(paths):
            bucket, key = split_path(path)
            if not recursive:
                names.append(self._head(*need_key(path))["name"])
                continue
            under = self.find(f"{bucket}/{key.rstrip('/') + '/' if key else ''}")
            if key and not key.endswith("/"):
                try:
                    under.insert(0, self._head(bucket, key)["name"])
                except NoSuchKey:
                    pass
            if not under and key:
                raise NoSuchKey(f"no such key or prefix: {bucket}/{key}", "NoSuchKey")
            names += under
        by_bucket: dict[str, list[str]] = {}
        for name in names:
            bucket, key = split_path(name)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), DELETE_BATCH):
                batch = [{"Key": k} for k in keys[i:i + DELETE_BATCH]]
                with self.errors(bucket):
                    result = self.s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                for error in result.get("Errors", []):
                    raise error_for(error.get("Code", ""), error.get("Message", ""), bucket, error.get("Key", ""))
        return names

    # -- jobs ------------------------------------------------------------------------

    def api(self, method: str, path: str, payload: Any = None, timeout_s: float = 60.0,
            upload: BinaryIO | None = None) -> Any:
        """A SigV4-signed call to manta's JSON API (`/_manta/...`); `upload`: a seekable
        file sent as the body instead of `payload` (streamed, its SHA-256 signed)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        body: Any = json.dumps(payload).encode() if payload is not None else b""
        headers = {"content-type": "application/json"} if body else {}
        if upload is not None:
            size = os.fstat(upload.fileno()).st_size
            body, headers = upload, {"content-type": "application/octet-stream", "content-length": str(size)}
        url = self.url + path
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        S3SigV4Auth(Credentials(self.access_key, self._secret_key), "s3", REGION).add_auth(request)
        prepared = urllib.request.Request(url, data=body or None, method=method, headers=dict(request.headers.items()))
        if self._ssl is None and self.url.startswith("https://"):
            self._ssl = ssl_context(self.ca_bundle)
        try:
            with urllib.request.urlopen(prepared, timeout=timeout_s, context=self._ssl) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            import xml.etree.ElementTree as ET

            text = exc.read()
            try:
                root = ET.fromstring(text)
                code, message = root.findtext("Code") or str(exc.code), root.findtext("Message") or ""
            except ET.ParseError:
                code, message = str(exc.code), text.decode(errors="replace")[:200]
            raise error_for(code, message, url=self.url, keys_from=self.settings.sources.get("access_key", "")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise Unreachable(tls_failure(self.url, exc)
                              or f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None

    def job(self, map: Command | list[Command] | None = None, reduce: Command | list[Command] | None = None, *,
            count: int | None = None, inputs: str | Iterable[str] | None = None,
            phases: list[dict[str, Any]] | None = None, name: str = "", end: bool = True,
            input: str | None = None, output: str | None = None, **limits: Any) -> Job:
        """Create a job and add its inputs. Phases: the `map` commands in order, then the
        `reduce` ones (`count` reducers each), or an explicit `phases` list of
        {"type", "exec", ...}. A command is a shell pipeline or a Python function (run with
        the image's python3, `image` "python-data" unless given; `functions.py`): `input`
        is how functions get their input ("path", "file", "dataframe"), `output` how the
        last phase writes a DataFrame ("csv", "parquet"). `inputs`: bucket/key names; a
        bucket or a name ending in / stands for every object under it. `limits`: memory_mb,
        disk_mb, timeout_s, assets, init, image (a task image's name, e.g. "python-data"),
        applied to every phase. `end=False` leaves the inputs open (Job.add_inputs)."""
        spec, uploads = job_phases(map, reduce, count, phases, limits, bucket=self.functions_bucket,
                                   input=input, output=output)
        self._upload_functions(uploads)
        created = self.api("POST", "/_manta/jobs", {"name": name, "phases": spec, "inputs": [], "end": False})
        job = Job(self, created["id"])
        try:
            job.add_inputs(inputs or [], end=end)
        except BaseException:
            job.cancel()
            raise
        return job

    def _upload_functions(self, uploads: list[Upload]) -> None:
        """Pickled functions, content-addressed: one already there is not sent again."""
        if not uploads:
            return
        self.mb(self.functions_bucket, exist_ok=True)
        for upload in {u.path: u for u in uploads}.values():
            try:
                self._head(*need_key(upload.path))
            except NoSuchKey:
                self.put(upload.path, upload.data, content_type="application/octet-stream", progress=False)

    def get_job(self, job_id: str) -> Job:
        job = Job(self, job_id)
        job.status  # noqa: B018 - NoSuchJob now rather than later
        return job

    def jobs(self, state: str | None = None, page_size: int | None = None) -> list[dict[str, Any]]:
        """Your jobs (id, name, state, created, finished, input_count), oldest first; `state`:
        running, done or cancelled only. Follows the listing's pages (`page_size` jobs each,
        at most 1000, the default)."""
        query: dict[str, Any] = {"state": state} if state else {}
        if page_size is not None:
            query["limit"] = page_size
        out: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", "/_manta/jobs?" + urllib.parse.urlencode(query) if query else "/_manta/jobs")
            out += page["jobs"]
            if not page.get("truncated"):
                return out
            query["marker"] = page["next_marker"]

    def expand(self, inputs: str | Iterable[str]) -> Iterator[str]:
        """`bucket/key` as is; a bucket or `bucket/prefix/` -> every object under it."""
        for item in [inputs] if isinstance(inputs, str) else inputs:
            bucket, key = split_path(item.strip())
            if key and not key.endswith("/"):
                yield f"{bucket}/{key}"
            else:
                yield from (o["name"] for o in self.scan(f"{bucket}/{key}"))
