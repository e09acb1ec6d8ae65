/*
 * LD_PRELOAD library of iommufd-conformance: a program's open("/dev/iommu") is connected to
 * the model server (`iommufd-conformance serve` / `exec`), and its iommufd ioctls on that
 * descriptor are carried to the server, which reads and writes this process's memory where the
 * kernel would copy_from_user / copy_to_user (process_vm_readv / process_vm_writev).
 *
 * Wire format (SOCK_SEQPACKET messages, see conformance/server.py):
 *   ioctl:   u32 op = 1, u32 zero, u64 request, u64 arg
 *   mmap:    u32 op = 2, u32 zero, u64 start (reserved here first), u64 length, u64 offset,
 *            s32 prot, s32 flags
 *   replies: s64 rc, s32 errno, u32 kind. kind 0 ends the call; before it the server may send
 *            1 (a descriptor in SCM_RIGHTS to install, rc = 1 for close-on-exec; answered with
 *            op 3 and the new number or -errno), 2 (close descriptor rc, installed during this
 *            call) or 3 (rc pieces {u64 addr, len, offset; u32 memfd index} to map shared and
 *            fixed, their memfds in SCM_RIGHTS).
 * munmap() needs nothing: the server counts the caller's mappings in /proc/PID/maps.
 * The server learns the caller's pid from each message (SO_PASSCRED), so a child after fork()
 * uses the same file with its own memory, as on Linux. dup(), dup2(), dup3() and
 * fcntl(F_DUPFD...) of a served descriptor give a served one.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FDS 4096
#define IOMMUFD_TYPE ';' /* include/uapi/linux/iommufd.h; VFIO_TYPE is the same */

struct preload_req {
	uint32_t op;
	uint32_t zero;
	uint64_t request;
	uint64_t arg;
};

struct preload_mmap_req {
	uint32_t op;
	uint32_t zero;
	uint64_t start;
	uint64_t length;
	uint64_t offset;
	int32_t prot;
	int32_t flags;
};

struct preload_rep {
	int64_t rc;
	int32_t err;
	uint32_t kind;
};

struct preload_piece {
	uint64_t addr;
	uint64_t len;
	uint64_t offset;
	uint32_t fd_index;
	uint32_t pad;
};

enum { KIND_DONE, KIND_INSTALL, KIND_CLOSE, KIND_PIECES };
#define MAX_PIECES 64

static unsigned char served[MAX_FDS]; /* fds connected to the server */

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

static int real_close(int fd)
{
	return ((int (*)(int))next("close"))(fd);
}

__attribute__((constructor)) static void preload_init(void)
{
	/* Yama's ptrace_scope 1: let the server (maybe not our ancestor) read our memory */
	prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
}

static int is_iommu(const char *path)
{
	return path && strcmp(path, "/dev/iommu") == 0;
}

static int connect_server(int flags)
{
	const char *path = getenv("IOMMUFD_CONFORMANCE_SERVER");
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd;

	if (!path || strlen(path) >= sizeof(sun.sun_path)) {
		errno = ENOENT;
		return -1;
	}
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | ((flags & O_CLOEXEC) ? SOCK_CLOEXEC : 0), 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		int e = errno;

		real_close(fd);
		errno = e;
		return -1;
	}
	if (fd < MAX_FDS)
		served[fd] = 1;
	return fd;
}

#define OPEN_LIKE(name, ...)                                                   \
	int name(__VA_ARGS__, int flags, ...)                                  \
	{                                                                      \
		mode_t mode = 0;                                               \
		if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {  \
			va_list ap;                                            \
			va_start(ap, flags);                                   \
			mode = va_arg(ap, mode_t);                             \
			va_end(ap);                                            \
		}                                                              \
		if (is_iommu(path))                                            \
			return connect_server(flags);

OPEN_LIKE(open, const char *path)
	return ((int (*)(const char *, int, mode_t))next("open"))(path, flags, mode);
}

OPEN_LIKE(open64, const char *path)
	return ((int (*)(const char *, int, mode_t))next("open64"))(path, flags, mode);
}

OPEN_LIKE(openat, int dirfd, const char *path)
	return ((int (*)(int, const char *, int, mode_t))next("openat"))(dirfd, path, flags, mode);
}

OPEN_LIKE(openat64, int dirfd, const char *path)
	return ((int (*)(int, const char *, int, mode_t))next("openat64"))(dirfd, path, flags, mode);
}

/*
 * Send one request and serve the server's messages until the call's end: descriptors to
 * install (the model's access, fault and vEVENTQ files), descriptors to take back, pieces of
 * an mmap to map. -1 with errno EIO when the server is gone or speaks nonsense.
 */
