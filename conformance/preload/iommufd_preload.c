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
 * fcntl(F_DUPFD...) of a served descriptor give a served one. The files the model hands out
 * (access, fault queue, vEVENTQ) are socket ends here: their read() and write() go to the server
 * (the kernel's fops rules), pread()/pwrite() are ESPIPE, and readlink() of /proc/self/fd/N
 * names them as the kernel does ("anon_inode:[iommufd-pgfault]", "/dev/iommu").
 *
 * VFIO, when the server plays a machine (IOMMUFD_CONFORMANCE_VFIO set: `exec --profile`):
 * open() of /dev/vfio/devices/vfioN (a device's cdev), /dev/vfio/N (group N) and /dev/vfio/vfio
 * (the container: iommufd's compat container, a /dev/iommu, as CONFIG_IOMMUFD_VFIO_CONTAINER
 * serves it) connect to the server too; a device file carries its ioctls, mmap() of its regions
 * and pread()/pwrite()/read()/write() at region offsets there, and VFIO_GROUP_GET_DEVICE_FD's
 * device file comes back as an installed descriptor. open() / fopen() of
 * /sys/kernel/debug/iommu/intel/BDF/domain_translation_struct read-only gives the model's text
 * of that device's page table, made at open (a memfd). A /dev/iommu connection tells the server
 * its own socket's inode at open, so that a descriptor number the program passes in an argument
 * (VFIO_DEVICE_BIND_IOMMUFD's iommufd, VFIO_GROUP_SET_CONTAINER's container) names its context.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FDS 4096
#define IOMMUFD_TYPE ';' /* include/uapi/linux/iommufd.h; VFIO_TYPE is the same */

struct preload_req {
	uint32_t op;
	uint32_t tid;
	uint64_t request;
	uint64_t arg;
};

struct preload_mmap_req {
	uint32_t op;
	uint32_t tid;
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
enum { OP_IOCTL = 1, OP_MMAP, OP_INSTALLED, OP_OPEN, OP_READ, OP_WRITE, OP_FILE_READ, OP_FILE_WRITE,
       OP_MM_COUNTERS, OP_DEBUGFS };
/* FILE_OUTCOMES (3) is the server's own */
/* FILE_VFIO_CONTAINER: /dev/vfio/vfio, iommufd's misc device there (its rlimit accounting is mm's) */
enum { FILE_IOMMU, FILE_FAIL_NTH, FILE_MODEL, FILE_VFIO_CDEV = 4, FILE_VFIO_GROUP, FILE_VFIO_CONTAINER };
enum { INSTALL_PLAIN, INSTALL_VEVENTQ, INSTALL_FAULT, INSTALL_ACCESS, INSTALL_VFIO_DEVICE };
/* what a descriptor of ours is: a served /dev/iommu, a fail-nth file, a vEVENTQ or fault queue
 * the model handed out (its reads and writes go to the server, which applies the kernel's rules),
 * or a selftest access file (no read or write at all) */
enum { SERVED_NONE, SERVED_IOMMU, SERVED_FAIL_NTH, SERVED_VEVENTQ, SERVED_FAULT, SERVED_ACCESS,
       SERVED_CONTAINER, SERVED_VFIO_DEVICE, SERVED_VFIO_GROUP };
#define MAX_PIECES 64

static unsigned char served[MAX_FDS]; /* fds connected to the server: SERVED_* */
static uint64_t fail_nth_pos[MAX_FDS]; /* the file position of a fail-nth file or a VFIO device (read()) */
static int served_arg[MAX_FDS]; /* N of /dev/vfio/devices/vfioN or /dev/vfio/N (-1: an anonymous device file) */
static int model_conn[MAX_FDS]; /* an event queue's connection for its reads (0: none yet) */

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

static int vfio_served(void)
{
	return getenv("IOMMUFD_CONFORMANCE_VFIO") != NULL;
}

/* /dev/vfio/vfio, /dev/vfio/devices/vfioN, /dev/vfio/N: the FILE_* kind to open (N in *arg), or -1 */
static int vfio_kind(const char *path, uint32_t *arg)
{
	unsigned int n;
	int end = -1;

	if (!path || strncmp(path, "/dev/vfio/", 10) || !vfio_served())
		return -1;
	if (!strcmp(path, "/dev/vfio/vfio"))
		return FILE_VFIO_CONTAINER;
	if (sscanf(path, "/dev/vfio/devices/vfio%u%n", &n, &end) == 1 && end > 0 && !path[end]) {
		*arg = n;
		return FILE_VFIO_CDEV;
	}
	end = -1;
	if (path[10] >= '0' && path[10] <= '9' && sscanf(path, "/dev/vfio/%u%n", &n, &end) == 1 && end > 0 &&
	    !path[end]) {
		*arg = n;
		return FILE_VFIO_GROUP;
	}
	return -1;
}

/* /sys/kernel/debug/iommu/intel/BDF/domain_translation_struct (and BDF/PASID/...) */
static int is_debugfs_pgtable(const char *path, int flags)
{
	static const char prefix[] = "/sys/kernel/debug/iommu/intel/", suffix[] = "/domain_translation_struct";
	size_t n = path ? strlen(path) : 0;

	return n > sizeof(prefix) + sizeof(suffix) - 2 && (flags & O_ACCMODE) == O_RDONLY && vfio_served() &&
	       !strncmp(path, prefix, sizeof(prefix) - 1) && !strcmp(path + n - (sizeof(suffix) - 1), suffix);
}

static int debugfs_open(const char *path, int flags);

static int64_t call_server(int fd, const void *req, size_t len, int prot);
static pid_t status_pid(const char *path);
static int status_open(const char *path, int flags);

/* A new connection to the server for an open() of `kind`: `arg` is the thread of a fail-nth
 * file, N of a VFIO device's or group's node; a /dev/iommu (or /dev/vfio/vfio, `served_as`
 * SERVED_CONTAINER) sends its socket's inode instead. */
static int connect_server_as(int flags, int kind, uint32_t arg, int served_as)
{
	const char *path = getenv("IOMMUFD_CONFORMANCE_SERVER");
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct preload_req req = { .op = OP_OPEN, .tid = gettid(), .request = kind, .arg = arg };
	struct stat st;
	int fd;

	if (!path || strlen(path) >= sizeof(sun.sun_path)) {
		errno = ENOENT;
		return -1;
	}
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | ((flags & O_CLOEXEC) ? SOCK_CLOEXEC : 0), 0);
	if (fd < 0)
		return -1;
	if ((kind == FILE_IOMMU || kind == FILE_VFIO_CONTAINER) && fstat(fd, &st) == 0)
		req.arg = (uint64_t)st.st_ino;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || call_server(fd, &req, sizeof(req), 0) < 0) {
		int e = errno;

		real_close(fd);
		errno = e;
		return -1;
	}
	if (fd < MAX_FDS) {
		served[fd] = served_as;
		fail_nth_pos[fd] = 0;
		served_arg[fd] = (int)arg;
	}
	return fd;
}

static int connect_server(int flags, int kind, uint32_t arg)
{
	return connect_server_as(flags, kind, arg,
				 kind == FILE_IOMMU ? SERVED_IOMMU : kind == FILE_FAIL_NTH ? SERVED_FAIL_NTH :
				 kind == FILE_VFIO_CDEV ? SERVED_VFIO_DEVICE : kind == FILE_VFIO_GROUP ? SERVED_VFIO_GROUP :
				 SERVED_NONE);
}

/* open() of a VFIO node the server plays */
static int vfio_open(int kind, uint32_t arg, int flags)
{
	return connect_server_as(flags, kind, arg,
				 kind == FILE_VFIO_CONTAINER ? SERVED_CONTAINER :
				 kind == FILE_VFIO_CDEV ? SERVED_VFIO_DEVICE : SERVED_VFIO_GROUP);
}

/*
 * /proc/self/task/<tid>/fail-nth, /proc/<pid>/task/<tid>/fail-nth, /proc/thread-self/fail-nth,
 * /proc/self/fail-nth, /proc/<pid>/fail-nth: the thread whose counter it is, or 0.
 */
static uint32_t fail_nth_tid(const char *path)
{
	unsigned int pid, tid;
	int n = -1;

	if (!path || strncmp(path, "/proc/", 6) != 0)
		return 0;
	if (sscanf(path, "/proc/self/task/%u/fail-nth%n", &tid, &n) == 1 && n > 0 && !path[n])
		return tid;
	n = -1;
	if (sscanf(path, "/proc/%u/task/%u/fail-nth%n", &pid, &tid, &n) == 2 && n > 0 && !path[n])
		return tid;
	if (!strcmp(path, "/proc/thread-self/fail-nth"))
		return gettid();
	if (!strcmp(path, "/proc/self/fail-nth"))
		return getpid();
	n = -1;
	if (sscanf(path, "/proc/%u/fail-nth%n", &pid, &n) == 1 && n > 0 && !path[n])
		return pid;
	return 0;
}

/* The fault-injection settings under debugfs belong to the model's kernel, not this machine's:
 * failslab/..., fail_page_alloc/... (relative to /sys/kernel/debug or absolute) open /dev/null. */
static int is_fault_setting(int dirfd, const char *path)
{
	char link[64], dir[64];
	ssize_t n;

	if (!path)
		return 0;
	if (!strncmp(path, "/sys/kernel/debug/fail", 22))
		return 1;
	if (path[0] == '/' || strncmp(path, "fail", 4) != 0 || dirfd < 0)
		return 0;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
	n = ((ssize_t (*)(const char *, char *, size_t))next("readlink"))(link, dir, sizeof(dir) - 1);
	if (n <= 0)
		return 0;
	dir[n] = 0;
	return !strcmp(dir, "/sys/kernel/debug");
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
		uint32_t vfio_arg = 0;                                         \
		int vfio = vfio_kind(path, &vfio_arg);                         \
		if (is_iommu(path))                                            \
			return connect_server(flags, FILE_IOMMU, 0);           \
		if (vfio >= 0)                                                 \
			return vfio_open(vfio, vfio_arg, flags);               \
		if (is_debugfs_pgtable(path, flags))                           \
			return debugfs_open(path, flags);                      \
		if (fail_nth_tid(path))                                        \
			return connect_server(flags, FILE_FAIL_NTH, fail_nth_tid(path)); \
		if (status_pid(path) && (flags & O_ACCMODE) == O_RDONLY)      \
			return status_open(path, flags);                       \
		if (is_fault_setting(DIRFD, path))                             \
			return ((int (*)(const char *, int, ...))next("open"))("/dev/null", flags & ~(O_CREAT | O_TMPFILE)); \

#define DIRFD AT_FDCWD
OPEN_LIKE(open, const char *path)
	return ((int (*)(const char *, int, mode_t))next("open"))(path, flags, mode);
}

OPEN_LIKE(open64, const char *path)
	return ((int (*)(const char *, int, mode_t))next("open64"))(path, flags, mode);
}

