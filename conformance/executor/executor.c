/* The guest's step executor for `explore --target vm` (conformance/executor/__init__.py).
 *
 * The explorer, hypothesis and the model run on the host; this program runs in the test
 * kernel's guest and makes the kernel's side of each step: open /dev/iommu, ioctl, mmap,
 * munmap, read and close of a descriptor. Requests come over a virtio-serial port, one reply
 * per request, in order, so the host may send several before reading their replies.
 *
 * Memory is described, never shared. The explorer's user buffer (MEM, with its PROT_NONE guard
 * page) is mapped here at the host's own address, and the memfd takes the host's descriptor
 * number, so pointers into MEM and the memfd's number mean the same on both sides. A small
 * argument buffer a struct points to comes with the request and is placed here; its pointer
 * field is patched to the local copy, and its bytes afterwards go back. After every request the
 * pages of MEM and of the memfd that changed are sent back, so the host can compare what the
 * kernel wrote into user memory with what the model wrote.
 *
 * New kernel log records (/dev/kmsg) go back with each reply: the host decides which are
 * reports (conformance/vm.py parse_findings()).
 *
 * OP_REPLAY runs a file of recorded requests back to back with no host in the loop and answers
 * the time it took: the kernel's own speed for the same steps (`bench explore --target vm`).
 *
 * Every number is little-endian; every part of a message is padded to 8 bytes.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

enum {
	OP_HELLO = 1,	/* value: MEM's address, request: MEM's length (guard page after it), fd: the
			 * memfd's number; arg: struct hello */
	OP_OPEN = 2,	/* open /dev/iommu: rc = the descriptor */
	OP_IOCTL = 3,	/* fd, request; arg bytes or, with none, value */
	OP_MMAP = 4,	/* fd, request: length, value: offset, prot, flags: rc = a handle, word */
	OP_MUNMAP = 5,	/* value: the handle */
	OP_READ = 6,	/* fd, request: count; non-blocking: the bytes come back as the arg */
	OP_CLOSE = 7,	/* fd */
	OP_RESET = 8,	/* close every descriptor and mapping the steps made */
	OP_REPLAY = 9,	/* arg: a file of requests; rc = nanoseconds, value: requests run */
	OP_QUIT = 10,
	OP_PAGEMAP = 11,	/* arg: addresses (u64): the frames there, faulted in (0: not shown) */
	OP_OPEN_DEVICE = 12,	/* arg: a PCI address bound to vfio-pci: rc = its cdev's descriptor */
	OP_PREAD = 13,	/* fd, request: count, value: offset: the bytes come back as the arg */
	OP_PWRITE = 14,	/* fd, value: offset, arg: the bytes: rc = bytes written */
};

struct req {
	uint32_t len;		/* the whole message */
	uint16_t op;
	uint16_t nbufs;		/* struct bufdesc + bytes, after the arg */
	int32_t fd;
	uint32_t arg_len;
	uint64_t request;
	uint64_t value;
	int32_t prot;
	int32_t flags;
	uint32_t nmem;		/* struct memw + bytes, after the buffers: the host's own writes */
	uint32_t check;		/* 1: compare user memory afterwards (the step may have written it) */
};

struct bufdesc {
	uint32_t ptr_off;	/* where in the arg the pointer to this buffer is */
	uint32_t len;
};

struct memw {
	uint32_t region;	/* 0: MEM, 1: the memfd */
	uint32_t off;
	uint32_t len;
	uint32_t pad;
};

struct rep {
	uint32_t len;
	int32_t err;
	int64_t rc;
	uint32_t arg_len;
	uint16_t nbufs;
	uint16_t npages;	/* struct page_id + 4096 bytes each: the pages that changed */
	uint32_t kmsg_len;
	uint32_t word;		/* OP_MMAP: the mapping's first u32 */
	uint64_t value;
};

struct page_id {
	uint32_t region;
	uint32_t index;
};

struct hello {
	uint32_t memfd_len;
	uint32_t closed_fd;	/* a number that must name no open file */
	uint64_t caps;		/* the host caller's effective capabilities: this process keeps only those */
	uint64_t memlock;	/* the host caller's RLIMIT_MEMLOCK */
};

#define PAGE 4096
#define PAD8(n) (((n) + 7u) & ~7u)
#define OWN_FD_BASE 900		/* the executor's own descriptors, out of the steps' way */
#define MAX_MAPS 256

