"""Other S3 clients, unchanged, from Debian's packages: s3cmd and rclone.

Each runs against the live server at its usual settings (SigV4, path-style), with uploads
forced through multipart (5 MiB parts), and the bytes must round-trip; a second sync must
find nothing to do (both compare sizes and MD5s with what the listing says).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import ROOT_AK, ROOT_SK, Server, require

MiB = 1024 * 1024


def run(argv: list[str], cwd: Path) -> str:
    # a clean environment: no AWS_* variables of this machine (rclone rejects AWS_CA_BUNDLE
    # for plain HTTP), no user config
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "one.txt").write_bytes(b"one\n")
    (root / "two.txt").write_bytes(b"two\n")
    (root / "big.bin").write_bytes(os.urandom(12 * MiB + 5))


def objects(s3: Any, bucket: str) -> dict[str, str]:
    out = {}
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        out[obj["Key"]] = hashlib.sha256(body).hexdigest()
    return out


def local(root: Path, prefix: str = "") -> dict[str, str]:
    return {prefix + str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def test_s3cmd(server: Server, s3: Any, tmp_path: Path) -> None:
    require(shutil.which("s3cmd") is not None, "s3cmd is not installed (apt-get install s3cmd)")
    host = f"127.0.0.1:{server.port}"
    cfg = tmp_path / "s3cfg"
    cfg.write_text(f"[default]\naccess_key = {ROOT_AK}\nsecret_key = {ROOT_SK}\nhost_base = {host}\n"
                   f"host_bucket = {host}\nuse_https = False\nsignature_v2 = False\n"
                   "bucket_location = us-east-1\nenable_multipart = True\nmultipart_chunk_size_mb = 5\n")
    s3cmd = ["s3cmd", "-c", str(cfg)]
    src = tmp_path / "src"
    tree(src)
    run([*s3cmd, "mb", "s3://s3cmd-bucket"], tmp_path)
    run([*s3cmd, "put", str(src / "big.bin"), "s3://s3cmd-bucket/big.bin"], tmp_path)
    etag = s3.head_object(Bucket="s3cmd-bucket", Key="big.bin")["ETag"]
    assert etag.endswith('-3"'), etag  # multipart, 5 MiB parts
    run([*s3cmd, "sync", f"{src}/", "s3://s3cmd-bucket/tree/"], tmp_path)
    again = run([*s3cmd, "sync", f"{src}/", "s3://s3cmd-bucket/tree/"], tmp_path)
    assert "upload:" not in again, again
    stored = objects(s3, "s3cmd-bucket")
    assert stored == {"big.bin": local(src)["big.bin"], **local(src, "tree/")}
    listing = run([*s3cmd, "ls", "-r", "s3://s3cmd-bucket"], tmp_path)
    assert "s3://s3cmd-bucket/tree/sub/one.txt" in listing
    run([*s3cmd, "get", "s3://s3cmd-bucket/big.bin", str(tmp_path / "big.out")], tmp_path)
    assert (tmp_path / "big.out").read_bytes() == (src / "big.bin").read_bytes()
    run([*s3cmd, "del", "--recursive", "--force", "s3://s3cmd-bucket/"], tmp_path)
    run([*s3cmd, "rb", "s3://s3cmd-bucket"], tmp_path)
    assert "s3cmd-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_rclone(server: Server, s3: Any, tmp_path: Path) -> None:
    require(shutil.which("rclone") is not None, "rclone is not installed (apt-get install rclone)")
    conf = tmp_path / "rclone.conf"
    conf.write_text(f"[m]\ntype = s3\nprovider = Other\naccess_key_id = {ROOT_AK}\n"
                    f"secret_access_key = {ROOT_SK}\nendpoint = {server.url}\nregion = us-east-1\n"
                    "force_path_style = true\n")
    rclone = ["rclone", "--config", str(conf), "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"]
    src = tmp_path / "src"
    tree(src)
    run([*rclone, "mkdir", "m:rclone-bucket"], tmp_path)
    run([*rclone, "sync", str(src), "m:rclone-bucket/tree"], tmp_path)
    assert objects(s3, "rclone-bucket") == local(src, "tree/")
    head = s3.head_object(Bucket="rclone-bucket", Key="tree/big.bin")
    assert head["ETag"].endswith('-3"'), head["ETag"]  # multipart, 5 MiB parts
    out = run([*rclone, "check", str(src), "m:rclone-bucket/tree"], tmp_path)
    assert "0 differences found" in out, out
    out = run([*rclone, "sync", "-v", str(src), "m:rclone-bucket/tree"], tmp_path)
    assert "Copied" not in out, out
    sums = run([*rclone, "md5sum", "m:rclone-bucket/tree"], tmp_path)
    assert f"{hashlib.md5((src / 'big.bin').read_bytes()).hexdigest()}  big.bin" in sums, sums
    run([*rclone, "copyto", "m:rclone-bucket/tree/big.bin", str(tmp_path / "big.out")], tmp_path)
    assert (tmp_path / "big.out").read_bytes() == (src / "big.bin").read_bytes()
    run([*rclone, "purge", "m:rclone-bucket"], tmp_path)
    assert "rclone-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
