"""`manta://` for fsspec (and so pandas, pyarrow.dataset, dask...), on top of `manta.Client`.

    pandas.read_csv("manta://sensors/2024/01-01.csv")
    pandas.read_csv("manta://b/k.csv", storage_options={"url": ..., "access_key": ..., "secret_key": ...})
    pandas.read_csv("manta://b/k.csv", storage_options={"url": "https://...", "ca_bundle": "ca.pem"})
    pandas.read_csv("manta://b/k.csv", storage_options={"profile": "work"})

Without options the server and keys are resolved as for `manta.Client()`
(`manta.client.settings`: environment, profile, AWS shared files).

Registered through the `fsspec.specs` entry point; the operations and file objects are
`manta.client.files`. The generic alternative is s3fs:
`s3fs.S3FileSystem(key=..., secret=..., client_kwargs={"endpoint_url": MANTA_URL})`.
"""

from __future__ import annotations

from typing import Any

from manta.client.client import Client
from manta.client.files import ClientFileSystem, MantaFile
from manta.client.settings import resolve

__all__ = ["MantaFile", "MantaFileSystem"]


class MantaFileSystem(ClientFileSystem):
    def __init__(self, url: str | None = None, access_key: str | None = None, secret_key: str | None = None,
                 client: Client | None = None, ca_bundle: str | None = None, profile: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._given = (url, access_key, secret_key, ca_bundle, profile)
        self._resolved: tuple[Any, ...] = ()

    @property
    def client(self) -> Client:
        """The given client, or one from the arguments, the environment and the profile.
        fsspec reuses instances made with the same arguments, so a change of the server, keys
        or CA bundle they resolve to (a notebook's environment, a profile rewritten) makes a
        new client rather than going to the old server."""
        if self._client is not None and not self._resolved:
            return self._client
        settings = resolve(*self._given)
        resolved = (settings.url, settings.access_key, settings.secret_key, settings.ca_bundle)
        if self._client is None or resolved != self._resolved:
            self._client = Client(settings.url, settings.access_key, settings.secret_key, progress=False,
                                  ca_bundle=settings.ca_bundle)
            self._resolved = resolved
        return self._client