#undef DIRFD
#define DIRFD dirfd
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
static int64_t call_server_locked(int fd, const void *req, size_t len, int prot);

/* One call at a time per connection: the threads of a process that share a descriptor take
 * turns, so that each gets its own answer (the kernel runs their ioctls side by side, each
 * under the locks of the objects it touches; the model runs each whole). */
static pthread_mutex_t conn_lock[MAX_FDS] = { [0 ... MAX_FDS - 1] = PTHREAD_MUTEX_INITIALIZER };

static int64_t call_server(int fd, const void *req, size_t len, int prot)
{
	int64_t rc;
	int e;

	if (fd < 0 || fd >= MAX_FDS)
		return call_server_locked(fd, req, len, prot);
	pthread_mutex_lock(&conn_lock[fd]);
	rc = call_server_locked(fd, req, len, prot);
	e = errno;
	pthread_mutex_unlock(&conn_lock[fd]);
	errno = e;
	return rc;
}

static int64_t call_server_locked(int fd, const void *req, size_t len, int prot)
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
			struct preload_req ans = { .op = OP_INSTALLED, .tid = gettid() };

			if (nfds != 1)
				ans.arg = (uint64_t)(int64_t)-((mh.msg_flags & MSG_CTRUNC) ? EMFILE : EPROTO);
			else if (!buf.rep.rc && fcntl(fds[0], F_SETFD, 0) < 0)
				ans.arg = (uint64_t)(int64_t)-errno;
			else
				ans.arg = (uint64_t)fds[0];
			if (nfds == 1 && fds[0] < MAX_FDS) { /* a model file, not the server's connection */
				served[fds[0]] = buf.rep.err == INSTALL_VEVENTQ ? SERVED_VEVENTQ :
						 buf.rep.err == INSTALL_FAULT ? SERVED_FAULT :
						 buf.rep.err == INSTALL_ACCESS ? SERVED_ACCESS :
						 buf.rep.err == INSTALL_VFIO_DEVICE ? SERVED_VFIO_DEVICE : SERVED_NONE;
				model_conn[fds[0]] = 0;
				served_arg[fds[0]] = -1;
				fail_nth_pos[fds[0]] = 0;
			}
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

