"""`manta login BUCKET/KEY [-- COMMAND]`: a shell in a task sandbox on the node holding the
object, the object at /manta/input (Manta's mlogin).

The terminal is put in raw mode, so every key (^C, ^Z, ^D included) goes to the remote
PTY; its size goes with the request and again on each SIGWINCH. A thread copies stdin to
the session (at stdin's end, not a terminal, one ^D is sent: the shell or command sees
EOF); this thread writes the output to stdout until the session's end frame, then the
terminal is restored. Exit status: the command's or shell's (128+N for a signal N); 1 when
the session was closed by the server (idle timeout, a limit) or could not start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import termios
import threading
import tty
from typing import Any

from manta.cli.common import client, subcommand

__all__ = ["register"]

EOF_KEY = b"\x04"


def register(sub: Any) -> None:
    p = subcommand(sub, "login", _login,
                   help="an interactive shell in a sandbox next to an object (at /manta/input)",
                   example=["manta login logs/2024-06-01.log",
                            "manta login logs/2024-06-01.log -- 'grep -c ERROR /manta/input'"],
                   description="Open a shell (or run COMMAND, ssh-style: its words joined by spaces "
                               "and run by bash) on a terminal in a fresh job sandbox on the node "
                               "holding BUCKET/KEY: the object is at /manta/input, read-only; no "
                               "network; the limits of a job task. The session ends with the shell "
                               "(exit, ^D), when the connection goes, or after the idle timeout "
                               "(MANTA_LOGIN_IDLE_S on the server, default 600 s).")
    p.add_argument("name", metavar="BUCKET/KEY", help="an object of yours")
    p.add_argument("command", nargs="*", metavar="COMMAND", help="run this instead of a shell (after --)")
    p.add_argument("--idle", type=float, default=None, metavar="SECONDS",
                   help="close the session after this long without input or output "
                        "(at most the server's timeout)")


def _size() -> tuple[int, int]:
    for fd in (1, 0, 2):
        with contextlib.suppress(OSError):
            cols, rows = os.get_terminal_size(fd)
            if rows > 0 and cols > 0:
                return rows, cols
    cols, rows = shutil.get_terminal_size((80, 24))
    return rows, cols


def _login(args: argparse.Namespace) -> int:
    from manta.client.login import LoginSocket

    rows, cols = _size()
    command = " ".join(args.command) if args.command else None
    sock = LoginSocket.open(client(), args.name, command=command, rows=rows, cols=cols,
                            term=os.environ.get("TERM") or "xterm", idle_s=args.idle)
    saved = None
    stdin = sys.stdin.fileno() if sys.stdin is not None else -1
    if stdin >= 0 and os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    previous = signal.signal(signal.SIGWINCH, lambda *_: _resize(sock))
    try:
        if stdin >= 0:
            threading.Thread(target=_copy_keys, args=(stdin, sock, saved is not None), daemon=True).start()
        end = _copy_output(sock)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()
    reason = end.get("end")
    if reason == "exit":
        return int(end["exit_code"]) if end.get("exit_code") is not None else 128 + int(end.get("signal") or 0)
    print(f"manta: login: {end.get('message') or reason}", file=sys.stderr)
    return 1


def _resize(sock: Any) -> None:
    with contextlib.suppress(Exception):
        sock.resize(*_size())


def _copy_keys(fd: int, sock: Any, terminal: bool) -> None:
    try:
        while data := os.read(fd, 4096):
            sock.send_keys(data)
        if not terminal:
            sock.send_keys(EOF_KEY)
    except Exception:  # the session is over; the main thread reports how
        return


def _copy_output(sock: Any) -> dict[str, Any]:
    out = sys.stdout.fileno()
    while True:
        frame = sock.receive()
        if isinstance(frame, dict):
            return frame
        view = memoryview(frame)
        while view:
            view = view[os.write(out, view):]
