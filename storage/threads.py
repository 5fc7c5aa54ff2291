"""Thread pools made on first use in each process: a forked child makes its own rather than
use its parent's, whose threads did not come along."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["ProcessPool"]


class ProcessPool:
    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self.name = name
        self._lock = threading.Lock()
        self._pool: tuple[int, ThreadPoolExecutor] | None = None

    def get(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None or pool[0] != os.getpid():
            with self._lock:
                pool = self._pool
                if pool is None or pool[0] != os.getpid():
                    pool = self._pool = (os.getpid(), ThreadPoolExecutor(self.threads, thread_name_prefix=self.name))
        return pool[1]
