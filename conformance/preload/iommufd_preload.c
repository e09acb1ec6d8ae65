/*
 * LD_PRELOAD library of iommufd-conformance: a program's open("/dev/iommu") is connected to
 * the model server (`iommufd-conformance serve` / `exec`), and its iommufd ioctls on that
 * descriptor are carried to the server, which reads and writes this process's memory where the
 * kernel would copy_from_user / copy_to_user (process_vm_readv / process_vm_writev).
 *
 * Wire format (one SOCK_SEQPACKET message each way, see conformance/server.py):
 *   request: u32 op (1 = ioctl), u32 zero, u64 request, u64 arg
 *   reply:   s64 rc, s32 errno, u32 zero
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

struct preload_rep {
	int64_t rc;
	int32_t err;
	uint32_t zero;
};

static unsigned char served[MAX_FDS]; /* fds connected to the server */

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
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

		((int (*)(int))next("close"))(fd);
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

int ioctl(int fd, unsigned long request, ...)
{
	struct preload_req req = { .op = 1, .request = request };
	struct preload_rep rep;
	va_list ap;
	void *arg;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (fd < 0 || fd >= MAX_FDS || !served[fd] || ((request >> 8) & 0xff) != IOMMUFD_TYPE)
		return ((int (*)(int, unsigned long, void *))next("ioctl"))(fd, request, arg);
	req.arg = (uint64_t)(uintptr_t)arg;
	if (send(fd, &req, sizeof(req), MSG_NOSIGNAL) != sizeof(req) ||
	    recv(fd, &rep, sizeof(rep), 0) != sizeof(rep)) {
		errno = EIO; /* the server went away */
		return -1;
	}
	if (rep.err) {
		errno = rep.err;
		return -1;
	}
	return (int)rep.rc;
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
	return ((int (*)(int))next("close"))(fd);
}
