"""Fault injection: the kernel's fail-nth (lib/fault-inject.c should_fail_ex(), failslab,
fs/proc/base.c proc_fail_nth_read/write) for the model's allocations.

Each task (thread, by tid) has a counter, current->fail_nth, that /proc/<pid>/task/<tid>/fail-nth
sets and reads. Every place where the kernel allocates on the way through a handler calls
kmalloc() here, in the kernel's order: with the counter at N, the Nth such call of the task
fails with ENOMEM (the counter then reads 0); each earlier one only takes one off it. Calls made
while no task is current (the model's own set-up) never fail.

The sites carry the kernel function's name, so a sweep can say which allocation failed; the
sites and their order are documented where each is called and in the README.
"""
from __future__ import annotations

import errno
import re
import threading
from contextlib import contextmanager

from model.errors import IommufdError


_lock = threading.Lock()
_fail_nth: dict[int, int] = {}  # tid -> task->fail_nth
_current = threading.local()  # the task an ioctl runs for on this thread (`current`)
UINT_MAX = 0xFFFFFFFF
KSTRTOUINT_BUF = 1 + 4 * 8 + 1 + 1  # kstrto_from_user(): char buf[1 + sizeof(type) * 8 + 1 + 1]


def set_fail_nth(tid: int, n: int) -> None:
    """proc_fail_nth_write(): task->fail_nth = n."""
    with _lock:
        if n:
            _fail_nth[tid] = n
        else:
            _fail_nth.pop(tid, None)


def get_fail_nth(tid: int) -> int:
    """proc_fail_nth_read(): what is left of the counter (0 once the fault fired)."""
    with _lock:
        return _fail_nth.get(tid, 0)


_NUMBER = re.compile(r"\+?(?:0[xX]([0-9a-fA-F]+)|0([0-7]*)|([1-9][0-9]*))\n?")


def parse_fail_nth(data: bytes) -> int:
    """kstrtouint_from_user(buf, count, 0, &n) (lib/kstrtox.c): one unsigned number, base
    from its prefix (0x hex, 0 octal), an optional '+' and one trailing newline; EINVAL for
    anything else, ERANGE past UINT_MAX. Only the first 34 bytes are read (its buffer of
    1 + 32 + 1 + 1 bytes for an unsigned int, less the terminating NUL)."""
    m = _NUMBER.fullmatch(data[:KSTRTOUINT_BUF - 1].decode("latin-1"))
    if m is None:
        raise IommufdError(errno.EINVAL)
    hexa, octal, dec = m.groups()
    n = int(hexa, 16) if hexa is not None else int(octal or "0", 8) if octal is not None else int(dec)
    if n > UINT_MAX:
        raise IommufdError(errno.ERANGE)
    return n


@contextmanager
def current(tid: int, trace: list | None = None):
    """Run the body as task `tid` (the kernel's `current` during an ioctl or open); `trace`
    collects the names of the allocation sites passed, in order."""
    prev = getattr(_current, "state", None)
    _current.state = (tid, trace)
    try:
        yield
    finally:
        _current.state = prev


def should_fail(site: str) -> bool:
    """should_fail_ex() through current->fail_nth: True for the Nth call of the task."""
    state = getattr(_current, "state", None)
    if state is None:
        return False
    tid, trace = state
    if trace is not None:
        trace.append(site)
    if not _fail_nth:  # no counter set anywhere: the common case, without the lock
        return False
    with _lock:
        n = _fail_nth.get(tid, 0)
        if not n:
            return False
        n -= 1
        if n:
            _fail_nth[tid] = n
            return False
        del _fail_nth[tid]
        return True


def active() -> bool:
    """Whether a fault point of the current task can fire or is being traced now: only then does
    the order of a fault point against a check with no fault point of its own show."""
    state = getattr(_current, "state", None)
    return state is not None and (state[1] is not None or bool(_fail_nth))


def kmalloc(site: str) -> None:
    """An allocation of the kernel's (kmalloc/kzalloc/xa_alloc node/page...): ENOMEM when
    fault injection picks it."""
    if should_fail(site):
        raise IommufdError(errno.ENOMEM)
