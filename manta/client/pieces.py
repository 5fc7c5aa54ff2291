"""What `Client.put` accepts (bytes, a binary file object, a path, an iterator of bytes),
read in exact-size pieces: a single PUT's body, or a multipart upload's parts."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Iterator
from typing import IO, Any, cast

__all__ = ["Data", "PieceReader"]

Data = bytes | bytearray | memoryview | os.PathLike[str] | IO[bytes] | Iterable[bytes]
_END = object()


class PieceReader:
    """Reads exact-size pieces from any accepted `Data` (short only at the end)."""

    def __init__(self, data: Data) -> None:
        self._close: IO[bytes] | None = None
        self._buffer = b""
        self._iter: Iterator[bytes] | None = None
        self._file: Any = None
        self._view: memoryview | None = None
        self.size: int | None = None
        if isinstance(data, str):
            raise TypeError("put takes bytes, a binary file object, an iterator of bytes or a "
                            "pathlib.Path: for text, pass text.encode()")
        if isinstance(data, bytes | bytearray | memoryview):
            self._view = memoryview(data).cast("B")
            self.size = len(self._view)
        elif isinstance(data, os.PathLike):
            self._file = self._close = open(data, "rb")  # noqa: SIM115
            self.size = os.fstat(self._file.fileno()).st_size
        elif hasattr(data, "read"):
            self._file = file = cast(Any, data)
            try:
                st = os.fstat(file.fileno())
                self.size = st.st_size - file.tell() if stat.S_ISREG(st.st_mode) else None
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                self.size = None
        else:
            self._iter = iter(data)

    def read(self, n: int) -> bytes:
        if self._view is not None:
            view, self._view = self._view[:n], self._view[n:]
            return bytes(view)
        pieces: list[bytes] = [self._buffer] if self._buffer else []
        got = len(self._buffer)
        while got < n:
            if self._file is not None:
                piece = self._file.read(n - got)
                if not piece:
                    break
            else:
                assert self._iter is not None
                item = next(self._iter, _END)
                if item is _END:
                    break
                if not isinstance(item, bytes | bytearray | memoryview):
                    raise TypeError(f"an iterator passed to put must yield bytes, not {type(item).__name__}")
                piece = bytes(item)
            pieces.append(piece)
            got += len(piece)
        data = b"".join(pieces)
        self._buffer = data[n:]
        return data[:n]

    def close(self) -> None:
        if self._close is not None:
            self._close.close()
