"""Dataframe libraries against a real server: pandas through `manta://` (our fsspec
filesystem) and through s3fs, pyarrow's own S3 client reading and writing Parquet."""

from __future__ import annotations

import io
import os
import re

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from manta.client.fs import MantaFileSystem
from tests.conftest import ROOT_AK, ROOT_SK, Server

MiB = 1024 * 1024


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 5000
    return pd.DataFrame({
        "timestamp": pd.date_range("2024-01-01", periods=n, freq="h").strftime("%Y-%m-%dT%H:%M:%S"),
        "sensor": rng.choice(["north", "south", "east"], n),
        "temperature": rng.normal(12, 6, n).round(3),
        "count": rng.integers(0, 1000, n),
    })


@pytest.fixture
def manta_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MANTA_URL", server.url)
    monkeypatch.setenv("MANTA_ACCESS_KEY", ROOT_AK)
    monkeypatch.setenv("MANTA_SECRET_KEY", ROOT_SK)


def test_read_csv_through_manta_and_s3fs_agree(server: Server, s3: object, bucket: str,
                                               frame: pd.DataFrame, manta_env: None) -> None:
    s3.put_object(Bucket=bucket, Key="sensors/2024.csv", Body=frame.to_csv(index=False).encode())  # type: ignore[attr-defined]
    assert isinstance(fsspec.filesystem("manta"), MantaFileSystem)  # the fsspec.specs entry point

    via_manta = pd.read_csv(f"manta://{bucket}/sensors/2024.csv")
    via_s3fs = pd.read_csv(f"s3://{bucket}/sensors/2024.csv", storage_options={
        "key": ROOT_AK, "secret": ROOT_SK, "client_kwargs": {"endpoint_url": server.url, "region_name": "us-east-1"}})
    pd.testing.assert_frame_equal(via_manta, via_s3fs)
    pd.testing.assert_frame_equal(via_manta, frame)

    # explicit storage options instead of the environment
    explicit = pd.read_csv(f"manta://{bucket}/sensors/2024.csv",
                           storage_options={"url": server.url, "access_key": ROOT_AK, "secret_key": ROOT_SK})
    pd.testing.assert_frame_equal(explicit, frame)