/*
 * FIOASYNC on a file the server stands for: ioctl_fioasync() (fs/ioctl.c) reads the int
 * (EFAULT), and a change of FASYNC needs f_op->fasync, which neither iommufd's fops nor the
 * files it hands out have (ENOTTY); the socket that carries the file here has one.
 */
static int served_fioasync(void *argp)
{
	int on;
	struct iovec local = { &on, sizeof(on) }, remote = { argp, sizeof(on) };

	if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != sizeof(on)) {
		errno = EFAULT;
		return -1;
	}
	if (on) {
		errno = ENOTTY;
		return -1;
	}
	return 0;
}

/* descriptors whose ioctls the server answers: /dev/iommu, the VFIO container, device and group */
#define IOCTL_SERVED(fd) (served[fd] == SERVED_IOMMU || served[fd] == SERVED_CONTAINER || \
			  served[fd] == SERVED_VFIO_DEVICE || served[fd] == SERVED_VFIO_GROUP)
/* descriptors whose mmap() the server makes (a group has no .mmap: the socket's ENODEV is its answer) */
#define MMAP_SERVED(fd) ((fd) >= 0 && (fd) < MAX_FDS && (served[fd] == SERVED_IOMMU || \
			 served[fd] == SERVED_CONTAINER || served[fd] == SERVED_VFIO_DEVICE))