static int chan = -1, kmsg = -1, memfd_no = -1;
static uint8_t *regions[2], *snap[2];
static size_t region_len[2];
static struct { void *addr; size_t len; } maps[MAX_MAPS];

struct out {
	uint8_t *p;
	size_t len, cap;
};

static void die(const char *what)
{
	fprintf(stderr, "iommufd executor: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void *put(struct out *o, const void *src, size_t n)
{
	size_t need = o->len + PAD8(n);

	if (need > o->cap) {
		o->cap = need * 2 > 65536 ? need * 2 : 65536;
		o->p = realloc(o->p, o->cap);
		if (!o->p)
			die("realloc");
	}
	void *at = o->p + o->len;
	if (src)
		memcpy(at, src, n);
	memset((uint8_t *)at + n, 0, PAD8(n) - n);
	o->len = need;
	return at;
}

static void read_full(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n) {
		ssize_t got = read(fd, p, n);
		if (got == 0) {
			fprintf(stderr, "iommufd executor: the host closed the channel\n");
			exit(0);
		}
		if (got < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("read");
		}
		p += got;
		n -= got;
	}
}

static void write_full(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	while (n) {
		ssize_t put = write(fd, p, n);
		if (put < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("write");
		}
		p += put;
		n -= put;
	}
}

static int own_fd(int fd)
{
	int moved = fcntl(fd, F_DUPFD_CLOEXEC, OWN_FD_BASE);

	if (moved < 0)
		die("F_DUPFD");
	close(fd);
	return moved;
}

static int open_port(const char *name)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	char path[512], got[128];

	if (!d)
		die("/sys/class/virtio-ports");
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		int ok = fgets(got, sizeof(got), f) && !strncmp(got, name, strlen(name));
		fclose(f);
		if (ok) {
			snprintf(path, sizeof(path), "/dev/%s", e->d_name);
			closedir(d);
			int fd = open(path, O_RDWR);
			if (fd < 0)
				die(path);
			return fd;
		}
	}
	closedir(d);
	errno = ENOENT;
	die(name);
	return -1;
}

/* New /dev/kmsg records since the last call: each record's first line. */
static void take_kmsg(struct out *o, uint32_t *len)
{
	char rec[8192];
	size_t start = o->len;

	*len = 0;
	if (kmsg < 0)
		return;
	for (;;) {
		ssize_t n = read(kmsg, rec, sizeof(rec) - 1);
		if (n < 0 && errno == EPIPE)
			continue;	/* overwritten records: the next ones */
		if (n <= 0)
			break;
		rec[n] = 0;
		char *text = strchr(rec, ';');
		if (!text)
			continue;
		text++;
		size_t l = strcspn(text, "\n");
		text[l] = '\n';
		/* appended without padding; padded once at the end */
		if (o->len + l + 1 + 8 > o->cap) {
			o->cap = (o->len + l + 1 + 8) * 2;
			o->p = realloc(o->p, o->cap);
			if (!o->p)
				die("realloc");
		}
		memcpy(o->p + o->len, text, l + 1);
		o->len += l + 1;
		*len += l + 1;
	}
	size_t padded = PAD8(o->len - start);
	memset(o->p + o->len, 0, start + padded - o->len);
	o->len = start + padded;
}

/* The pages of MEM and of the memfd that changed since the last call, with their bytes. */
static uint16_t changed_pages(struct out *o)
{
	uint16_t n = 0;

	for (uint32_t r = 0; r < 2; r++)
		for (uint32_t i = 0; i < region_len[r] / PAGE; i++) {
			uint8_t *now = regions[r] + (size_t)i * PAGE, *was = snap[r] + (size_t)i * PAGE;
			if (!memcmp(now, was, PAGE))
				continue;
			memcpy(was, now, PAGE);
			struct page_id id = { r, i };
			put(o, &id, sizeof(id));
			put(o, now, PAGE);
			n++;
		}
	return n;
}

static int set_caps(uint64_t keep)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return -1;
	for (int i = 0; i < 2; i++) {
		uint32_t k = (uint32_t)(keep >> (32 * i));
		if ((d[i].effective & k) != k) {
			errno = EPERM;	/* the host has a capability this process lacks */
			return -1;
		}
		d[i].effective &= k;
		d[i].permitted &= k;
		d[i].inheritable &= k;
	}
	return syscall(SYS_capset, &h, d);
}