def test_manta_filesystem_writes_lists_and_errors(server: Server, bucket: str, frame: pd.DataFrame,
                                                  manta_env: None) -> None:
    frame.to_csv(f"manta://{bucket}/out/frame.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_csv(f"manta://{bucket}/out/frame.csv"), frame)
    frame.to_parquet(f"manta://{bucket}/out/frame.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(f"manta://{bucket}/out/frame.parquet"), frame)

    fs = fsspec.filesystem("manta")
    assert fs.ls(f"{bucket}/out", detail=False) == [f"{bucket}/out/frame.csv", f"{bucket}/out/frame.parquet"]
    assert fs.ls(bucket, detail=False) == [f"{bucket}/out"]
    assert fs.isdir(f"{bucket}/out") and fs.isdir(bucket) and fs.isfile(f"{bucket}/out/frame.csv")
    assert not fs.exists(f"{bucket}/nope") and bucket in fs.ls("", detail=False)
    assert fs.glob(f"{bucket}/out/*.csv") == [f"{bucket}/out/frame.csv"]
    assert fs.find(bucket) == [f"{bucket}/out/frame.csv", f"{bucket}/out/frame.parquet"]
    assert fs.cat_file(f"{bucket}/out/frame.csv", start=0, end=9) == b"timestamp"
    assert fs.cat_file(f"{bucket}/out/frame.csv", start=-1) == b"\n"

    big = os.urandom(13 * MiB)
    with fs.open(f"{bucket}/big.bin", "wb") as f:  # multipart: 8 + 5 MiB
        f.write(big)
    assert fs.info(f"{bucket}/big.bin")["size"] == len(big) and fs.cat(f"{bucket}/big.bin") == big
    fs.cp(f"{bucket}/big.bin", f"{bucket}/copy.bin")
    assert fs.info(f"{bucket}/copy.bin")["ETag"] == fs.info(f"{bucket}/big.bin")["ETag"]
    fs.rm(f"{bucket}/out", recursive=True)
    fs.rm([f"{bucket}/big.bin", f"{bucket}/copy.bin"])
    assert fs.ls(bucket) == []

    with pytest.raises(FileNotFoundError):
        pd.read_csv(f"manta://{bucket}/missing.csv")
    with pytest.raises(FileNotFoundError):
        pd.read_csv("manta://no-such-bucket-x/a.csv")
    new = f"{bucket}-fs"
    fs.mkdir(new)
    with pytest.raises(FileExistsError):
        fs.mkdir(new)
    fs.rmdir(new)
    assert not fs.exists(new)


def test_pyarrow_s3_reads_parquet_written_with_boto3(server: Server, s3: object, bucket: str,
                                                     frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf, row_group_size=1000)
    s3.put_object(Bucket=bucket, Key="tables/sensors.parquet", Body=buf.getvalue())  # type: ignore[attr-defined]

    fs = pafs.S3FileSystem(endpoint_override=server.url.removeprefix("http://"), scheme="http",
                           access_key=ROOT_AK, secret_key=ROOT_SK, region="us-east-1")
    info = fs.get_file_info(f"{bucket}/tables/sensors.parquet")
    assert info.type == pafs.FileType.File and info.size == len(buf.getvalue())
    table = pq.read_table(f"{bucket}/tables/sensors.parquet", filesystem=fs)
    pd.testing.assert_frame_equal(table.to_pandas(), frame)
    # a column subset: ranged reads of the footer and one column chunk per row group
    assert pq.read_table(f"{bucket}/tables/sensors.parquet", filesystem=fs,
                         columns=["temperature"]).column(0).to_pylist() == frame["temperature"].tolist()
    listed = fs.get_file_info(pafs.FileSelector(f"{bucket}/tables"))
    assert [i.path for i in listed] == [f"{bucket}/tables/sensors.parquet"]


def test_pyarrow_and_s3fs_write_multipart_objects_boto3_reads(server: Server, s3: object, bucket: str,
                                                              frame: pd.DataFrame) -> None:
    """The writers' side: pyarrow's C++ S3 client and s3fs stream multipart uploads."""
    fs = pafs.S3FileSystem(endpoint_override=server.url.removeprefix("http://"), scheme="http",
                           access_key=ROOT_AK, secret_key=ROOT_SK, region="us-east-1")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), f"{bucket}/w/sensors.parquet",
                   filesystem=fs)
    body = s3.get_object(Bucket=bucket, Key="w/sensors.parquet")["Body"].read()  # type: ignore[attr-defined]
    pd.testing.assert_frame_equal(pq.read_table(io.BytesIO(body)).to_pandas(), frame)
    chunks = [os.urandom(MiB) for _ in range(12)]
    with fs.open_output_stream(f"{bucket}/w/stream.bin") as out:
        for chunk in chunks:
            out.write(chunk)
    head = s3.head_object(Bucket=bucket, Key="w/stream.bin")  # type: ignore[attr-defined]
    assert re.fullmatch(r'"[0-9a-f]{32}-[2-9]"', head["ETag"]), head["ETag"]  # multipart (pyarrow's part size)
    assert s3.get_object(Bucket=bucket, Key="w/stream.bin")["Body"].read() == b"".join(chunks)  # type: ignore[attr-defined]

    options = {"key": ROOT_AK, "secret": ROOT_SK, "client_kwargs": {"endpoint_url": server.url,
                                                                     "region_name": "us-east-1"}}
    sfs = fsspec.filesystem("s3", **options)
    with sfs.open(f"{bucket}/w/s3fs.bin", "wb", block_size=5 * MiB) as fh:
        for chunk in chunks:
            fh.write(chunk)
    head = s3.head_object(Bucket=bucket, Key="w/s3fs.bin")  # type: ignore[attr-defined]
    assert head["ETag"].endswith('-3"'), head["ETag"]
    assert s3.get_object(Bucket=bucket, Key="w/s3fs.bin")["Body"].read() == b"".join(chunks)  # type: ignore[attr-defined]
    frame.to_parquet(f"s3://{bucket}/w/pandas.parquet", storage_options=options)
    pd.testing.assert_frame_equal(pd.read_parquet(f"s3://{bucket}/w/pandas.parquet", storage_options=options), frame)
