"""Kernel reports (WARNING, BUG, oops, KASAN, ...) as they happen, from /dev/kmsg, so that each
is attributed to what was running: a test (the pytest plugin), an explore step, a sweep attempt.

A watcher opens /dev/kmsg at its end; new_reports() reads the records logged since the last call
and returns the reports among them (conformance/vm.py parse_findings(), the same rules as for a
VM's console). Where /dev/kmsg cannot be read (not root, no kernel target) it reports nothing.
"""
from __future__ import annotations

import errno
import os

from conformance.vm import parse_findings


class KernelLog:
    def __init__(self, path: str = "/dev/kmsg"):
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = -1

    @property
    def available(self) -> bool:
        return self.fd >= 0

    def new_reports(self) -> list[str]:
        """The kernel reports logged since the last call (each as parse_findings() gives it)."""
        if self.fd < 0:
            return []
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
        return parse_findings("\n".join(lines)) if lines else []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
