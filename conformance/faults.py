"""Fault-injection sweeps (`iommufd-conformance faults`): one ioctl after a set-up, run with
fail-nth = 1, 2, ... until it succeeds without the fault firing. Every attempt in which the fault
fired answers an errno (ENOMEM for an allocation; ENOENT, EINVAL or EFAULT for the selftest
kernel's own points, iommufd_should_fail()) or succeeds where the kernel absorbs the failure (as
xas_nomem() does for a GFP_NOWAIT node), and when it failed it must leave every observable thing
as it was: the IOAS's
ranges and areas (helpers.snapshot()), the pins of the buffer (MD_CHECK_REFS), the ID handed out
next. The same sweep runs on the model (model/fault_inject.py) and on a kernel (fail-nth in
/proc/thread-self with failslab's ignore-gfp-wait off): `faults --target vm` compares them
attempt by attempt.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from conformance.tests import helpers as h
from model.uapi import T as B

BUF_PAGES = 16
ROOT = Path(__file__).resolve().parents[1]
MOCK_APERTURE_START = 1 << 24


class ModelFailNth:
    """The model's counter for this thread."""

    def __init__(self):
        from model import fault_inject

        self.fi, self.tid = fault_inject, threading.get_native_id()

    def set(self, n: int) -> None:
        self.fi.set_fail_nth(self.tid, n)

    def get(self) -> int:
        return self.fi.get_fail_nth(self.tid)


class KernelFailNth:
    """/proc/thread-self/fail-nth with failslab and fail_page_alloc taking sleeping allocations
    too (ignore-gfp-wait N, as the kernel's iommufd_fail_nth selftest sets them)."""

    def __init__(self):
        dbg = "/sys/kernel/debug"
        if not os.path.exists(f"{dbg}/failslab"):
            os.system(f"mount -t debugfs none {dbg} 2>/dev/null")
        for f in ("failslab/ignore-gfp-wait", "fail_page_alloc/ignore-gfp-wait", "fail_page_alloc/ignore-gfp-highmem"):
            try:
                with open(f"{dbg}/{f}", "w") as fh:
                    fh.write("N")
            except OSError:
                pass
        try:  # quiet: every fault fired would print a stack (fail_iommufd too)
            names = [d for d in os.listdir(dbg) if d.startswith("fail")]
        except OSError:
            names = []
        for d in names:
            try:
                with open(f"{dbg}/{d}/verbose", "w") as fh:
                    fh.write("0")
            except OSError:
                pass
        self.fd = os.open(f"/proc/self/task/{threading.get_native_id()}/fail-nth", os.O_RDWR)

    def set(self, n: int) -> None:
        os.pwrite(self.fd, str(n).encode(), 0)

    def get(self) -> int:
        return int(os.pread(self.fd, 32, 0))


@dataclass
class Scenario:
    """A set-up (not swept) and the ioctl swept; `state` says what is observable."""

    name: str
    doc: str
    setup: Callable
    op: Callable


def _next_id(fd) -> int:
    ioas = h.ioas_alloc(fd)
    h.destroy(fd, ioas)
    return ioas


def _state(fd, ctx) -> list:
    """What an observer sees: each IOAS's snapshot, the buffer's pins (refs 0 or 1 over it and
    over each page), the next ID."""
    out = []
    for ioas in ctx.get("ioas_ids", []):
        out.append(h.snapshot(fd, ioas, probes=[(MOCK_APERTURE_START, BUF_PAGES * h.PAGE)]))
    buf = ctx["buf"]
    for refs in (0, 1):
        out.append(("refs", refs, h.err(h.check_refs, fd, buf.addr, buf.len, refs)))
    out.append(("next id", _next_id(fd)))
    return out


def _setup_ioas(fd, ctx, domain=False, mapped=False, second=False):
    ctx["ioas"] = h.ioas_alloc(fd)
    ctx["ioas_ids"] = [ctx["ioas"]]
    if domain:
        ctx["stdev"], ctx["hwpt"] = h.mock_domain(fd, ctx["ioas"])
    if mapped:
        h.map_(fd, ctx["ioas"], ctx["buf"].addr, ctx["buf"].len, iova=MOCK_APERTURE_START)
    if second:
        ctx["dst"] = h.ioas_alloc(fd)
        ctx["ioas_ids"].append(ctx["dst"])