int ioctl(int fd, unsigned long request, ...)
{
	struct preload_req req = { .op = OP_IOCTL, .request = request };
	va_list ap;
	void *arg;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (request == FIOASYNC && fd >= 0 && fd < MAX_FDS && served[fd] != SERVED_NONE &&
	    served[fd] != SERVED_FAIL_NTH)
		return served_fioasync(arg);
	/* FIONREAD too: for a character device do_vfs_ioctl() leaves it to the driver (the model's
	 * vfs.py answers it as iommufd does); the socket here would answer its own queue */
	if (fd < 0 || fd >= MAX_FDS || !IOCTL_SERVED(fd) ||
	    (((request >> 8) & 0xff) != IOMMUFD_TYPE && request != FIONREAD))
		return ((int (*)(int, unsigned long, void *))next("ioctl"))(fd, request, arg);
	req.arg = (uint64_t)(uintptr_t)arg;
	req.tid = gettid();
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
	struct preload_mmap_req req = { .op = OP_MMAP, .tid = gettid(), .length = length, .offset = (uint64_t)offset,
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
	if (MMAP_SERVED(fd) && !(flags & MAP_ANONYMOUS))
		return served_mmap(addr, length, prot, flags, fd, offset);
	return ((void *(*)(void *, size_t, int, int, int, off_t))next("mmap"))(addr, length, prot, flags, fd, offset);
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
	if (MMAP_SERVED(fd) && !(flags & MAP_ANONYMOUS))
		return served_mmap(addr, length, prot, flags, fd, offset);
	return ((void *(*)(void *, size_t, int, int, int, off_t))next("mmap64"))(addr, length, prot, flags, fd, offset);
}

/*
 * readlink() of /proc/self/fd/N (/proc/thread-self/fd/N, /proc/<our pid>/fd/N) for a served
 * descriptor: what the kernel's d_path() gives its file, "/dev/iommu" or the anonymous inode's
 * "anon_inode:[name]" (anon_inode_getfile()'s name), not the socket that carries it here.
 */
static const char *served_link(int dirfd, const char *path)
{
	char self[32];
	const char *rest = NULL;
	char *end;
	long fd;

	(void)dirfd; /* a path relative to a /proc/<pid>/fd directory is not looked at */
	if (!path || path[0] != '/')
		return NULL;
	snprintf(self, sizeof(self), "/proc/%d/fd/", (int)getpid());
	if (!strncmp(path, "/proc/self/fd/", 14))
		rest = path + 14;
	else if (!strncmp(path, "/proc/thread-self/fd/", 21))
		rest = path + 21;
	else if (!strncmp(path, self, strlen(self)))
		rest = path + strlen(self);
	if (!rest || !*rest)
		return NULL;
	fd = strtol(rest, &end, 10);
	if (*end || fd < 0 || fd >= MAX_FDS)
		return NULL;
	static __thread char name[48];

	switch (served[fd]) {
	case SERVED_IOMMU:
		return "/dev/iommu";
	case SERVED_CONTAINER:
		return "/dev/vfio/vfio";
	case SERVED_VFIO_DEVICE:
		if (served_arg[fd] < 0)
			return "anon_inode:[vfio-device]"; /* vfio_device_open_file() */
		snprintf(name, sizeof(name), "/dev/vfio/devices/vfio%d", served_arg[fd]);
		return name;
	case SERVED_VFIO_GROUP:
		snprintf(name, sizeof(name), "/dev/vfio/%d", served_arg[fd]);
		return name;
	case SERVED_VEVENTQ:
		return "anon_inode:[iommufd-viommu-event]";
	case SERVED_FAULT:
		return "anon_inode:[iommufd-pgfault]";
	case SERVED_ACCESS:
		return "anon_inode:[iommufd_test_staccess]";
	default:
		return NULL;
	}
}

static ssize_t link_result(const char *link, char *buf, size_t bufsiz)
{
	size_t n = strlen(link);

	if (n > bufsiz)
		n = bufsiz; /* readlink(2) truncates, without a NUL */
	memcpy(buf, link, n);
	return (ssize_t)n;
}

ssize_t readlink(const char *path, char *buf, size_t bufsiz)
{
	const char *link = served_link(AT_FDCWD, path);

	if (link)
		return link_result(link, buf, bufsiz);
	return ((ssize_t (*)(const char *, char *, size_t))next("readlink"))(path, buf, bufsiz);
}

ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t bufsiz)
{
	const char *link = served_link(dirfd, path);

	if (link)
		return link_result(link, buf, bufsiz);
	return ((ssize_t (*)(int, const char *, char *, size_t))next("readlinkat"))(dirfd, path, buf, bufsiz);
}

