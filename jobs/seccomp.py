"""The seccomp filter every task container runs under, built with libseccomp.

bubblewrap loads it (`--seccomp FD`, a compiled classic-BPF program as libseccomp's
seccomp_export_bpf writes it) just before it execs the task's shell, so bwrap's own
namespace setup is unaffected and everything in the container inherits it. The default is
to allow: the container (own user namespace, no capabilities, read-only binds, no network)
is the main wall; the filter takes away the kernel interfaces a data-processing task never
needs, which are where container escapes and kernel exploits usually start (as LXD's and
Docker's default profiles do). Refused with EPERM (`REFUSED`):

    keyctl add_key request_key        kernel keyrings: not namespaced, a classic exploit path
    bpf perf_event_open userfaultfd   eBPF programs, perf counters and page-fault handling
                                      from user space: large attack surface, exploit helpers
    io_uring_setup/enter/register     io_uring: the kernel's most exploited interface lately
    ptrace                            no debugging or tracing of other task processes
    mount umount2 pivot_root, the new mount API (open_tree move_mount fsopen fsconfig fsmount
    fspick mount_setattr), unshare setns
                                      no new mounts or namespaces: the container's view is
                                      final (bwrap already gives no capabilities and disables
                                      nested user namespaces; this removes the code paths)
    kexec_load kexec_file_load init_module finit_module delete_module acct swapon swapoff
    reboot settimeofday clock_settime
                                      host administration: need capabilities a task never has
    mq_open                           POSIX message queues: they outlive their processes in
                                      the IPC namespace and cannot be listed without a mount,
                                      so a reused container (jobs/warm.py) could not clear them
    personality with ADDR_NO_RANDOMIZE  turning ASLR off; the query personality(0xffffffff)
                                      and plain PER_LINUX still work
    clone with a CLONE_NEW* flag      a new namespace through the back door of clone (fork,
                                      threads and posix_spawn use clone without these flags)

and clone3 is refused with ENOSYS, as Docker does: its flags live in memory a filter cannot
read, and on ENOSYS glibc (pthread_create, posix_spawn) falls back to clone, which the rule
above sees. Calls libseccomp does not know on this architecture are skipped (logged when the
filter is built, once per Sandbox).

Only the native ABI is in the filter: a call through another one (x86_64's 32-bit int 0x80
or x32) kills the process with SIGSYS (libseccomp's "bad arch" action), so no rule can be
dodged through a second syscall table.

The binding is our own, over libseccomp.so.2 with ctypes (seccomp_init, rule_add_array,
export_bpf, release); `compile_filter()` returns the program's bytes, which the sandbox
builds once and writes into a fresh memfd for each task (bwrap reads the fd from its offset
to EOF, so a shared fd would be consumed by the first task).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import platform
from dataclasses import dataclass

__all__ = ["CLONE_NEW_FLAGS", "REFUSED", "SeccompError", "compile_filter"]

log = logging.getLogger(__name__)

ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000
ACT_ERRNO = 0x00050000
CMP_MASKED_EQ = 7
ATTR_ACT_BADARCH = 2
ADDR_NO_RANDOMIZE = 0x0040000
CLONE_FLAGS_ARG = 1 if platform.machine().startswith("s390") else 0  # s390 passes the stack first
CLONE_NEW_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
                   "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                   "CLONE_NEWNET": 0x40000000}

REFUSED = (
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "ptrace",
    "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "unshare", "setns",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "acct",
    "swapon", "swapoff", "reboot", "settimeofday", "clock_settime",
    "mq_open",
)


class SeccompError(Exception):
    """The filter cannot be built here (libseccomp missing or refusing a rule)."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@dataclass(frozen=True)
class _Rule:
    name: str
    action: int
    masked: tuple[int, int, int] | None = None   # (arg, mask, value): the arg & mask == value


def _rules(refusal: int) -> list[_Rule]:
    eperm = ACT_ERRNO | refusal
    rules = [_Rule(name, eperm) for name in REFUSED]
    # "ADDR_NO_RANDOMIZE set and not the query 0xffffffff": libseccomp takes one comparison
    # per argument and rule, so: the flag set and some other bit of the 32-bit persona clear
    rules += [_Rule("personality", eperm, (0, ADDR_NO_RANDOMIZE | 1 << bit, ADDR_NO_RANDOMIZE))
              for bit in range(32) if 1 << bit != ADDR_NO_RANDOMIZE]
    rules += [_Rule("clone", eperm, (CLONE_FLAGS_ARG, flag, flag)) for flag in CLONE_NEW_FLAGS.values()]
    rules.append(_Rule("clone3", ACT_ERRNO | errno.ENOSYS))
    return rules


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as err:
        raise SeccompError(f"libseccomp is not installed (Debian: libseccomp2): {err}") from err
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    return lib


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SeccompError(f"libseccomp: {what}: {os.strerror(-rc)}")


def compile_filter(refusal: int = errno.EPERM) -> bytes:
    """The filter as a classic-BPF program (an array of struct sock_filter), for `--seccomp`.
    `refusal`: the errno of refused calls (a test picks another one to show that the filter,
    not the kernel, refuses them)."""
    lib = _library()
    ctx = lib.seccomp_init(ACT_ALLOW)
    if not ctx:
        raise SeccompError("libseccomp: seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, ATTR_ACT_BADARCH, ACT_KILL_PROCESS), "bad-arch action")
        unknown = set()
        for rule in _rules(refusal):
            nr = lib.seccomp_syscall_resolve_name(rule.name.encode())
            if nr < 0:  # unknown, or a pseudo-syscall number: not a call on this architecture
                unknown.add(rule.name)
                continue
            cmps = None
            if rule.masked:
                arg, mask, value = rule.masked
                cmps = (_ArgCmp * 1)(_ArgCmp(arg, CMP_MASKED_EQ, mask, value))
            _check(lib.seccomp_rule_add_array(ctx, rule.action, nr, 1 if cmps else 0, cmps), rule.name)
        if unknown:
            log.info("seccomp: no such system calls on this architecture, not filtered: %s",
                     ", ".join(sorted(unknown)))
        fd = os.memfd_create("manta-seccomp")
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "export")
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
