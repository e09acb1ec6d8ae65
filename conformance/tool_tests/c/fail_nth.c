/*
 * The thread's fail-nth file as the kernel's selftests use it: writes parsed as
 * kstrtouint_from_user(), reads "%u\n", and the Nth fault point of the thread failing
 * (open() of /dev/iommu meets three: getname, the struct file, iommufd's context; IOAS_ALLOC's
 * kzalloc is the next). Prints "name values...".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/iommufd.h>

static int nth;

static void show(const char *name)
{
	char buf[32] = { 0 };
	ssize_t n = pread(nth, buf, sizeof(buf) - 1, 0);

	printf("%s %zd %s", name, n, n > 0 ? buf : "\n");
}

int main(void)
{
	char path[64], long_text[100];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", gettid());
	nth = open(path, O_RDWR);
	if (nth < 0) { perror(path); return 1; }
	printf("write %zd\n", pwrite(nth, "3\n", 2, 0));
	show("read");
	n = pwrite(nth, "abc", 3, 0);
	printf("garbage %zd %s\n", n, n < 0 ? strerror(errno) : "-");
	memset(long_text, ' ', sizeof(long_text));
	long_text[0] = '7';
	n = pwrite(nth, long_text, sizeof(long_text), 0); /* only 34 bytes are read: '7' and spaces */
	printf("long %zd %s\n", n, n < 0 ? strerror(errno) : "-");
	pwrite(nth, "0", 1, 0);

	pwrite(nth, "1", 1, 0);
	fd = open("/dev/iommu", O_RDWR);
	printf("open_fails %d %s\n", fd, fd < 0 ? strerror(errno) : "-");
	show("after_open");

	pwrite(nth, "3", 1, 0);
	fd = open("/dev/iommu", O_RDWR);
	printf("open_third %d %s\n", fd, fd < 0 ? strerror(errno) : "-");
	pwrite(nth, "4", 1, 0);
	fd = open("/dev/iommu", O_RDWR);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	int rc = ioctl(fd, IOMMU_IOAS_ALLOC, &a);
	printf("alloc_fails %d %s\n", rc, rc ? strerror(errno) : "-");
	show("after_alloc");
	pwrite(nth, "0", 1, 0);
	rc = ioctl(fd, IOMMU_IOAS_ALLOC, &a);
	printf("alloc %d id %u\n", rc, a.out_ioas_id);
	close(fd);
	return 0;
}
