"""Kernel reports (WARNING, BUG, oops, KASAN, ...) as they happen, from /dev/kmsg, so that each
is attributed to what was running: a test (the pytest plugin), an explore step, a sweep attempt.

A watcher opens /dev/kmsg at its end; new_reports() reads the records logged since the last call
and returns the reports among them (conformance/vm.py parse_findings(), the same rules as for a
VM's console). Where /dev/kmsg cannot be read (not root, no kernel target) it reports nothing.

A test that makes a device DMA where the IOMMU must block it expects the IOMMU's fault report:
inside expecting_iommu_faults() such reports are collected for the test to check instead of
failing it, and markers written to the log tell the VM's console reader the same.
"""
from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from typing import Iterator

from conformance.vm import EXPECT_BEGIN, EXPECT_END, parse_findings


class KernelLog:
    def __init__(self, path: str = "/dev/kmsg"):
        self.path = path
        self._expecting = False
        self._pending: list[str] = []  # reports read while collecting faults, for new_reports()
        self.faults: list[str] = []  # IOMMU faults logged while they were expected
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = -1

    def new_reports(self) -> list[str]:
        """The kernel reports logged since the last call (each as parse_findings() gives it)."""
        self._read()
        out, self._pending = self._pending, []
        return out

    def _read(self) -> None:
        if self.fd < 0:
            return
        lines = []
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten records: go on with the next ones
                    continue
                break  # EAGAIN: nothing more
            if not rec:
                break
            # "prio,seq,usec,flags;message\n continuation lines": the message text
            head, _, text = rec.decode(errors="replace").partition(";")
            lines.append(text.rstrip("\n").split("\n")[0])
        if lines:
            self._pending += parse_findings("\n".join(lines), faults=self.faults, expecting=self._expecting)

    def _mark(self, text: str) -> None:
        """A record of our own, at KERN_INFO, for whoever reads the whole log afterwards (the VM's
        console reader); a user who may read the log but not write it goes without."""
        try:
            with open(self.path, "w") as f:
                f.write(f"<6>{text}\n")
        except OSError:
            pass

    @contextmanager
    def expecting_iommu_faults(self, label: str) -> Iterator["KernelLog"]:
        """IOMMU fault reports logged inside are expected (collected in .faults, see
        iommu_faults()); any other report still counts."""
        self._read()
        self.faults = []
        self._mark(EXPECT_BEGIN + label)
        self._expecting = True
        try:
            yield self
        finally:
            self._read()
            self._mark(EXPECT_END)
            self._expecting = False

    def iommu_faults(self, at_least: int = 1, timeout: float = 3.0) -> list[str]:
        """The expected IOMMU faults logged so far, waiting up to `timeout` seconds for
        `at_least` of them (the fault interrupt is handled after the DMA that caused it)."""
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            if len(self.faults) >= at_least or time.monotonic() > deadline:
                return list(self.faults)
            time.sleep(0.05)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
