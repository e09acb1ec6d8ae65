"""struct io_pagetable (drivers/iommu/iommufd/io_pagetable.c): areas, reserved and allowed ranges."""
from __future__ import annotations


class IoPagetable:
    def __init__(self):
        self.iova_alignment = 1  # iopt_init_table()
        self.reserved: list[tuple[int, int]] = []  # (start, last), sorted, disjoint

    def allowed_holes(self, start: int, last: int):
        """interval_tree_for_each_span over reserved_itree: the holes in [start, last]."""
        cur = start
        for rs, rl in self.reserved:
            if rl < cur:
                continue
            if rs > last:
                break
            if rs > cur:
                yield cur, rs - 1
            cur = rl + 1
            if cur > last or cur == 0:
                return
        if cur <= last:
            yield cur, last