static int hello(const struct req *r, const uint8_t *arg)
{
	struct hello h;
	size_t mem_len = r->request;

	if (r->arg_len < sizeof(h))
		return EINVAL;
	memcpy(&h, arg, sizeof(h));
	void *want = (void *)(uintptr_t)r->value;
	uint8_t *mem = mmap(want, mem_len + PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			    -1, 0);
	if (mem == MAP_FAILED)
		return errno;
	if (mem != want || mprotect(mem + mem_len, PAGE, PROT_NONE))
		return EEXIST;
	int fd = memfd_create("iommufd-differential", 0);
	if (fd < 0 || ftruncate(fd, h.memfd_len))
		return errno;
	if (fd != r->fd) {
		if (dup2(fd, r->fd) < 0)
			return errno;
		close(fd);
	}
	memfd_no = r->fd;
	uint8_t *file = mmap(NULL, h.memfd_len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_no, 0);
	if (file == MAP_FAILED)
		return errno;
	if (fcntl(h.closed_fd, F_GETFD) >= 0)
		return EBADFD;
	regions[0] = mem, region_len[0] = mem_len;
	regions[1] = file, region_len[1] = h.memfd_len;
	for (int i = 0; i < 2; i++) {
		snap[i] = calloc(1, region_len[i]);
		if (!snap[i])
			return ENOMEM;
	}
	struct rlimit rl = { h.memlock, h.memlock };
	if (setrlimit(RLIMIT_MEMLOCK, &rl))
		return errno;
	if (set_caps(h.caps))
		return errno;
	return 0;
}

/* /dev/vfio/devices/vfioN of the device at PCI address `bdf` (its sysfs vfio-dev/ directory) */
static int open_device(const uint8_t *arg, uint32_t len)
{
	char bdf[64], path[320];
	struct dirent *e;
	DIR *d;

	if (len == 0 || len >= sizeof(bdf) || memchr(arg, '/', len)) {
		errno = EINVAL;
		return -1;
	}
	memcpy(bdf, arg, len);
	bdf[len] = 0;
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev", bdf);
	d = opendir(path);
	if (!d)
		return -1;
	while ((e = readdir(d)) && strncmp(e->d_name, "vfio", 4))
		;
	if (!e) {
		closedir(d);
		errno = ENODEV;
		return -1;
	}
	snprintf(path, sizeof(path), "/dev/vfio/devices/%s", e->d_name);
	closedir(d);
	return open(path, O_RDWR | O_CLOEXEC);
}

static void reset(void)
{
	/* every descriptor between stdio and the executor's own but the memfd */
	for (int fd = 3; fd < OWN_FD_BASE; fd++)
		if (fd != memfd_no)
			close(fd);
	for (int i = 0; i < MAX_MAPS; i++)
		if (maps[i].addr) {
			munmap(maps[i].addr, maps[i].len);
			maps[i].addr = NULL;
		}
}

/* The frames of the pages at the addresses in `vas` (replaced in place), as the model reads
 * its own machine's (model/memory.py machine_pfns()): a page not faulted in is read first, and
 * without CAP_SYS_ADMIN pagemap shows no frame (0). */
static int pagemap(uint8_t *vas, uint32_t n)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return errno;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t va, entry = 0;
		memcpy(&va, vas + 8 * i, 8);
		for (int try = 0; try < 2; try++) {
			if (pread(fd, &entry, 8, va / PAGE * 8) != 8)
				entry = 0;
			if (entry >> 63)
				break;
			/* a read faults the page in, as the kernel's pin would */
			char byte;
			struct iovec local = { &byte, 1 }, remote = { (void *)(uintptr_t)va, 1 };
			if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != 1)
				break;
		}
		uint64_t pfn = entry >> 63 ? entry & ((1ull << 55) - 1) : 0;
		memcpy(vas + 8 * i, &pfn, 8);
	}
	close(fd);
	return 0;
}

/* The host's own writes to MEM and the memfd (after the buffers at `bufs`), into both the
 * memory and its snapshot: they are no change the kernel made. */
