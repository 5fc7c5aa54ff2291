"""Building a Python image: a venv over the host's python3, made where tasks will see it.

    requirements text --image id (sha256 of kind, text, python version, machine)-->
        <cache>/<id>.tar exists? done (no pip)
        else, under <cache>/<id>.lock (one build per id across threads and processes):
            bwrap as the task user, network shared, the new directory bound AT
            /opt/manta/image: `python3 -m venv /opt/manta/image`, then
            `/opt/manta/image/bin/pip install -r <requirements>` (so shebangs and
            pyvenv.cfg name the path tasks see) --pack--> <cache>/.<id>.tar.tmp
            --rename--> <cache>/<id>.tar ; a line in <cache>/builds.log

The cache (`BuildConfig.cache_dir`, MANTA_IMAGE_CACHE) may be shared by several servers
(CI points every test server at one): a second server asked for the same content finds
the tar there and runs no pip. pip's own download cache lives beside it (`pip/`). A
failed pip leaves nothing but its message, raised as ImageError; the build directory is
removed either way. The build runs no user data and is not a task: it gets the network
(pip needs PyPI or the mirror the host's pip.conf / PIP_* variables name) but still runs
as the unprivileged task user with read-only system directories.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from jobs.errors import ImageError
from jobs.imagetree import pack
from jobs.reach import unreachable
from jobs.sandbox import IMAGE_MOUNT

__all__ = ["BuildConfig", "build_python", "image_id", "python_version"]

log = logging.getLogger("manta.jobs")

HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MESSAGE_BYTES = 8 * 1024
BUILD_LOG = "builds.log"
RO_PATHS = ("/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ssl", "/etc/ca-certificates",
            "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/localtime", "/etc/pip.conf",
            "/etc/xdg/pip", "/etc/python3", "/etc/python3.11")
PASSED_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
SCRIPT = (f"set -e; cat > /tmp/requirements.txt; {{python}} -m venv {IMAGE_MOUNT}; "
          f"{IMAGE_MOUNT}/bin/pip install --no-input --disable-pip-version-check "
          f"--no-warn-script-location -r /tmp/requirements.txt")


@dataclass(frozen=True)
class BuildConfig:
    cache_dir: str                      # built image tars by id (MANTA_IMAGE_CACHE)
    python: str = "/usr/bin/python3"
    bwrap: str = "/usr/bin/bwrap"
    user: str = "manta-task"
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if not os.path.isabs(self.python) or not self.python.startswith("/usr/"):
            raise ValueError("the image python must be under /usr (tasks see the host's /usr)")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")


def python_version(python: str) -> str:
    """What a venv over `python` depends on: its version and the machine."""
    try:
        out = subprocess.run([python, "-c", "import platform, sys; print(sys.version.split()[0], "
                              "platform.machine(), *platform.libc_ver())"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"cannot run {python}: {exc}") from exc
    return out.strip()


def image_id(kind: str, content: str, version: str) -> str:
    """The content address of an image: sha256 over its kind, content and python/machine."""
    return hashlib.sha256("\0".join((kind, version, content)).encode()).hexdigest()


def build_python(requirements: str, version: str, config: BuildConfig) -> tuple[str, str, bool]:
    """(image id, path of its tar in the cache, built now) for a venv of `requirements`."""
    ident = image_id("python", requirements, version)
    target = os.path.join(config.cache_dir, f"{ident}.tar")
    if os.path.exists(target):
        return ident, target, False
    os.makedirs(config.cache_dir, exist_ok=True)
    with open(os.path.join(config.cache_dir, f".{ident}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(target):
            return ident, target, False
        started = time.monotonic()
        work = tempfile.mkdtemp(prefix=f".build-{ident[:12]}-", dir=_work_base(config))
        try:
            tree = os.path.join(work, "tree")
            pip_cache = os.path.join(_work_base(config), "pip")
            for path in (tree, pip_cache):
                os.makedirs(path, exist_ok=True)
            ids = _task_ids(config.user)
            os.chmod(work, 0o711)
            if ids is not None:
                for path in (tree, pip_cache):
                    os.chown(path, *ids)
            _run_pip(requirements, tree, pip_cache, ids, config)
            temp = os.path.join(config.cache_dir, f".{ident}.tar.tmp")
            pack(tree, temp)
            os.rename(temp, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        seconds = time.monotonic() - started
        with open(os.path.join(config.cache_dir, BUILD_LOG), "a") as out:
            out.write(f"{ident} {seconds:.1f}\n")
        log.info("image %s built in %.1fs (%d bytes)", ident[:12], seconds, os.path.getsize(target))
        return ident, target, True


def _work_base(config: BuildConfig) -> str:
    """Where builds happen: the cache dir when the task user can reach it, else /var/tmp."""
    ids = _task_ids(config.user)
    if ids is None or unreachable(config.cache_dir, *ids) is None:
        return config.cache_dir
    base = os.path.join(tempfile.gettempdir() if not os.path.isdir("/var/tmp") else "/var/tmp",
                        "manta-image-build")
    os.makedirs(base, mode=0o711, exist_ok=True)
    return base


def _task_ids(user: str) -> tuple[int, int] | None:
    """The build's uid and gid when we are root (None: we build as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ImageError(f"the task user {user} does not exist (the sandbox makes it at start)") from None
    return entry.pw_uid, entry.pw_gid


def _run_pip(requirements: str, tree: str, pip_cache: str, ids: tuple[int, int] | None,
             config: BuildConfig) -> None:
    priv: list[str] = []
    if ids is not None:
        setpriv = shutil.which("setpriv", path=HOST_PATH)
        if setpriv is None:
            raise ImageError("setpriv (util-linux) is not installed")
        priv = [setpriv, f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups", "--"]
    if not os.access(config.bwrap, os.X_OK):
        raise ImageError(f"bubblewrap is not installed at {config.bwrap}")
    argv = [*priv, config.bwrap, "--unshare-all", "--share-net", "--die-with-parent", "--new-session"]
    for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
    for path in RO_PATHS:
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", tree, IMAGE_MOUNT,
             "--bind", pip_cache, "/var/cache/pip", "--chdir", "/tmp", "--clearenv"]
    env = {"PATH": HOST_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "PIP_CACHE_DIR": "/var/cache/pip",
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in PASSED_ENV}}
    env["PIP_CACHE_DIR"] = "/var/cache/pip"
    for name, value in env.items():
        argv += ["--setenv", name, value]
    argv += ["--", "/bin/sh", "-c", SCRIPT.format(python=config.python)]
    try:
        done = subprocess.run(argv, input=requirements.encode(), capture_output=True,
                              timeout=config.timeout_s, env={"PATH": HOST_PATH, "LANG": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        raise ImageError(f"building the image took longer than {config.timeout_s:g}s") from None
    except OSError as exc:
        raise ImageError(f"cannot start the image build: {exc}") from exc
    if done.returncode != 0:
        text = (done.stderr or done.stdout).decode(errors="replace").strip()
        with contextlib.suppress(ValueError):
            text = text[text.index("ERROR:"):]  # pip's own complaint, not the warnings before it
        raise ImageError(f"pip failed (exit {done.returncode}): {text[-MESSAGE_BYTES:]}")