/* A duplicate of a served descriptor is the same open file: served too. */
static int dup_result(int oldfd, int newfd)
{
	if (newfd >= 0 && newfd < MAX_FDS) {
		if (model_conn[newfd])
			real_close(model_conn[newfd]);
		model_conn[newfd] = 0;
		served[newfd] = oldfd >= 0 && oldfd < MAX_FDS ? served[oldfd] : SERVED_NONE;
		fail_nth_pos[newfd] = oldfd >= 0 && oldfd < MAX_FDS ? fail_nth_pos[oldfd] : 0;
		served_arg[newfd] = oldfd >= 0 && oldfd < MAX_FDS ? served_arg[oldfd] : 0;
	}
	return newfd;
}

/* proc_fail_nth_read(): "%u\n" of the thread's counter, from the file position
 * (simple_read_from_buffer()); `pos` NULL: read() at and advancing the file's own position. */
static ssize_t fail_nth_read(int fd, void *buf, size_t count, const off_t *pos)
{
	struct preload_req req = { .op = OP_READ, .tid = gettid() };
	uint64_t at = pos ? (uint64_t)*pos : fail_nth_pos[fd];
	char num[16];
	int64_t n = call_server(fd, &req, sizeof(req), 0);
	size_t len;

	if (n < 0)
		return -1;
	len = snprintf(num, sizeof(num), "%u\n", (unsigned int)n);
	if (at >= len)
		return 0;
	if (count > len - at)
		count = len - at;
	memcpy(buf, num + at, count);
	if (!pos)
		fail_nth_pos[fd] = at + count;
	return count;
}

/* proc_fail_nth_write(): the number written (kstrtouint_from_user() reads the first bytes
 * only); the whole count is the answer. */
static ssize_t fail_nth_write(int fd, const void *buf, size_t count)
{
	struct {
		struct preload_req req;
		char data[64];
	} msg = { .req = { .op = OP_WRITE, .tid = gettid(), .arg = count } };
	size_t n = count < sizeof(msg.data) ? count : sizeof(msg.data);

	memcpy(msg.data, buf, n);
	return call_server(fd, &msg, sizeof(msg.req) + n, 0);
}

