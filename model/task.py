"""The caller of an ioctl (the kernel's `current`) and the accounting it is charged to.

A Task is what the kernel reads off `current`: pid, uid (its user_struct), capabilities,
RLIMIT_MEMLOCK and its mm (here: the process's address space, by pid). The model never asks
os.getpid(): the layer that receives the call (the Python client in model/file.py, later a
server) says who is calling. Properties are read from /proc, capget and prlimit when first used
and kept for the one call; a fresh Task is made per call, as `current` is.

Accounts is the kernel's shared counters: user_struct->locked_vm per uid, mm->locked_vm and
mm->pinned_vm per mm. Contexts share one Accounts as the kernel's files share user_structs and
mms; a test or a server can make a fresh one.
"""
from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass, field

from model.libc import effective_caps
from model.limits import PAGE_SHIFT, U64_MAX
from model.memory import PhysicalMemory
from model.uaccess import UserMemory


class Task:
    """`current`: the calling process."""

    __slots__ = ("pid", "tid", "_uid", "_caps", "_memlock", "mm", "files")

    def __init__(self, pid: int, uid: int | None = None, caps: int | None = None,
                 memlock: int | None = None, mm: UserMemory | None = None, files=None, tid: int | None = None):
        self.pid = pid
        self.tid = pid if tid is None else tid  # the thread: its fail-nth counter (model/fault_inject.py)
        # current->files when the caller is another process: what fd_install() goes through
        # (model/anon_inode.py FdTable; the server's connection to the caller). None: this process.
        self.files = files
        self._uid, self._caps, self._memlock = uid, caps, memlock
        self.mm = UserMemory(pid) if mm is None else mm

    @property
    def uid(self) -> int:
        """current_user(): the user_struct of the task's real uid."""
        if self._uid is None:
            self._uid = _real_uid(self.pid)
        return self._uid

    def capable(self, cap: int) -> bool:
        """capable(): `cap` in the task's effective set."""
        if self._caps is None:
            self._caps = effective_caps(self.pid)
        return bool(self._caps >> cap & 1)

    @property
    def memlock_pages(self) -> int:
        """task_rlimit(task, RLIMIT_MEMLOCK) >> PAGE_SHIFT."""
        if self._memlock is None:
            try:
                soft, _ = resource.prlimit(self.pid, resource.RLIMIT_MEMLOCK)
            except OSError:
                soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
            self._memlock = U64_MAX if soft == resource.RLIM_INFINITY else soft
        return self._memlock >> PAGE_SHIFT

    def __repr__(self) -> str:
        return f"Task(pid={self.pid})"


@dataclass
class Accounts:
    """The machine's shared counters, in pages: user->locked_vm by uid; mm->locked_vm and
    mm->pinned_vm by mm (the process, by pid); and the physical memory pinned pages are in."""

    user_locked_vm: dict[int, int] = field(default_factory=dict)
    mm_locked_vm: dict[int, int] = field(default_factory=dict)
    mm_pinned_vm: dict[int, int] = field(default_factory=dict)
    memory: PhysicalMemory = field(default_factory=PhysicalMemory)  # the frames pinned pages get
    # Contexts on several threads share these counters, as the kernel's atomics are shared.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def charge(self, counter: dict[int, int], key: int, npages: int, limit: int | None = None) -> bool:
        """counter[key] += npages, unless that passes `limit` (False, nothing changed); a negative
        npages takes away at most what is there (decr_user_locked_vm() floors at 0)."""
        with self.lock:
            cur = counter.get(key, 0)
            if npages > 0 and limit is not None and cur + npages > limit:
                return False
            counter[key] = cur + npages if npages > 0 else cur - min(cur, -npages)
            return True

    def snapshot(self) -> tuple:
        return tuple(tuple(sorted((k, v) for k, v in d.items() if v))
                     for d in (self.user_locked_vm, self.mm_locked_vm, self.mm_pinned_vm))


def _real_uid(pid: int) -> int:
    if pid == os.getpid():
        return os.getuid()
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return os.getuid()


# The machine's counters, shared by every context opened without its own (as the kernel's are).
SYSTEM_ACCOUNTS = Accounts()
