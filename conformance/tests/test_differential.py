"""Model and kernel, step by step: hypothesis drives the same ioctl sequence into both.

Runs where a real /dev/iommu exists (target kernel, e.g. inside the VM); every step
compares the errno and every output field. A failure is shrunk and printed by hypothesis
as a replayable program of rule calls.
"""
import ctypes
import errno
import os

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import generated
from conformance.targets import KernelFile
from model import open_iommufd

B = generated.load()

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/iommu"),
                                reason="differential: needs a real /dev/iommu to compare the model with "
                                       "(run with --iommufd-target vm)")


def _call(fd, request, struct):
    """(errno or 0, the struct's bytes afterwards) for one ioctl."""
    try:
        rc = fd.ioctl(request, struct)
    except OSError as e:
        return e.errno, bytes(struct)
    return (0 if rc == 0 else ("rc", rc)), bytes(struct)


class ModelVsKernel(RuleBasedStateMachine):
    ioas = Bundle("ioas")

    def __init__(self):
        super().__init__()
        self.model = open_iommufd()
        self.kernel = KernelFile()

    def teardown(self):
        self.model.close()
        self.kernel.close()

    def both(self, request, make):
        """Run the same command (a fresh struct per side) on both; they must agree."""
        m, k = make(), make()
        rm = _call(self.model, request, m)
        rk = _call(self.kernel, request, k)
        assert rm == rk, f"model {rm[0]} {m!r} != kernel {rk[0]} {k!r}"
        return rm[0], m

    @rule(target=ioas)
    def ioas_alloc(self):
        err, cmd = self.both(B.IOMMU_IOAS_ALLOC, lambda: B.iommu_ioas_alloc(size=ctypes.sizeof(B.iommu_ioas_alloc)))
        assert err == 0
        return cmd.out_ioas_id

    @rule(id=st.one_of(consumes(ioas), st.integers(0, 8)))
    def destroy(self, id):
        self.both(B.IOMMU_DESTROY, lambda: B.iommu_destroy(size=ctypes.sizeof(B.iommu_destroy), id=id))

    @rule(id=st.one_of(ioas, st.integers(0, 8)), num=st.integers(0, 3))
    def iova_ranges(self, id, num):
        out = {}
        for side, fd in (("model", self.model), ("kernel", self.kernel)):
            ranges = (B.iommu_iova_range * 3)()
            cmd = B.iommu_ioas_iova_ranges(size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id,
                                           num_iovas=num, allowed_iovas=ctypes.addressof(ranges))
            err, raw = _call(fd, B.IOMMU_IOAS_IOVA_RANGES, cmd)
            # allowed_iovas is each side's own address: compare the rest, and what landed there.
            out[side] = (err, raw[:16] + raw[24:], bytes(ranges))
        assert out["model"] == out["kernel"]

    @rule(id=st.one_of(ioas, st.integers(0, 8)), op=st.integers(0, 2), val=st.integers(0, 2))
    def huge_pages(self, id, op, val):
        self.both(B.IOMMU_OPTION, lambda: B.iommu_option(
            size=ctypes.sizeof(B.iommu_option), option_id=B.IOMMU_OPTION_HUGE_PAGES, op=op, object_id=id, val64=val))

    @rule(op=st.integers(0, 3), id=st.one_of(ioas, st.integers(0, 8)))
    def vfio_ioas(self, op, id):
        self.both(B.IOMMU_VFIO_IOAS, lambda: B.iommu_vfio_ioas(size=ctypes.sizeof(B.iommu_vfio_ioas), op=op, ioas_id=id))

    @rule(ext=st.sampled_from([B.VFIO_TYPE1_IOMMU, B.VFIO_TYPE1v2_IOMMU, B.VFIO_DMA_CC_IOMMU, B.VFIO_NOIOMMU_IOMMU]))
    def vfio_set_iommu_and_check(self, ext):
        for request in (B.VFIO_SET_IOMMU, B.VFIO_CHECK_EXTENSION):
            out = []
            for fd in (self.model, self.kernel):
                try:
                    out.append(fd.ioctl(request, ext))
                except OSError as e:
                    out.append(-e.errno)
            assert out[0] == out[1], f"request {request:#x}({ext}): model {out[0]} != kernel {out[1]}"

    @invariant()
    def same_object_ids_answer(self):
        # IOAS ids 1..8: both sides agree on which exist (IOVA_RANGES with no room: EMSGSIZE vs ENOENT).
        for id in range(1, 9):
            a = _call(self.model, B.IOMMU_IOAS_IOVA_RANGES, B.iommu_ioas_iova_ranges(
                size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id))[0]
            b = _call(self.kernel, B.IOMMU_IOAS_IOVA_RANGES, B.iommu_ioas_iova_ranges(
                size=ctypes.sizeof(B.iommu_ioas_iova_ranges), ioas_id=id))[0]
            assert a == b and a in (errno.EMSGSIZE, errno.ENOENT)


ModelVsKernel.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None, database=None)
test_model_vs_kernel = ModelVsKernel.TestCase
