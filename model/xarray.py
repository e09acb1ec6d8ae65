"""Where an xarray allocates (lib/xarray.c): its nodes, so that fault injection meets the same
allocations as the kernel's xa_alloc()/xa_store() of the context's object IDs.

An xarray is a radix tree of 64-slot nodes (XA_CHUNK_SHIFT 6); an entry at index 0 alone
lives in the head with no node. Storing at an index needs every node on its path: when the
index is past what the tree's height covers, xas_expand() adds one node per new level on top;
xas_create() then allocates each missing node down to the leaf. Each allocation is first tried
with GFP_NOWAIT under the lock (xas_alloc()); when that fails, xas_nomem() allocates one node
with the caller's gfp outside the lock and the operation is retried (the nodes already linked
in stay). Erasing frees each node left empty (xas_delete_node()) and then shrinks the top while
the root's only child is in its slot 0 (xas_shrink()).
"""
from __future__ import annotations

from model import fault_inject

XA_CHUNK_SHIFT = 6
XA_CHUNK_SIZE = 1 << XA_CHUNK_SHIFT


def _top_shift(index: int) -> int:
    """The shift of the root a tree needs to hold `index` (0 for 0..63)."""
    shift = 0
    while index >> (shift + XA_CHUNK_SHIFT):
        shift += XA_CHUNK_SHIFT
    return shift


class XaNodes:
    """The nodes of one xarray, as (shift, index >> (shift + 6)) pairs, and its entries."""

    def __init__(self, site: str):
        self.site = site  # the kernel call that stores (named in fault-injection traces)
        self.nodes: set[tuple[int, int]] = set()
        self.entries: set[int] = set()
        self.root: int | None = None  # the root node's shift; None: no node (empty, or index 0 only)

    def _alloc_node(self) -> None:
        """xas_alloc() with GFP_NOWAIT, else xas_nomem() with the caller's gfp: ENOMEM only
        when both fail."""
        if fault_inject.should_fail(f"{self.site}: xas_alloc GFP_NOWAIT"):
            fault_inject.kmalloc(f"{self.site}: xas_nomem")

    def store(self, index: int) -> None:
        """xas_store() of a new entry at `index` (ENOMEM when a node cannot be had; nodes
        already allocated stay in the tree, as the kernel's do)."""
        if index in self.entries:
            return
        need = _top_shift(index)
        if self.root is None and not self.entries and index == 0:
            self.entries.add(0)  # the head holds it
            return
        if self.root is None and 0 in self.entries:
            # xas_expand() of a head holding index 0: a first node takes it into slot 0
            self._alloc_node()
            self.nodes.add((0, 0))
            self.root = 0
        if self.root is None:  # an empty head: xas_create() builds the path from the top
            start = need
        else:
            start = self.root
            while start < need:  # xas_expand(): one node per level added on top
                self._alloc_node()
                start += XA_CHUNK_SHIFT
                self.nodes.add((start, 0))
                self.root = start
        for shift in range(start, -1, -XA_CHUNK_SHIFT):
            key = (shift, index >> (shift + XA_CHUNK_SHIFT))
            if key not in self.nodes:
                self._alloc_node()
                self.nodes.add(key)
                if self.root is None or shift > self.root:
                    self.root = shift
        self.entries.add(index)

    def _children(self, shift: int, prefix: int) -> list[int]:
        """The occupied slots of a node."""
        if shift == 0:
            return [i & (XA_CHUNK_SIZE - 1) for i in self.entries if i >> XA_CHUNK_SHIFT == prefix]
        return [p & (XA_CHUNK_SIZE - 1) for s, p in self.nodes
                if s == shift - XA_CHUNK_SHIFT and p >> XA_CHUNK_SHIFT == prefix]

    def erase(self, index: int) -> None:
        """xas_store(NULL): free the nodes left empty up the path, then shrink the top."""
        if index not in self.entries:
            return
        self.entries.discard(index)
        if self.root is None:
            return
        for shift in range(0, self.root + 1, XA_CHUNK_SHIFT):
            key = (shift, index >> (shift + XA_CHUNK_SHIFT))
            if key in self.nodes and not self._children(*key):
                self.nodes.discard(key)
            else:
                break
        while self.root is not None:
            if (self.root, 0) not in self.nodes:
                self.root = None if not self.nodes else max(s for s, _ in self.nodes)
                continue
            slots = self._children(self.root, 0)
            if slots != [0]:
                break
            if self.root == 0:  # only index 0 left: back into the head
                self.nodes.discard((0, 0))
                self.root = None
                break
            self.nodes.discard((self.root, 0))
            self.root -= XA_CHUNK_SHIFT
