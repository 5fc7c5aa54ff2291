"""The client's errors: one `MantaError` family, made from server codes in one place
(`error_for`, called by `Client.errors` and `Client.api`). The `manta` command prints their
messages as they are (`manta: <message>`), so a message says what went wrong in words a
user can act on, and keeps the server's code where the code is what a user would look up.

The not-found and permission errors are also FileNotFoundError / PermissionError, so
fsspec and pandas report them as usual.
"""

from __future__ import annotations

__all__ = ["AccessDenied", "BadCredentials", "BucketExists", "BucketNotEmpty", "JobFailed", "MantaError",
           "NoSuchBucket", "NoSuchJob", "NoSuchKey", "NotFound", "Unreachable", "error_for"]


class MantaError(Exception):
    """Any error the client reports; `code` is the server's error code when there is one."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NotFound(MantaError, FileNotFoundError):
    pass


class NoSuchBucket(NotFound):
    pass


class NoSuchKey(NotFound):
    pass


class NoSuchJob(NotFound):
    pass


class AccessDenied(MantaError, PermissionError):
    pass


class BadCredentials(AccessDenied):
    pass


class BucketExists(MantaError, FileExistsError):
    pass


class BucketNotEmpty(MantaError):
    pass


class Unreachable(MantaError, ConnectionError):
    pass


class JobFailed(MantaError):
    pass


def error_for(code: str, message: str, bucket: str = "", key: str = "", url: str = "",
              keys_from: str = "") -> MantaError:
    """The client error for a server error `code` (S3 or jobs API), with a message that
    says what to do about it; `keys_from` is where the client found its keys."""
    where = f"{bucket}/{key}" if key else bucket
    if code == "NoSuchBucket":
        return NoSuchBucket(f"no such bucket: {bucket}", code)
    if code in ("NoSuchKey", "404"):
        return NoSuchKey(f"no such key: {where}", code) if key else NoSuchBucket(f"no such bucket: {bucket}", code)
    if code == "NoSuchJob":
        return NoSuchJob(f"{code}: {message or 'no such job'}", code)
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        source = f"the keys from {keys_from}" if keys_from else "the client's keys"
        return BadCredentials(f"bad credentials ({code}) for {url}: the server does not accept {source} "
                              "(`manta config show` says where each setting comes from)", code)
    if code in ("AccessDenied", "403"):
        why = message if message not in ("", "Access Denied") else "wrong credentials, or another account's bucket"
        return AccessDenied(f"access denied ({code}) to {where or url}: {why}", code)
    if code in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
        owner = "you already own it" if code == "BucketAlreadyOwnedByYou" else "another account owns it"
        return BucketExists(f"bucket {bucket} exists: {owner}", code)
    if code == "BucketNotEmpty":
        return BucketNotEmpty(f"bucket {bucket} is not empty: remove its objects first, or remove it with "
                              "force (manta rb --force)", code)
    if code == "InvalidBucketName":
        return MantaError(f"invalid bucket name {bucket!r}: 3-63 lowercase letters, digits, '-' and '.'", code)
    return MantaError(f"{code}: {message}" if message else code, code)
