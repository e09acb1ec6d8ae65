/*
 * The thread's fail-nth file as the kernel's selftests use it: writes parsed as
 * kstrtouint_from_user(), reads "%u\n", and the Nth fault point of the thread failing
 * (open() of /dev/iommu meets three: getname, the struct file, iommufd's context; IOAS_ALLOC's
 * kzalloc is the next). On a kernel every fault point of the thread counts (a page fault, a
 * write to the terminal), so the results are kept in variables, all memory is touched first,
 * and nothing runs between setting the counter and the call it is meant for. Prints
 * "name values..." lines at the end.
 */
#define _GNU_SOURCE /* gettid(): an implicit declaration is an error from gcc 14 on */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/iommufd.h>

static int nth;
static char out[16][64];
static int lines;

static void record(const char *name, long rc, int err, const char *extra)
{
	snprintf(out[lines++], sizeof(out[0]), "%s %ld %s", name, rc, rc < 0 ? strerror(err) : extra);
}

int main(void)
{
	char path[64], long_text[100], buf[32], buf2[32];
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	ssize_t n;
	int fd, rc;

	memset(out, 0, sizeof(out));
	memset(buf, 0, sizeof(buf));
	memset(buf2, 0, sizeof(buf2));
	memset(long_text, ' ', sizeof(long_text));
	long_text[0] = '7';
	strerror(ENOMEM); /* its first call may allocate */
	snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", gettid());
	nth = open(path, O_RDWR);
	if (nth < 0) { perror(path); return 1; }

	n = pwrite(nth, "3\n", 2, 0);
	record("write", n, errno, "-");
	n = pread(nth, buf, sizeof(buf) - 1, 0);
	pwrite(nth, "0", 1, 0);
	record("read", n, errno, buf);
	n = pwrite(nth, "abc", 3, 0);
	record("garbage", n, errno, "-");
	n = pwrite(nth, long_text, sizeof(long_text), 0); /* only 34 bytes are read: '7' and spaces */
	record("long", n, errno, "-");

	pwrite(nth, "1", 1, 0);
	fd = open("/dev/iommu", O_RDWR);
	record("open_fails", fd, errno, "-");
	n = pread(nth, buf2, sizeof(buf2) - 1, 0);
	record("after_open", n, errno, buf2);

	pwrite(nth, "3", 1, 0);
	fd = open("/dev/iommu", O_RDWR);
	record("open_third", fd, errno, "-");

	fd = open("/dev/iommu", O_RDWR);
	pwrite(nth, "1", 1, 0);
	rc = ioctl(fd, IOMMU_IOAS_ALLOC, &a);
	record("alloc_fails", rc, errno, "-");
	pwrite(nth, "0", 1, 0);
	rc = ioctl(fd, IOMMU_IOAS_ALLOC, &a);
	snprintf(buf, sizeof(buf), "id %u", a.out_ioas_id);
	record("alloc", rc, errno, buf);
	close(fd);
	for (int i = 0; i < lines; i++) {
		size_t l = strlen(out[i]);

		printf("%s%s", out[i], l && out[i][l - 1] == '\n' ? "" : "\n");
	}
	return 0;
}
