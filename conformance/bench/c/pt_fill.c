/*
 * The per-format C baseline of `iommufd-conformance bench pagetable`: a 4-level radix page table
 * of 4 KiB tables (512 eight-byte entries) in one of generic_pt's formats, walked the way
 * generic_pt's iterator walks it (drivers/iommu/generic_pt/pt_iter.h pt_walk_range(),
 * iommu_pt.h __map_range() / __unmap_range()): each level visits the run of its items the range
 * covers and descends once per item, so a leaf table is entered once and its run of PTEs filled
 * in one loop (not one walk from the top per PTE, as pt_walk.c does). Unmap clears the runs and
 * frees every table whose whole span it covered, as generic_pt does. Lookups are one walk each,
 * over an array of IOVAs (iova_to_phys, batched as the numba table's iova_to_phys_many()).
 *
 * Usage: pt_fill FORMAT N M [ROUNDS]: FORMAT amdv1, vtdss or x86_64 (the entry encodings of
 * fmt/amdv1.h, fmt/vtdss.h, fmt/x86_64.h, as model/pt/fmt/ has them: 4 KiB leaves, read+write);
 * maps N pages of 4 KiB at IOVA 2^32 to PA 2^33 in one range, looks up M random IOVAs, unmaps
 * the range; best of ROUNDS (default 3). Prints JSON. Built by the benchmark with gcc -O2.
 *
 * Table memory is allocated as the numba table's is, so that both sides pay the same page faults
 * (they dominate a bulk map: with one posix_memalign() per table, faulting each 4 KiB page in,
 * this loop maps 10 times slower than from pre-faulted memory): one zeroed arena sized up front
 * for every table the range can need (model/pt/table.py _reserve() grows one numpy array the
 * same way), advised MADV_HUGEPAGE from 4 MiB as numpy's allocator advises its arrays, tables
 * handed out in order and freed to a free list, every table zeroed as it is handed out. Entries
 * hold the tables' addresses (user addresses are below 2^47: inside every format's 51:12 field).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef uint64_t u64;

#define ITEMS 512
#define TOP_LEVEL 3
#define OA_MASK 0x000ffffffffff000ull /* GENMASK_ULL(51, 12), all three formats */

enum fmt { AMDV1, VTDSS, X86_64 };
static enum fmt fmt;
static long ntables;

/* amdv1.h: PR 0, NextLevel 11:9, IR 61, IW 62 */
#define AMD_PR (1ull << 0)
#define AMD_NL_SHIFT 9
#define AMD_IR (1ull << 61)
#define AMD_IW (1ull << 62)
/* vtdss.h: R 0, W 1, PS 7 */
#define SS_R (1ull << 0)
#define SS_W (1ull << 1)
#define SS_PS (1ull << 7)
/* x86_64.h: P 0, RW 1, U 2, A 5, D 6, PS 7 */
#define X_P (1ull << 0)
#define X_RW (1ull << 1)
#define X_U (1ull << 2)
#define X_A (1ull << 5)
#define X_D (1ull << 6)
#define X_PS (1ull << 7)

static inline int present(u64 e)
{
	return fmt == VTDSS ? e != 0 : (int)(e & 1);
}

/* pt_load_entry_raw(): a present entry above level 0 is a table unless it is a leaf */
static inline int is_table(u64 e, int level)
{
	if (level == 0)
		return 0;
	switch (fmt) {
	case AMDV1: {
		unsigned nl = (e >> AMD_NL_SHIFT) & 7;
		return nl != 0 && nl != 7;
	}
	case VTDSS:
		return !(level <= 2 && (e & SS_PS));
	default:
		return !(level <= 2 && (e & X_PS));
	}
}

/* pt_install_leaf_entry() of a read+write 4 KiB page */
static inline u64 leaf_entry(u64 pa)
{
	switch (fmt) {
	case AMDV1:
		return (pa & OA_MASK) | AMD_PR | AMD_IR | AMD_IW;
	case VTDSS:
		return (pa & OA_MASK) | SS_R | SS_W;
	default:
		return (pa & OA_MASK) | X_P | X_RW | X_U | X_A | X_D;
	}
}

