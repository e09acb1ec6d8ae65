/*
 * VmPin in /proc/self/status follows the pages a mock domain pins (mm->pinned_vm): read with
 * stdio before a map, after it and after the unmap. Prints "name values..." lines.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include "iommufd_test.h"

static long vm_pin_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmPin: %ld kB", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

int main(void)
{
	long page = sysconf(_SC_PAGESIZE);
	int fd = open("/dev/iommu", O_RDWR);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (fd < 0 || ioctl(fd, IOMMU_IOAS_ALLOC, &a)) { perror("ioas"); return 1; }
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = a.out_ioas_id };
	if (ioctl(fd, IOMMU_TEST_CMD, &c)) { perror("mock_domain"); return 1; }
	char *buf = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(buf, 1, 4 * page);
	long before = vm_pin_kb();
	struct iommu_ioas_map m = { .size = sizeof(m), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE |
		IOMMU_IOAS_MAP_FIXED_IOVA, .ioas_id = a.out_ioas_id, .user_va = (uintptr_t)buf, .length = 4 * page,
		.iova = MOCK_APERTURE_START };
	if (ioctl(fd, IOMMU_IOAS_MAP, &m)) { perror("map"); return 1; }
	printf("pinned_kb %ld\n", vm_pin_kb() - before);
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = a.out_ioas_id, .iova = MOCK_APERTURE_START,
		.length = 4 * page };
	if (ioctl(fd, IOMMU_IOAS_UNMAP, &u)) { perror("unmap"); return 1; }
	printf("after_unmap_kb %ld\n", vm_pin_kb() - before);
	close(fd);
	return 0;
}
