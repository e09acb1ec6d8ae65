#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "iommufd.h"
int main(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (fd < 0) { perror("open"); return 1; }
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a)) { perror("alloc"); return 1; }
	printf("ioas %u\n", a.out_ioas_id);
	void *buf = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct iommu_ioas_map m = { .size = sizeof(m), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = a.out_ioas_id, .user_va = (unsigned long)buf, .length = 1 << 16 };
	int rc = ioctl(fd, IOMMU_IOAS_MAP, &m);
	/* the automatic IOVA depends on the buffer's address (iopt_alloc_iova()): print what
	 * does not, so the kernel and the model print the same */
	printf("map %d iova_page_aligned %d\n", rc, !(m.iova & 0xfff));
	rc = ioctl(fd, IOMMU_IOAS_MAP, (void *)8);
	printf("bad pointer %d %s\n", rc, strerror(errno));
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = a.out_ioas_id, .iova = m.iova, .length = 1 << 16 };
	rc = ioctl(fd, IOMMU_IOAS_UNMAP, &u);
	printf("unmap %d length %#llx\n", rc, (unsigned long long)u.length);
	close(fd);
	return 0;
}
