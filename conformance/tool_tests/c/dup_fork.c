/* A served /dev/iommu through dup(), fcntl(F_DUPFD) and fork(): one file, one set of objects. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include "iommufd.h"

static int ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };

	return ioctl(fd, IOMMU_IOAS_ALLOC, &a) ? -errno : (int)a.out_ioas_id;
}

int main(void)
{
	int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	int d1 = dup(fd), d2 = fcntl(fd, F_DUPFD_CLOEXEC, 100);
	int a = ioas_alloc(fd), b = ioas_alloc(d1), c = ioas_alloc(d2);
	pid_t pid;
	int status;

	printf("ids %d %d %d\n", a, b, c);
	close(fd);
	printf("after close %d\n", ioas_alloc(d1));
	pid = fork();
	if (pid == 0)
		_exit(ioas_alloc(d2) == 5 ? 0 : 1);
	waitpid(pid, &status, 0);
	printf("child %d\n", WEXITSTATUS(status));
	printf("parent after child %d\n", ioas_alloc(d1));
	return 0;
}
