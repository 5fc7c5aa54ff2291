"""`manta://` for fsspec (and so pandas, pyarrow.dataset, dask...), on top of `manta.Client`.

    pandas.read_csv("manta://sensors/2024/01-01.csv")
    pandas.read_csv("manta://b/k.csv", storage_options={"url": ..., "access_key": ..., "secret_key": ...})
    pandas.read_csv("manta://b/k.csv", storage_options={"url": "https://...", "ca_bundle": "ca.pem"})

Registered through the `fsspec.specs` entry point; the operations and file objects are
`manta.client.files`. The generic alternative is s3fs:
`s3fs.S3FileSystem(key=..., secret=..., client_kwargs={"endpoint_url": MANTA_URL})`.
"""

from __future__ import annotations

from typing import Any

from manta.client.client import Client
from manta.client.files import ClientFileSystem, MantaFile
from manta.client.settings import client_ca_bundle, client_credentials, client_url

__all__ = ["MantaFile", "MantaFileSystem"]


class MantaFileSystem(ClientFileSystem):
    def __init__(self, url: str | None = None, access_key: str | None = None, secret_key: str | None = None,
                 client: Client | None = None, ca_bundle: str | None = None, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._given = (url, access_key, secret_key, ca_bundle)
        self._resolved: tuple[Any, ...] = ()

    @property
    def client(self) -> Client:
        """The given client, or one from the arguments and the environment. fsspec reuses
        instances made with the same arguments, so a change of MANTA_URL, keys or CA bundle in the
        environment (a notebook's) makes a new client rather than going to the old server."""
        if self._client is not None and not self._resolved:
            return self._client
        url, access_key, secret_key, ca_bundle = self._given
        resolved = (url or client_url(), access_key, secret_key,
                    None if access_key and secret_key else client_credentials(), ca_bundle or client_ca_bundle())
        if self._client is None or resolved != self._resolved:
            self._client = Client(url, access_key, secret_key, progress=False, ca_bundle=ca_bundle)
            self._resolved = resolved
        return self._client