static int64_t call_server(int fd, const void *req, size_t len, int prot)
{
	for (ssize_t n = send(fd, req, len, MSG_NOSIGNAL); n == (ssize_t)len;) {
		struct {
			struct preload_rep rep;
			struct preload_piece pieces[MAX_PIECES];
		} buf;
		union {
			char space[CMSG_SPACE(MAX_PIECES * sizeof(int))];
			struct cmsghdr align;
		} control;
		struct iovec iov = { &buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = control.space, .msg_controllen = sizeof(control.space) };
		int fds[MAX_PIECES], nfds = 0;
		ssize_t got = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);

		if (got < (ssize_t)sizeof(buf.rep))
			break;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				memcpy(fds, CMSG_DATA(c), nfds * sizeof(int));
			}
		switch (buf.rep.kind) {
		case KIND_DONE:
			if (buf.rep.err) {
				errno = buf.rep.err;
				return -1;
			}
			return buf.rep.rc;
		case KIND_INSTALL: {
			struct preload_req ans = { .op = 3 };

			if (nfds != 1)
				ans.arg = (uint64_t)(int64_t)-((mh.msg_flags & MSG_CTRUNC) ? EMFILE : EPROTO);
			else if (!buf.rep.rc && fcntl(fds[0], F_SETFD, 0) < 0)
				ans.arg = (uint64_t)(int64_t)-errno;
			else
				ans.arg = (uint64_t)fds[0];
			if (nfds == 1 && fds[0] < MAX_FDS)
				served[fds[0]] = 0; /* a model file, not the server's connection */
			if (send(fd, &ans, sizeof(ans), MSG_NOSIGNAL) != sizeof(ans))
				goto gone;
			break;
		}
		case KIND_CLOSE:
			real_close((int)buf.rep.rc);
			break;
		case KIND_PIECES:
			for (int64_t i = 0; i < buf.rep.rc && i < MAX_PIECES; i++) {
				struct preload_piece *p = &buf.pieces[i];

				if (p->fd_index < (uint32_t)nfds)
					mmap((void *)(uintptr_t)p->addr, p->len, prot, MAP_SHARED | MAP_FIXED,
					     fds[p->fd_index], p->offset);
			}
			for (int i = 0; i < nfds; i++)
				real_close(fds[i]);
			break;
		default:
			goto gone;
		}
	}
gone:
	errno = EIO; /* the server went away */
	return -1;
}

int ioctl(int fd, unsigned long request, ...)
{
	struct preload_req req = { .op = 1, .request = request };
	va_list ap;
	void *arg;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (fd < 0 || fd >= MAX_FDS || !served[fd] || ((request >> 8) & 0xff) != IOMMUFD_TYPE)
		return ((int (*)(int, unsigned long, void *))next("ioctl"))(fd, request, arg);
	req.arg = (uint64_t)(uintptr_t)arg;
	return (int)call_server(fd, &req, sizeof(req), 0);
}

/*
 * mmap() of a served descriptor: a reservation here (the VMA's place), the model's do_mmap()
 * and driver mmap in the server, then the pages the driver remapped, mapped shared over the
 * reservation. A mapping the server refuses is taken back.
 */
static void *served_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t size = (length + page - 1) & ~(size_t)(page - 1);
	struct preload_mmap_req req = { .op = 2, .length = length, .offset = (uint64_t)offset,
					.prot = prot, .flags = flags };
	void *start = MAP_FAILED;
	int64_t rc;

	if (length && size >= length)
		start = ((void *(*)(void *, size_t, int, int, int, off_t))next("mmap"))(
			addr, size, PROT_NONE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)),
			-1, 0);
	if (start != MAP_FAILED)
		req.start = (uint64_t)(uintptr_t)start;
	rc = call_server(fd, &req, sizeof(req), prot);
	if (rc == -1) {
		int e = errno;

		if (start != MAP_FAILED)
			munmap(start, size);
		errno = e;
		return MAP_FAILED;
	}
	return start;
}

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
	if (fd >= 0 && fd < MAX_FDS && served[fd] && !(flags & MAP_ANONYMOUS))
		return served_mmap(addr, length, prot, flags, fd, offset);
	return ((void *(*)(void *, size_t, int, int, int, off_t))next("mmap"))(addr, length, prot, flags, fd, offset);
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
	if (fd >= 0 && fd < MAX_FDS && served[fd] && !(flags & MAP_ANONYMOUS))
		return served_mmap(addr, length, prot, flags, fd, offset);
	return ((void *(*)(void *, size_t, int, int, int, off_t))next("mmap64"))(addr, length, prot, flags, fd, offset);
}

/* A duplicate of a served descriptor is the same open file: served too. */
static int dup_result(int oldfd, int newfd)
{
	if (newfd >= 0 && newfd < MAX_FDS)
		served[newfd] = oldfd >= 0 && oldfd < MAX_FDS && served[oldfd];
	return newfd;
}

int dup(int oldfd)
{
	return dup_result(oldfd, ((int (*)(int))next("dup"))(oldfd));
}

int dup2(int oldfd, int newfd)
{
	return dup_result(oldfd, ((int (*)(int, int))next("dup2"))(oldfd, newfd));
}

int dup3(int oldfd, int newfd, int flags)
{
	return dup_result(oldfd, ((int (*)(int, int, int))next("dup3"))(oldfd, newfd, flags));
}

int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	long arg;
	int rc;

	va_start(ap, cmd);
	arg = va_arg(ap, long);
	va_end(ap);
	rc = ((int (*)(int, int, long))next("fcntl"))(fd, cmd, arg);
	if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
		return dup_result(fd, rc);
	return rc;
}

int close(int fd)
{
	if (fd >= 0 && fd < MAX_FDS)
		served[fd] = 0;
	return real_close(fd);
}
