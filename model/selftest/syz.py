"""syzkaller's IOVA conversion (selftest.c): with MOCK_FLAGS_ACCESS_SYZ an IOVA names an area by
its position, so a fuzzer can reach mappings whose IOVAs it cannot know."""
from __future__ import annotations

from model.uapi import B


def __iommufd_test_syz_conv_iova(iopt, iova: int) -> int:
    """__iommufd_test_syz_conv_iova(): iova = (offset << 32) | nth; the nth area's start plus the
    offset, or 0 when there is no nth area."""
    nth, offset = iova & 0xFFFFFFFF, iova >> 32
    for i, area in enumerate(iopt.iter_areas()):
        if i == nth:
            return area.start + offset
    return 0


def iommufd_test_syz_conv_iova_id(ucmd, ioas_id: int, iova: int, flags: int) -> tuple[int, int]:
    """iommufd_test_syz_conv_iova_id(): only with MOCK_FLAGS_ACCESS_SYZ, which it clears; an ID
    that is not an IOAS leaves the IOVA as it was. Returns (iova, flags)."""
    if not flags & B.MOCK_FLAGS_ACCESS_SYZ:
        return iova, flags
    flags &= ~B.MOCK_FLAGS_ACCESS_SYZ
    obj = ucmd.ictx.objects.objects.get(ioas_id)
    if obj is not None and obj.type == "IOAS":
        iova = __iommufd_test_syz_conv_iova(obj.iopt, iova)
    return iova, flags
