/*
 * The C baseline of `iommufd-conformance bench dma`: what an IOMMU and a DMA engine do for a
 * device's transfer, done as fast as C does it. A VT-d second-stage table (fmt/vtdss.h entries:
 * R 0, W 1, PS 7, address 51:12; 4 KiB tables of 512 entries, 4 levels) maps a buffer with 4 KiB
 * leaves or 2 MiB leaves (PS at level 1); each transfer of SIZE bytes walks the table from the
 * top for every page it touches (no IOTLB, as the model's walk has none), checks the permission
 * and copies the bytes between the buffer and the device's own buffer with memcpy, as QEMU's
 * address_space_rw() does once it has translated.
 *
 * Usage: dma_copy LEAF_KB BUFFER_MB SIZE TRANSFERS: LEAF_KB 4 or 2048. Prints JSON: bytes per
 * second device-to-memory (write) and memory-to-device (read). Built with gcc -O2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef uint64_t u64;
#define ITEMS 512
#define SS_R (1ull << 0)
#define SS_W (1ull << 1)
#define SS_PS (1ull << 7)
#define OA_MASK 0x000ffffffffff000ull

static u64 *new_table(void)
{
	u64 *t = aligned_alloc(4096, 4096);
	if (!t) {
		perror("aligned_alloc");
		exit(1);
	}
	memset(t, 0, 4096);
	return t;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static u64 *top;

/* one leaf at `level` (0: 4 KiB, 1: 2 MiB) mapping iova to pa, read and write */
static void map_one(u64 iova, u64 pa, int level)
{
	u64 *t = top;
	for (int l = 3; l > level; l--) {
		u64 *e = &t[(iova >> (12 + 9 * l)) & (ITEMS - 1)];
		if (!*e)
			*e = (u64)(uintptr_t)new_table() | SS_R | SS_W;
		t = (u64 *)(uintptr_t)(*e & OA_MASK);
	}
	t[(iova >> (12 + 9 * level)) & (ITEMS - 1)] = (pa & OA_MASK) | SS_R | SS_W | (level ? SS_PS : 0);
}

/* the walk: the address iova translates to, 0 when not mapped or without the permission */
static inline uintptr_t translate(u64 iova, int write)
{
	u64 *t = top;
	for (int l = 3; l >= 0; l--) {
		u64 e = t[(iova >> (12 + 9 * l)) & (ITEMS - 1)];
		if (!(e & (SS_R | SS_W)))
			return 0;
		if (l == 0 || (e & SS_PS)) {
			if (!(e & (write ? SS_W : SS_R)))
				return 0;
			u64 span = 1ull << (12 + 9 * l);
			return (uintptr_t)((e & OA_MASK & ~(span - 1)) | (iova & (span - 1)));
		}
		t = (u64 *)(uintptr_t)(e & OA_MASK);
	}
	return 0;
}

/* one transfer between device buffer `dev` and IOVA iova, page by page */
static int transfer(u64 iova, uint8_t *dev, size_t n, int to_memory)
{
	while (n) {
		size_t chunk = 4096 - (iova & 4095);
		if (chunk > n)
			chunk = n;
		uintptr_t p = translate(iova, to_memory);
		if (!p)
			return -1;
		if (to_memory)
			memcpy((void *)p, dev, chunk);
		else
			memcpy(dev, (void *)p, chunk);
		iova += chunk, dev += chunk, n -= chunk;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s LEAF_KB BUFFER_MB SIZE TRANSFERS\n", argv[0]);
		return 2;
	}
	long leaf_kb = atol(argv[1]), mb = atol(argv[2]), size = atol(argv[3]), count = atol(argv[4]);
	int level = leaf_kb == 2048 ? 1 : 0;
	size_t leaf = (size_t)leaf_kb << 10, len = (size_t)mb << 20;
	uint8_t *buf = aligned_alloc(2 << 20, len), dev[65536];
	const u64 base = 1ull << 32;
	if (!buf || size <= 0 || size > (long)sizeof(dev) || len < leaf || (leaf != 4096 && leaf != (2 << 20))) {
		fprintf(stderr, "bad arguments\n");
		return 2;
	}
	memset(buf, 1, len);
	memset(dev, 2, sizeof(dev));
	top = new_table();
	for (size_t off = 0; off < len; off += leaf)
		map_one(base + off, (u64)(uintptr_t)buf + off, level);
	size_t slots = len / size;
	double best[2] = { 1e30, 1e30 };
	for (int round = 0; round < 3; round++) {
		for (int dir = 0; dir < 2; dir++) {
			double t0 = now();
			for (long i = 0; i < count; i++)
				if (transfer(base + (i % slots) * size, dev, size, dir)) {
					fprintf(stderr, "unmapped\n");
					return 1;
				}
			double t = now() - t0;
			if (t < best[dir])
				best[dir] = t;
		}
	}
	printf("{\"read_bytes_per_s\": %.1f, \"write_bytes_per_s\": %.1f, \"check\": %d}\n",
	       count * size / best[0], count * size / best[1], buf[len - 1] + dev[0]);
	return 0;
}