static void host_writes(const struct req *r, uint8_t *bufs)
{
	uint8_t *q = bufs;

	for (uint16_t i = 0; i < r->nbufs; i++) {
		struct bufdesc *b = (struct bufdesc *)q;
		q += sizeof(*b) + PAD8(b->len);
	}
	for (uint32_t i = 0; i < r->nmem; i++) {
		struct memw *w = (struct memw *)q;
		if (w->region < 2 && (uint64_t)w->off + w->len <= region_len[w->region]) {
			memcpy(regions[w->region] + w->off, q + sizeof(*w), w->len);
			memcpy(snap[w->region] + w->off, q + sizeof(*w), w->len);
		}
		q += sizeof(*w) + PAD8(w->len);
	}
}

/* One request (header r, payload p) answered into o; `live`: a host waits for the answer. */
static void handle(const struct req *r, uint8_t *p, struct out *o, int live)
{
	struct rep rep = { 0 };
	size_t at = o->len;
	uint8_t *arg = p;
	uint8_t *bufs = arg + PAD8(r->arg_len);

	put(o, NULL, sizeof(rep));
	if (r->op != OP_HELLO)
		host_writes(r, bufs);
	int fd = r->fd;
	errno = 0;
	switch (r->op) {
	case OP_HELLO:
		rep.err = hello(r, arg);
		if (!rep.err)
			host_writes(r, bufs);	/* the host's user memory as it is now */
		break;
	case OP_OPEN:
		rep.rc = open("/dev/iommu", O_RDWR | O_CLOEXEC);
		rep.err = rep.rc < 0 ? errno : 0;
		break;
	case OP_IOCTL: {
		uint64_t saved[64];
		uint8_t *b = bufs;
		/* each described buffer placed here, its pointer field patched to the copy */
		for (uint16_t i = 0; i < r->nbufs && i < 64; i++) {
			struct bufdesc *d = (struct bufdesc *)b;
			uint64_t local = (uintptr_t)(b + sizeof(*d));
			memcpy(&saved[i], arg + d->ptr_off, 8);
			memcpy(arg + d->ptr_off, &local, 8);
			b += sizeof(*d) + PAD8(d->len);
		}
		if (r->arg_len)
			rep.rc = ioctl(fd, r->request, arg);
		else
			rep.rc = ioctl(fd, r->request, (unsigned long)r->value);
		rep.err = rep.rc < 0 ? errno : 0;
		b = bufs;
		for (uint16_t i = 0; i < r->nbufs && i < 64; i++) {
			struct bufdesc *d = (struct bufdesc *)b;
			uint64_t local = (uintptr_t)(b + sizeof(*d)), now;
			memcpy(&now, arg + d->ptr_off, 8);
			if (now == local)	/* the host's address back, unless the kernel wrote there */
				memcpy(arg + d->ptr_off, &saved[i], 8);
			b += sizeof(*d) + PAD8(d->len);
		}
		rep.arg_len = r->arg_len;
		put(o, arg, r->arg_len);
		b = bufs;
		for (uint16_t i = 0; i < r->nbufs; i++) {
			struct bufdesc *d = (struct bufdesc *)b;
			put(o, b + sizeof(*d), d->len);
			b += sizeof(*d) + PAD8(d->len);
		}
		rep.nbufs = r->nbufs;
		break;
	}
	case OP_MMAP: {
		int slot = 0;
		while (slot < MAX_MAPS && maps[slot].addr)
			slot++;
		if (slot == MAX_MAPS) {
			rep.err = ENFILE;
			break;
		}
		void *m = mmap(NULL, r->request, r->prot, r->flags, fd, (off_t)r->value);
		if (m == MAP_FAILED) {
			rep.err = errno;
			break;
		}
		maps[slot].addr = m, maps[slot].len = r->request;
		if (r->prot & PROT_READ)
			memcpy(&rep.word, m, 4);
		rep.rc = slot;
		break;
	}
	case OP_MUNMAP:
		if (r->value < MAX_MAPS && maps[r->value].addr) {
			rep.rc = munmap(maps[r->value].addr, maps[r->value].len);
			rep.err = rep.rc ? errno : 0;
			maps[r->value].addr = NULL;
		} else {
			rep.err = EINVAL;
		}
		break;
	case OP_READ: {
		int fl = fcntl(fd, F_GETFL);
		if (fl >= 0)
			fcntl(fd, F_SETFL, fl | O_NONBLOCK);
		uint8_t *buf = put(o, NULL, r->request);
		ssize_t n = read(fd, buf, r->request);
		rep.err = n < 0 ? errno : 0;
		rep.rc = n;
		o->len = at + PAD8(sizeof(rep)) + PAD8(n > 0 ? n : 0);
		rep.arg_len = n > 0 ? n : 0;
		break;
	}
	case OP_CLOSE:
		rep.rc = close(fd);
		rep.err = rep.rc ? errno : 0;
		break;
	case OP_RESET:
		reset();
		break;
	case OP_OPEN_DEVICE:
		rep.rc = open_device(arg, r->arg_len);
		rep.err = rep.rc < 0 ? errno : 0;
		break;
	case OP_PREAD: {
		uint8_t *buf = put(o, NULL, r->request);
		ssize_t n = pread(fd, buf, r->request, (off_t)r->value);
		rep.err = n < 0 ? errno : 0;
		rep.rc = n;
		o->len = at + PAD8(sizeof(rep)) + PAD8(n > 0 ? n : 0);
		rep.arg_len = n > 0 ? n : 0;
		break;
	}
	case OP_PWRITE:
		rep.rc = pwrite(fd, arg, r->arg_len, (off_t)r->value);
		rep.err = rep.rc < 0 ? errno : 0;
		break;
	case OP_PAGEMAP:
		rep.err = pagemap(arg, r->arg_len / 8);
		rep.arg_len = r->arg_len;
		put(o, arg, r->arg_len);
		break;
	case OP_REPLAY:
		break;	/* answered by main() */
	default:
		rep.err = ENOSYS;
	}
	if (live && r->check)
		rep.npages = changed_pages(o);
	if (live) {
		take_kmsg(o, &rep.kmsg_len);
	}
	rep.len = o->len - at;
	memcpy(o->p + at, &rep, sizeof(rep));
}

