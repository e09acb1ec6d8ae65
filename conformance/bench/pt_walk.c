/*
 * The C baseline of `iommufd-conformance bench pagetable`: a plain 4-level radix page table
 * (512 eight-byte entries per 4 KiB table, 4 KiB leaves, AMDv1-like present/address bits),
 * compiled by the benchmark with gcc -O2. It maps N pages one PTE each, looks up M random IOVAs,
 * unmaps the N pages, and prints its figures as JSON.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define LEVELS 4
#define ITEMS 512
#define PR 1ull
#define OA_MASK 0x000ffffffffff000ull

typedef struct table { uint64_t e[ITEMS]; } table_t;
static long ntables;

static table_t *new_table(void) { ntables++; return calloc(1, sizeof(table_t)); }

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Tables are linked through a side array: the entry holds a table number as its "address". */
static table_t **tabs;
static long ntabs_cap;

static uint64_t link_table(table_t *t)
{
	if (ntables >= ntabs_cap) {
		ntabs_cap = ntabs_cap ? 2 * ntabs_cap : 1024;
		tabs = realloc(tabs, ntabs_cap * sizeof(*tabs));
	}
	tabs[ntables] = t;
	return ((uint64_t)ntables << 12) | PR;
}

static int map_page(table_t *top, uint64_t va, uint64_t pa)
{
	table_t *t = top;
	for (int lvl = LEVELS - 1; lvl > 0; lvl--) {
		unsigned idx = (va >> (12 + 9 * lvl)) & (ITEMS - 1);
		uint64_t e = t->e[idx];
		if (!(e & PR)) {
			table_t *n = new_table();
			e = link_table(n);
			t->e[idx] = e;
		}
		t = tabs[(e & OA_MASK) >> 12];
	}
	unsigned idx = (va >> 12) & (ITEMS - 1);
	if (t->e[idx] & PR)
		return -1;
	t->e[idx] = (pa & OA_MASK) | PR | (3ull << 61);
	return 0;
}

static uint64_t lookup(table_t *top, uint64_t va)
{
	table_t *t = top;
	for (int lvl = LEVELS - 1; lvl > 0; lvl--) {
		uint64_t e = t->e[(va >> (12 + 9 * lvl)) & (ITEMS - 1)];
		if (!(e & PR))
			return 0;
		t = tabs[(e & OA_MASK) >> 12];
	}
	uint64_t e = t->e[(va >> 12) & (ITEMS - 1)];
	return (e & PR) ? (e & OA_MASK) | (va & 0xfff) : 0;
}

static int unmap_page(table_t *top, uint64_t va)
{
	table_t *t = top;
	for (int lvl = LEVELS - 1; lvl > 0; lvl--) {
		uint64_t e = t->e[(va >> (12 + 9 * lvl)) & (ITEMS - 1)];
		if (!(e & PR))
			return -1;
		t = tabs[(e & OA_MASK) >> 12];
	}
	t->e[(va >> 12) & (ITEMS - 1)] = 0;
	return 0;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1 << 20;
	long m = argc > 2 ? atol(argv[2]) : 1 << 20;
	uint64_t base = 1ull << 32;
	ntables = 0;
	link_table(NULL); /* number 0 stays unused */
	ntables = 0;
	table_t *top = new_table();
	double t0 = now();
	for (long i = 0; i < n; i++)
		if (map_page(top, base + (i << 12), (1ull << 33) + (i << 12)))
			return 1;
	double t_map = now() - t0;
	long tables = ntables;
	uint64_t *vas = malloc(m * sizeof(*vas)), x = 88172645463325252ull, sum = 0;
	for (long i = 0; i < m; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		vas[i] = base + ((x % n) << 12) + (x & 0xfff);
	}
	t0 = now();
	for (long i = 0; i < m; i++)
		sum += lookup(top, vas[i]);
	double t_lookup = now() - t0;
	t0 = now();
	for (long i = 0; i < n; i++)
		if (unmap_page(top, base + (i << 12)))
			return 2;
	double t_unmap = now() - t0;
	printf("{\"map_pte_per_s\": %.1f, \"unmap_pte_per_s\": %.1f, \"lookup_per_s\": %.1f, "
	       "\"bytes_per_page\": %.3f, \"checksum\": %llu}\n",
	       n / t_map, n / t_unmap, m / t_lookup, tables * 4096.0 / n, (unsigned long long)sum);
	return 0;
}