/* pt_install_table() */
static inline u64 table_entry(const u64 *t, int level)
{
	u64 pa = (u64)(uintptr_t)t & OA_MASK;

	switch (fmt) {
	case AMDV1:
		return pa | AMD_PR | ((u64)level << AMD_NL_SHIFT) | AMD_IR | AMD_IW;
	case VTDSS:
		return pa | SS_R | SS_W;
	default:
		return pa | X_P | X_RW | X_U | X_A;
	}
}

static inline u64 *table_of(u64 e)
{
	return (u64 *)(uintptr_t)(e & OA_MASK);
}

static char *arena;
static long arena_cap, arena_used, nfree;
static u64 **freelist;

static int arena_init(long cap)
{
	size_t size = (size_t)cap * 4096;

	if (posix_memalign((void **)&arena, 4096, size))
		return -1;
	if (size >= (4u << 20)) /* numpy's default allocator: madvise(MADV_HUGEPAGE) from 4 MiB */
		madvise(arena, size, MADV_HUGEPAGE);
	freelist = malloc(cap * sizeof(*freelist));
	arena_cap = cap;
	arena_used = nfree = 0;
	return freelist ? 0 : -1;
}

static void arena_fini(void)
{
	free(arena);
	free(freelist);
}

static u64 *alloc_table(void)
{
	u64 *t;

	if (nfree)
		t = freelist[--nfree];
	else if (arena_used < arena_cap)
		t = (u64 *)(arena + 4096 * arena_used++);
	else
		return NULL;
	memset(t, 0, 4096);
	ntables++;
	return t;
}