#define IS_FAIL_NTH(fd) ((fd) >= 0 && (fd) < MAX_FDS && served[fd] == SERVED_FAIL_NTH)
#define IS_EVENTQ(fd) ((fd) >= 0 && (fd) < MAX_FDS && (served[fd] == SERVED_VEVENTQ || served[fd] == SERVED_FAULT))
#define IS_ACCESS(fd) ((fd) >= 0 && (fd) < MAX_FDS && served[fd] == SERVED_ACCESS)
#define IS_VFIO_DEVICE(fd) ((fd) >= 0 && (fd) < MAX_FDS && served[fd] == SERVED_VFIO_DEVICE)
/* a group's fops have no .read / .write: vfs_read() / vfs_write() answer EINVAL */
#define IS_VFIO_GROUP(fd) ((fd) >= 0 && (fd) < MAX_FDS && served[fd] == SERVED_VFIO_GROUP)
/* A model file is an anonymous inode's: alloc_file_pseudo() gives it no FMODE_PREAD /
 * FMODE_PWRITE (pread and pwrite are ESPIPE before its fops are asked, a negative position
 * EINVAL first), and the access file's fops have no .read / .write (vfs_read() and vfs_write()
 * answer EINVAL without FMODE_CAN_READ / FMODE_CAN_WRITE). */
#define ANON_POSITIONED(fd, offset)                                            \
	if (IS_EVENTQ(fd) || IS_ACCESS(fd)) {                                  \
		errno = (offset) < 0 ? EINVAL : ESPIPE;                        \
		return -1;                                                     \
	}                                                                      \
	if (IS_VFIO_GROUP(fd)) {                                               \
		errno = EINVAL;                                                \
		return -1;                                                     \
	}
#define ANON_NO_RW(fd)                                                         \
	if (IS_ACCESS(fd) || IS_VFIO_GROUP(fd)) {                              \
		errno = EINVAL;                                                \
		return -1;                                                     \
	}

/* The file's read or write (iommufd_veventq_fops_read(), iommufd_fault_fops_read/write()) in
 * the server, over a connection of this descriptor's own. */
static ssize_t eventq_rw(int op, int fd, uintptr_t buf, size_t count, off_t pos)
{
	struct preload_mmap_req req = { .op = op, .tid = gettid(), .start = buf,
					.length = count, .offset = (uint64_t)pos, .prot = fd };

	if (!model_conn[fd]) {
		int c = connect_server(O_CLOEXEC, FILE_MODEL, 0);

		if (c < 0)
			return -1;
		model_conn[fd] = c;
	}
	return call_server(model_conn[fd], &req, sizeof(req), 0);
}

/* The VFIO device's read or write (vfio_device_fops_read/write() -> vfio_pci_core_read/write())
 * in the server, on the device's own connection: at `pos`, or at and advancing the file's
 * position when `pos` is NULL. A negative position is EINVAL (ksys_pread64()). */
static ssize_t vfio_device_rw(int op, int fd, uintptr_t buf, size_t count, const off_t *pos)
{
	struct preload_mmap_req req = { .op = op, .tid = gettid(), .start = buf, .length = count,
					.offset = pos ? (uint64_t)*pos : fail_nth_pos[fd] };
	int64_t rc;

	if (pos && *pos < 0) {
		errno = EINVAL;
		return -1;
	}
	rc = call_server(fd, &req, sizeof(req), 0);
	if (rc > 0 && !pos)
		fail_nth_pos[fd] += rc;
	return rc;
}

ssize_t read(int fd, void *buf, size_t count)
{
	ANON_NO_RW(fd);
	if (IS_FAIL_NTH(fd))
		return fail_nth_read(fd, buf, count, NULL);
	if (IS_EVENTQ(fd))
		return eventq_rw(OP_FILE_READ, fd, (uintptr_t)buf, count, 0);
	if (IS_VFIO_DEVICE(fd))
		return vfio_device_rw(OP_FILE_READ, fd, (uintptr_t)buf, count, NULL);
	return ((ssize_t (*)(int, void *, size_t))next("read"))(fd, buf, count);
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset)
{
	ANON_POSITIONED(fd, offset);
	if (IS_FAIL_NTH(fd))
		return fail_nth_read(fd, buf, count, &offset);
	if (IS_EVENTQ(fd))
		return eventq_rw(OP_FILE_READ, fd, (uintptr_t)buf, count, offset);
	if (IS_VFIO_DEVICE(fd))
		return vfio_device_rw(OP_FILE_READ, fd, (uintptr_t)buf, count, &offset);
	return ((ssize_t (*)(int, void *, size_t, off_t))next("pread"))(fd, buf, count, offset);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset)
{
	ANON_POSITIONED(fd, offset);
	if (IS_FAIL_NTH(fd))
		return fail_nth_read(fd, buf, count, &offset);
	if (IS_EVENTQ(fd))
		return eventq_rw(OP_FILE_READ, fd, (uintptr_t)buf, count, offset);
	if (IS_VFIO_DEVICE(fd))
		return vfio_device_rw(OP_FILE_READ, fd, (uintptr_t)buf, count, &offset);
	return ((ssize_t (*)(int, void *, size_t, off_t))next("pread64"))(fd, buf, count, offset);
}

