"""The lifetime of the mock's dma-bufs (model/dma_buf.py, model/selftest/dmabuf.py): what user
space cannot see, the buffer's frames, goes when the last descriptor and the last iopt_pages
holding it are gone, in either order, and not before."""
from __future__ import annotations

import ctypes
import os

from model import dma_buf
from model.file import open_iommufd
from model.limits import PAGE_SIZE
from model.uapi import T as B

MOCK_START = B.MOCK_APERTURE_START


def _ioctl(f, cls, req, **kw):
    cmd = cls(size=ctypes.sizeof(cls), **kw)
    rc = f.ioctl(req, cmd)
    return cmd, rc


def _setup(f, length=4 * PAGE_SIZE):
    ioas = _ioctl(f, B.iommu_ioas_alloc, B.IOMMU_IOAS_ALLOC)[0].out_ioas_id
    md = B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_MOCK_DOMAIN, id=ioas)
    f.ioctl(B.IOMMU_TEST_CMD, md)
    get = B.iommu_test_cmd(size=ctypes.sizeof(B.iommu_test_cmd), op=B.IOMMU_TEST_OP_DMABUF_GET)
    get.dmabuf_get.length = length
    get.dmabuf_get.open_flags = os.O_CLOEXEC
    dfd = f.ioctl(B.IOMMU_TEST_CMD, get)
    _ioctl(f, B.iommu_ioas_map_file, B.IOMMU_IOAS_MAP_FILE, ioas_id=ioas, fd=dfd, start=0, length=length,
           iova=MOCK_START, flags=B.IOMMU_IOAS_MAP_FIXED_IOVA | B.IOMMU_IOAS_MAP_READABLE)
    st = os.fstat(dfd)
    db = dma_buf._DMA_BUF_LIST[(st.st_dev, st.st_ino)]
    return ioas, dfd, db


def _unmap_all(f, ioas):
    _ioctl(f, B.iommu_ioas_unmap, B.IOMMU_IOAS_UNMAP, ioas_id=ioas, iova=0, length=(1 << 64) - 1)


def test_the_buffer_lives_while_an_area_holds_it():
    f = open_iommufd()
    ioas, dfd, db = _setup(f)
    kp = db.priv.memory
    assert kp.pfn in f.ictx.accounts.memory.kernel_pages
    assert len(db.attachments) == 1 and db.refs == 1
    os.close(dfd)
    dma_buf._reap()
    assert not db.released and kp.pfn in f.ictx.accounts.memory.kernel_pages  # the pages hold it
    _unmap_all(f, ioas)
    assert db.released and not db.attachments
    assert kp.pfn not in f.ictx.accounts.memory.kernel_pages  # iommufd_test_dma_buf_release()
    f.ictx.check_invariants()
    f.close()


def test_the_buffer_lives_while_a_descriptor_holds_it():
    f = open_iommufd()
    ioas, dfd, db = _setup(f)
    _unmap_all(f, ioas)
    assert not db.released and db.refs == 0 and not db.attachments
    os.close(dfd)
    dma_buf._reap()
    assert db.released
    f.close()


def test_closing_the_context_puts_the_dma_buf():
    f = open_iommufd()
    _, dfd, db = _setup(f)
    os.close(dfd)
    f.close()  # iommufd_fops_release(): the IOAS and its areas go, and their pages
    assert db.released