static void free_table(u64 *t)
{
	freelist[nfree++] = t;
	ntables--;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The items of this table [va, last] covers: first index, last index, the table's base IOVA. */
static inline void span(int level, u64 va, u64 last, unsigned *idx, unsigned *end, u64 *base)
{
	unsigned isz = 12 + 9 * level;
	u64 b = va & ~((1ull << (isz + 9)) - 1);
	u64 e = (last - b) >> isz;

	*base = b;
	*idx = (va >> isz) & (ITEMS - 1);
	*end = e > ITEMS - 1 ? ITEMS - 1 : (unsigned)e;
}

/* __map_range(): descend into (or make) each table item; fill the leaf table's run. */
static int map_level(u64 *t, int level, u64 va, u64 last, u64 *oa)
{
	unsigned idx, end, isz = 12 + 9 * level;
	u64 base;

	span(level, va, last, &idx, &end, &base);
	if (level == 0) {
		u64 pa = *oa;

		for (; idx <= end; idx++, pa += 4096) {
			if (present(t[idx]))
				return -EADDRINUSE;
			t[idx] = leaf_entry(pa);
		}
		*oa = pa;
		return 0;
	}
	for (; idx <= end; idx++) {
		u64 e = t[idx], *child;
		u64 cva = base + ((u64)idx << isz), clast = cva + (1ull << isz) - 1;
		int ret;

		if (!present(e)) {
			child = alloc_table();
			if (!child)
				return -ENOMEM;
			t[idx] = table_entry(child, level);
		} else if (!is_table(e, level)) {
			return -EADDRINUSE;
		} else {
			child = table_of(e);
		}
		ret = map_level(child, level - 1, cva < va ? va : cva, clast > last ? last : clast, oa);
		if (ret)
			return ret;
	}
	return 0;
}

static int hole;

/* __unmap_range(): clear the leaves' run; free a table whose whole span went. Stops at a hole. */
static u64 unmap_level(u64 *t, int level, u64 va, u64 last)
{
	unsigned idx, end, isz = 12 + 9 * level;
	u64 base, n = 0;

	span(level, va, last, &idx, &end, &base);
	for (; idx <= end; idx++) {
		u64 e = t[idx];
		u64 cva = base + ((u64)idx << isz), clast = cva + (1ull << isz) - 1;

		if (!present(e)) {
			hole = 1;
			return n;
		}
		if (!is_table(e, level)) {
			t[idx] = 0;
			n += 1ull << isz;
			continue;
		}
		n += unmap_level(table_of(e), level - 1, cva < va ? va : cva, clast > last ? last : clast);
		if (hole)
			return n;
		if (va <= cva && clast <= last) {
			t[idx] = 0;
			free_table(table_of(e));
		}
	}
	return n;
}

static void free_tree(u64 *t, int level)
{
	for (unsigned i = 0; level > 0 && i < ITEMS; i++)
		if (present(t[i]) && is_table(t[i], level))
			free_tree(table_of(t[i]), level - 1);
	free_table(t);
}

/* iova_to_phys() */
static inline u64 lookup(const u64 *t, u64 va)
{
	for (int level = TOP_LEVEL;; level--) {
		unsigned isz = 12 + 9 * level;
		u64 e = t[(va >> isz) & (ITEMS - 1)];

		if (!present(e))
			return 0;
		if (!is_table(e, level))
			return (e & OA_MASK & ~((1ull << isz) - 1)) | (va & ((1ull << isz) - 1));
		t = table_of(e);
	}
}

int main(int argc, char **argv)
{
	const u64 base = 1ull << 32, pa_base = 1ull << 33;
	double best_map = 0, best_unmap = 0, best_lookup = 0, bytes_per_page = 0;
	long n, m, rounds;
	u64 *vas, *pas, x = 88172645463325252ull, sum = 0, want = 0;

	if (argc < 4) {
		fprintf(stderr, "usage: %s amdv1|vtdss|x86_64 N M [ROUNDS]\n", argv[0]);
		return 2;
	}
	if (!strcmp(argv[1], "amdv1"))
		fmt = AMDV1;
	else if (!strcmp(argv[1], "vtdss"))
		fmt = VTDSS;
	else if (!strcmp(argv[1], "x86_64"))
		fmt = X86_64;
	else {
		fprintf(stderr, "unknown format %s\n", argv[1]);
		return 2;
	}
	n = atol(argv[2]);
	m = atol(argv[3]);
	rounds = argc > 4 ? atol(argv[4]) : 3;
	vas = malloc(m * sizeof(*vas));
	pas = malloc(m * sizeof(*pas));
	for (long i = 0; i < m; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		vas[i] = base + ((x % n) << 12) + (x & 0xfff);
		want += vas[i] - base + pa_base;
	}
	for (long r = 0; r < rounds; r++) {
		u64 *top, oa = pa_base, last = base + ((u64)n << 12) - 1;
		long need = 1;
		double t0, t;

		for (int level = 1; level <= TOP_LEVEL; level++) /* the tables below each level's items */
			need += (long)((last >> (12 + 9 * level)) - (base >> (12 + 9 * level))) + 1;
		if (arena_init(need))
			return 6;
		ntables = 0;
		top = alloc_table();
		t0 = now();
		if (map_level(top, TOP_LEVEL, base, last, &oa))
			return 1;
		t = now() - t0;
		if (n / t > best_map)
			best_map = n / t;
		bytes_per_page = ntables * 4096.0 / n;
		t0 = now();
		for (long i = 0; i < m; i++)
			pas[i] = lookup(top, vas[i]);
		t = now() - t0;
		if (m / t > best_lookup)
			best_lookup = m / t;
		sum = 0;
		for (long i = 0; i < m; i++)
			sum += pas[i];
		if (sum != want)
			return 3;
		hole = 0;
		t0 = now();
		if (unmap_level(top, TOP_LEVEL, base, last) != (u64)n << 12)
			return 4;
		t = now() - t0;
		if (n / t > best_unmap)
			best_unmap = n / t;
		free_tree(top, TOP_LEVEL); /* what the range did not cover whole (the level-2 table) */
		if (ntables != 0)
			return 5;
		arena_fini();
	}
	printf("{\"map_pte_per_s\": %.1f, \"unmap_pte_per_s\": %.1f, \"lookup_per_s\": %.1f, "
	       "\"bytes_per_page\": %.3f, \"checksum\": %llu}\n",
	       best_map, best_unmap, best_lookup, bytes_per_page, (unsigned long long)sum);
	return 0;
}
