"""The caller and the accounts: contexts share the machine's counters unless given their own."""
from __future__ import annotations

import ctypes
import mmap
import os

from model import open_iommufd
from model.domain import IommuDomain
from model.limits import CAP_IPC_LOCK, CAP_SYS_RESOURCE, PAGE_SIZE
from model.pt.table import amdv1
from model.task import SYSTEM_ACCOUNTS, Accounts, Task
from model.uapi import B


def _ioas(fd):
    cmd = B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc))
    fd.ioctl(B.IOMMU_IOAS_ALLOC, cmd)
    return fd.ictx.objects.get(cmd.out_ioas_id, "IOAS")


def test_task_reads_the_process():
    t = Task(os.getpid())
    assert t.uid == os.getuid()
    import resource

    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    assert t.memlock_pages == (soft >> 12 if soft != resource.RLIM_INFINITY else (1 << 64) - 1 >> 12)
    assert Task(1, caps=1 << CAP_IPC_LOCK).capable(CAP_IPC_LOCK)
    assert not Task(1, caps=1 << CAP_IPC_LOCK).capable(CAP_SYS_RESOURCE)


def test_contexts_charge_their_accounts():
    mine, other = Accounts(), Accounts()
    m = mmap.mmap(-1, 4 * PAGE_SIZE)
    va = ctypes.addressof(ctypes.c_char.from_buffer(m))
    before = SYSTEM_ACCOUNTS.snapshot()
    for accounts in (mine, other):
        fd = open_iommufd(accounts=accounts)
        ioas = _ioas(fd)
        ioas.iopt.table_add_domain(Task(os.getpid()).mm, IommuDomain(amdv1(pgsize_bitmap=PAGE_SIZE)))
        cmd = B.iommu_ioas_map(size=ctypes.sizeof(B.iommu_ioas_map), ioas_id=ioas.id, user_va=va,
                               length=4 * PAGE_SIZE, iova=1 << 30,
                               flags=B.IOMMU_IOAS_MAP_FIXED_IOVA | B.IOMMU_IOAS_MAP_READABLE)
        fd.ioctl(B.IOMMU_IOAS_MAP, cmd)
        assert ioas.iopt.pinned_pages == 4
        assert accounts.mm_pinned_vm[os.getpid()] == 4
        if accounts is other:
            fd.close()
    assert other.mm_pinned_vm[os.getpid()] == 0 and mine.mm_pinned_vm[os.getpid()] == 4
    assert SYSTEM_ACCOUNTS.snapshot() == before