ssize_t write(int fd, const void *buf, size_t count)
{
	ANON_NO_RW(fd);
	if (IS_FAIL_NTH(fd))
		return fail_nth_write(fd, buf, count);
	if (IS_EVENTQ(fd))
		return eventq_rw(OP_FILE_WRITE, fd, (uintptr_t)buf, count, 0);
	if (IS_VFIO_DEVICE(fd))
		return vfio_device_rw(OP_FILE_WRITE, fd, (uintptr_t)buf, count, NULL);
	return ((ssize_t (*)(int, const void *, size_t))next("write"))(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
{
	ANON_POSITIONED(fd, offset);
	if (IS_FAIL_NTH(fd))
		return fail_nth_write(fd, buf, count);
	if (IS_EVENTQ(fd))
		return eventq_rw(OP_FILE_WRITE, fd, (uintptr_t)buf, count, offset);
	if (IS_VFIO_DEVICE(fd))
		return vfio_device_rw(OP_FILE_WRITE, fd, (uintptr_t)buf, count, &offset);
	return ((ssize_t (*)(int, const void *, size_t, off_t))next("pwrite"))(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset)
{
	ANON_POSITIONED(fd, offset);
	if (IS_FAIL_NTH(fd))
		return fail_nth_write(fd, buf, count);
	if (IS_EVENTQ(fd))
		return eventq_rw(OP_FILE_WRITE, fd, (uintptr_t)buf, count, offset);
	if (IS_VFIO_DEVICE(fd))
		return vfio_device_rw(OP_FILE_WRITE, fd, (uintptr_t)buf, count, &offset);
	return ((ssize_t (*)(int, const void *, size_t, off_t))next("pwrite64"))(fd, buf, count, offset);
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
	if (fd >= 0 && fd < MAX_FDS) {
		served[fd] = SERVED_NONE;
		served_arg[fd] = 0;
		if (model_conn[fd])
			real_close(model_conn[fd]);
		model_conn[fd] = 0;
	}
	return real_close(fd);
}

/*
 * /proc/<pid>/status (and /proc/self/status) through stdio or open(): VmPin and VmLck are the kernel's
 * mm->pinned_vm and mm->locked_vm, which iommufd charges; here the model's counters of that
 * process are added to what this machine's kernel shows, as the kernel would show them.
 */
static pid_t status_pid(const char *path)
{
	unsigned int pid;
	int n = -1;

	if (!path || !getenv("IOMMUFD_CONFORMANCE_SERVER"))
		return 0;
	if (!strcmp(path, "/proc/self/status"))
		return getpid();
	if (sscanf(path, "/proc/%u/status%n", &pid, &n) == 1 && n > 0 && !path[n])
		return pid;
	return 0;
}

/* The file's text with the model's counters, in a memfd at position 0 (close-on-exec). */
static int status_fd(const char *path, pid_t pid)
{
	struct preload_req req = { .op = OP_MM_COUNTERS, .tid = gettid(), .arg = (uint64_t)pid };
	static char text[16384];
	long kb = sysconf(_SC_PAGESIZE) / 1024;
	int64_t counters;
	ssize_t len = 0, n;
	int in, out, conn;
	char *line;

	in = ((int (*)(const char *, int, ...))next("open"))(path, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return -1;
	while (len < (ssize_t)sizeof(text) - 1 &&
	       (n = ((ssize_t (*)(int, void *, size_t))next("read"))(in, text + len, sizeof(text) - 1 - len)) > 0)
		len += n;
	real_close(in);
	text[len] = 0;
	conn = connect_server(O_CLOEXEC, FILE_MODEL, 0);
	counters = conn < 0 ? -1 : call_server(conn, &req, sizeof(req), 0);
	if (conn >= 0)
		real_close(conn);
	out = syscall(SYS_memfd_create, "status", 1 /* MFD_CLOEXEC */);
	if (out < 0)
		return -1;
	for (line = text; *line; ) {
		char *end = strchr(line, '\n');
		size_t l = end ? (size_t)(end - line + 1) : strlen(line);
		char buf[64];
		unsigned long v;
		int k = 0;

		if (counters >= 0 && sscanf(line, "VmPin: %lu kB", &v) == 1)
			k = snprintf(buf, sizeof(buf), "VmPin:\t%8lu kB\n", v + (counters & 0xffffffff) * kb);
		else if (counters >= 0 && sscanf(line, "VmLck: %lu kB", &v) == 1)
			k = snprintf(buf, sizeof(buf), "VmLck:\t%8lu kB\n", v + (counters >> 32) * kb);
		if (k > 0)
			((ssize_t (*)(int, const void *, size_t))next("write"))(out, buf, k);
		else
			((ssize_t (*)(int, const void *, size_t))next("write"))(out, line, l);
		line += l;
	}
	lseek(out, 0, SEEK_SET);
	return out;
}

static FILE *status_with_model(const char *path, pid_t pid)
{
	int fd = status_fd(path, pid);
	FILE *f = fd < 0 ? NULL : fdopen(fd, "r");

	if (fd >= 0 && !f)
		real_close(fd);
	return f;
}

/* open() of a status file, read-only (Python's open(), os.open()) */
static int status_open(const char *path, int flags)
{
	int fd = status_fd(path, status_pid(path));

	if (fd >= 0 && !(flags & O_CLOEXEC))
		fcntl(fd, F_SETFD, 0);
	return fd;
}

/*
 * The model's debugfs page-table dump (model/debugfs.py): the server renders the device's table
 * now, as seq_file's single_open() does at open, and hands the text over in a memfd.
 */
static int debugfs_open(const char *path, int flags)
{
	struct {
		struct preload_req req;
		char path[256];
	} msg = { .req = { .op = OP_DEBUGFS, .tid = gettid() } };
	struct preload_rep rep;
	union {
		char space[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	struct iovec iov = { &rep, sizeof(rep) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
			     .msg_controllen = sizeof(control.space) };
	size_t n = strlen(path);
	int conn, fd = -1, e = EIO;
	ssize_t got;

	if (n >= sizeof(msg.path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(msg.path, path, n);
	conn = connect_server(O_CLOEXEC, FILE_MODEL, 0);
	if (conn < 0)
		return -1;
	if (send(conn, &msg, sizeof(msg.req) + n, MSG_NOSIGNAL) == (ssize_t)(sizeof(msg.req) + n) &&
	    (got = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC)) >= (ssize_t)sizeof(rep)) {
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
				memcpy(&fd, CMSG_DATA(c), sizeof(int));
		e = rep.err ? rep.err : fd < 0 ? EIO : 0;
	}
	real_close(conn);
	if (e) {
		if (fd >= 0)
			real_close(fd);
		errno = e;
		return -1;
	}
	if (!(flags & O_CLOEXEC))
		fcntl(fd, F_SETFD, 0);
	return fd;
}

static FILE *debugfs_fopen(const char *path)
{
	int fd = debugfs_open(path, O_RDONLY | O_CLOEXEC);
	FILE *f = fd < 0 ? NULL : fdopen(fd, "r");

	if (fd >= 0 && !f)
		real_close(fd);
	return f;
}

FILE *fopen(const char *path, const char *mode)
{
	pid_t pid = status_pid(path);

	if (mode && mode[0] == 'r' && !strchr(mode, '+') && is_debugfs_pgtable(path, O_RDONLY))
		return debugfs_fopen(path);
	if (pid && mode && mode[0] == 'r' && !strchr(mode, '+'))
		return status_with_model(path, pid);
	return ((FILE *(*)(const char *, const char *))next("fopen"))(path, mode);
}

FILE *fopen64(const char *path, const char *mode)
{
	pid_t pid = status_pid(path);

	if (mode && mode[0] == 'r' && !strchr(mode, '+') && is_debugfs_pgtable(path, O_RDONLY))
		return debugfs_fopen(path);
	if (pid && mode && mode[0] == 'r' && !strchr(mode, '+'))
		return status_with_model(path, pid);
	return ((FILE *(*)(const char *, const char *))next("fopen64"))(path, mode);
}