static uint8_t *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY);
	struct stat st;

	if (fd < 0 || fstat(fd, &st))
		return NULL;
	uint8_t *buf = malloc(st.st_size + 8);
	size_t got = 0;
	while (buf && got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, st.st_size - got);
		if (n <= 0)
			break;
		got += n;
	}
	close(fd);
	*len = got;
	return buf;
}

/* Recorded requests back to back; answers how long they took and how many ran. */
static void replay(const struct req *r, const uint8_t *arg, struct rep *rep)
{
	char path[4096];
	size_t len, off = 0;
	struct out scratch = { 0 };
	struct timespec t0, t1;

	snprintf(path, sizeof(path), "%.*s", (int)r->arg_len, (const char *)arg);
	uint8_t *all = read_file(path, &len);
	if (!all) {
		rep->err = errno ? errno : EIO;
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (off + sizeof(struct req) <= len) {
		struct req *q = (struct req *)(all + off);
		if (q->len < sizeof(*q) || off + q->len > len)
			break;
		scratch.len = 0;
		handle(q, all + off + sizeof(*q), &scratch, 0);
		off += q->len;
		rep->value++;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	rep->rc = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
	reset();
	free(all);
	free(scratch.p);
}

int main(int argc, char **argv)
{
	struct out o = { 0 };
	uint8_t *msg = NULL;
	size_t cap = 0;

	/* the port's name, or --fd N: an inherited descriptor (the host's tool tests) */
	if (argc > 2 && !strcmp(argv[1], "--fd"))
		chan = own_fd(atoi(argv[2]));
	else
		chan = own_fd(open_port(argc > 1 ? argv[1] : "iommufd.executor"));
	kmsg = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (kmsg >= 0) {
		lseek(kmsg, 0, SEEK_END);
		kmsg = own_fd(kmsg);
	}
	/* ready: one reply with nothing in it */
	struct rep ready = { .len = sizeof(struct rep) };
	write_full(chan, &ready, sizeof(ready));
	for (;;) {
		struct req r;
		read_full(chan, &r, sizeof(r));
		if (r.len < sizeof(r)) {
			fprintf(stderr, "iommufd executor: a message of %u bytes\n", r.len);
			return 2;
		}
		if (r.len - sizeof(r) > cap) {
			cap = r.len;
			msg = realloc(msg, cap);
			if (!msg)
				die("realloc");
		}
		read_full(chan, msg, r.len - sizeof(r));
		if (r.op == OP_QUIT)
			return 0;
		o.len = 0;
		handle(&r, msg, &o, 1);
		if (r.op == OP_REPLAY) {
			struct rep *rep = (struct rep *)o.p;
			replay(&r, msg, rep);
		}
		write_full(chan, o.p, o.len);
	}
}