def _fault_alloc(fd) -> int:
    cmd = B.iommu_fault_alloc(size=h.sz(B.iommu_fault_alloc))
    fd.ioctl(B.IOMMU_FAULT_QUEUE_ALLOC, cmd)
    return cmd.out_fault_fd


SCENARIOS = {s.name: s for s in [
    Scenario("IOAS_ALLOC", "IOMMU_IOAS_ALLOC on a fresh context",
             lambda fd, ctx: None, lambda fd, ctx: h.ioas_alloc(fd)),
    Scenario("IOAS_MAP", "IOMMU_IOAS_MAP of 16 pages into an IOAS without a domain",
             lambda fd, ctx: _setup_ioas(fd, ctx),
             lambda fd, ctx: h.map_(fd, ctx["ioas"], ctx["buf"].addr, ctx["buf"].len, iova=MOCK_APERTURE_START)),
    Scenario("IOAS_MAP_DOMAIN", "IOMMU_IOAS_MAP of 16 pages into an IOAS with a mock domain (pinned)",
             lambda fd, ctx: _setup_ioas(fd, ctx, domain=True),
             lambda fd, ctx: h.map_(fd, ctx["ioas"], ctx["buf"].addr, ctx["buf"].len, iova=MOCK_APERTURE_START)),
    Scenario("IOAS_COPY", "IOMMU_IOAS_COPY of a mapped range into a second IOAS",
             lambda fd, ctx: _setup_ioas(fd, ctx, mapped=True, second=True),
             lambda fd, ctx: h.copy(fd, ctx["dst"], ctx["ioas"], MOCK_APERTURE_START, ctx["buf"].len,
                                    dst_iova=MOCK_APERTURE_START)),
    Scenario("IOAS_UNMAP", "IOMMU_IOAS_UNMAP of a mapping in an IOAS with a mock domain",
             lambda fd, ctx: _setup_ioas(fd, ctx, domain=True, mapped=True),
             lambda fd, ctx: h.unmap(fd, ctx["ioas"], MOCK_APERTURE_START, ctx["buf"].len)),
    Scenario("MOCK_DOMAIN", "IOMMU_TEST_OP_MOCK_DOMAIN on an IOAS with a mapping",
             lambda fd, ctx: _setup_ioas(fd, ctx, mapped=True),
             lambda fd, ctx: h.mock_domain(fd, ctx["ioas"])),
    Scenario("ALLOW_IOVAS", "IOMMU_IOAS_ALLOW_IOVAS of two ranges",
             lambda fd, ctx: _setup_ioas(fd, ctx),
             lambda fd, ctx: h.allow(fd, ctx["ioas"], [(1 << 20, (1 << 30) - 1), (1 << 32, (1 << 40) - 1)])),
    Scenario("FAULT_QUEUE_ALLOC", "IOMMU_FAULT_QUEUE_ALLOC on a fresh context",
             lambda fd, ctx: None, lambda fd, ctx: ctx.setdefault("close", []).append(_fault_alloc(fd))),
    Scenario("HWPT_ALLOC", "IOMMU_HWPT_ALLOC of a paging HWPT for a mock device, on an IOAS with a mapping",
             lambda fd, ctx: (_setup_ioas(fd, ctx, mapped=True),
                              ctx.update(dev=h.mock_device(fd, ctx["ioas"])[2])),
             lambda fd, ctx: h.hwpt_alloc(fd, ctx["dev"], ctx["ioas"])),
    Scenario("CREATE_ACCESS", "IOMMU_TEST_OP_CREATE_ACCESS on an IOAS",
             lambda fd, ctx: _setup_ioas(fd, ctx),
             lambda fd, ctx: ctx.setdefault("close", []).append(h.create_access(fd, ctx["ioas"]))),
]}


@dataclass
class Attempt:
    nth: int
    errno: int  # 0: the call succeeded although the fault fired (absorbed)
    unchanged: bool  # after a failure: the state equals the one before the call


@dataclass
class Sweep:
    scenario: str
    attempts: list[Attempt] = field(default_factory=list)
    succeeded_at: int | None = None  # the nth with which the call ran through without a fault
    problems: list[str] = field(default_factory=list)


def sweep(open_fd: Callable, fail_nth, scenario: Scenario, limit: int = 300, kmsg=None) -> Sweep:
    """Run the scenario with fail-nth = 1, 2, ... on fresh contexts. `kmsg`: a kernel log
    watcher (conformance/kmsg.py) whose reports during an attempt are problems of that attempt."""
    result = Sweep(scenario.name)
    if kmsg is not None:
        kmsg.new_reports()
    buf = h.touched(BUF_PAGES)
    for nth in range(1, limit + 1):
        fd = open_fd()
        ctx: dict = {"buf": buf}
        try:
            scenario.setup(fd, ctx)
            before = _state(fd, ctx)
            fail_nth.set(nth)
            try:
                scenario.op(fd, ctx)
                e = 0
            except OSError as ex:
                e = ex.errno
            left = fail_nth.get()
            fail_nth.set(0)
            after = _state(fd, ctx)
        finally:
            fail_nth.set(0)
            for n in ctx.get("close", []):
                os.close(n)
            fd.close()
        for report in kmsg.new_reports() if kmsg is not None else []:
            result.problems.append(f"nth {nth}: kernel report: {report}")
        if left:  # the call met fewer than nth fault points: it ran through
            if e:
                result.problems.append(f"nth {nth}: no fault fired, yet {errno.errorcode.get(e, e)}")
            result.succeeded_at = nth
            return result
        unchanged = before == after
        result.attempts.append(Attempt(nth, e, unchanged))
        # ENOMEM mostly; the selftest kernel's own fault points answer ENOENT, EINVAL, EFAULT
        # (iommufd_should_fail()): which errno is the kernel's to say, compared by `faults --target vm`
        if e and not unchanged:
            result.problems.append(f"nth {nth}: failed with {errno.errorcode.get(e, e)} and changed the state")
    result.problems.append(f"no success within {limit} attempts")
    return result


def run(target: str, names: list[str]) -> list[Sweep]:
    """Sweeps on this process's target: the model, or the kernel's /dev/iommu."""
    if target == "model":
        from model import open_iommufd

        return [sweep(open_iommufd, ModelFailNth(), SCENARIOS[n]) for n in names]
    from conformance.kmsg import KernelLog
    from conformance.targets import KernelFile

    fail_nth = KernelFailNth()
    kmsg = KernelLog()
    return [sweep(KernelFile, fail_nth, SCENARIOS[n], kmsg=kmsg) for n in names]


def compare(model: list[dict], kernel: list[dict]) -> list[str]:
    """Where the model's sweeps differ from the kernel's: per scenario, the first attempt whose
    errno differs, or a different number of fault points."""
    out = []
    for m, k in zip(model, kernel):
        ma = [(a["nth"], a["errno"]) for a in m["attempts"]]
        ka = [(a["nth"], a["errno"]) for a in k["attempts"]]
        if ma != ka or m["succeeded_at"] != k["succeeded_at"]:
            first = next((i for i, (x, y) in enumerate(zip(ma, ka)) if x != y), min(len(ma), len(ka)))
            def name(v):
                return "ok" if v == 0 else errno.errorcode.get(v, str(v))
            out.append(f"{m['scenario']}: model {m['succeeded_at'] - 1} fault points, kernel "
                       f"{k['succeeded_at'] - 1}; first difference at nth {first + 1}: model "
                       f"{name(ma[first][1]) if first < len(ma) else 'ran through'}, kernel "
                       f"{name(ka[first][1]) if first < len(ka) else 'ran through'}")
    return out


def main(argv=None) -> int:
    """Inside a VM (or on any machine with /dev/iommu): the kernel's sweeps as JSON."""
    ap = argparse.ArgumentParser(description="fault-injection sweeps on this machine's /dev/iommu, as JSON")
    ap.add_argument("--target", choices=("model", "kernel"), default="kernel")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args(argv)
    sweeps = run(args.target, args.names or list(SCENARIOS))
    json.dump([asdict(s) for s in sweeps], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
