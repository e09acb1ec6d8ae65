/*
 * A VFIO program on the model's machine (`exec --profile vtd`): what libvfio of the kernel's VFIO
 * selftests does, both ways: the cdev (sysfs to find it, BIND_IOMMUFD with the iommufd's
 * descriptor number, ATTACH_IOMMUFD_PT, config space by pread, a BAR mmap'd, the debugfs
 * page-table dump) and the group with /dev/vfio/vfio as container (GET_STATUS, SET_CONTAINER,
 * GET_DEVICE_FD). Prints "name values..." lines for conformance/tool_tests/test_vfio_served.py.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>

#define BDF "0000:00:03.0"
#define DEBUGFS "/sys/kernel/debug/iommu/intel/" BDF "/domain_translation_struct"

static const char *link_of(const char *path)
{
	static char buf[256];
	ssize_t n = readlink(path, buf, sizeof(buf) - 1);

	buf[n < 0 ? 0 : n] = 0;
	return buf;
}

static const char *fd_link(int fd)
{
	char p[64];

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	return link_of(p);
}

/* the debugfs line of IOVA 0's page frame: its field count (0: not found) */
static int debugfs_fields(void)
{
	char line[512];
	int fields = 0;
	FILE *f = fopen(DEBUGFS, "r");

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "0x0000000000000 |", 17))
			for (char *t = strtok(line, " \t|\n"); t; t = strtok(NULL, " \t|\n"))
				fields++;
	fclose(f);
	return fields;
}

static int err(int rc)
{
	return rc < 0 ? errno : 0;
}

int main(void)
{
	long page = sysconf(_SC_PAGESIZE);
	char *buf = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct dirent *e;
	DIR *d;

	memset(buf, 1, page);
	/* sysfs, as lib/sysfs.c and vfio_pci_get_cdev_path() read it */
	printf("iommu_group %s\n", strrchr(link_of("/sys/bus/pci/devices/" BDF "/iommu_group"), '/') + 1);
	printf("driver %s\n", strrchr(link_of("/sys/bus/pci/devices/" BDF "/driver"), '/') + 1);
	d = opendir("/sys/bus/pci/devices/" BDF "/vfio-dev/");
	while (d && (e = readdir(d)))
		if (!strncmp(e->d_name, "vfio", 4))
			printf("cdev %s\n", e->d_name);
	if (d)
		closedir(d);

	/* the cdev */
	int iommufd = open("/dev/iommu", O_RDWR);
	int dev = open("/dev/vfio/devices/vfio0", O_RDWR);
	struct vfio_device_info info = { .argsz = sizeof(info) };
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };

	printf("dev_link %s\n", fd_link(dev));
	printf("info_before_bind %d\n", err(ioctl(dev, VFIO_DEVICE_GET_INFO, &info)));
	printf("bind %d\n", err(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind)));
	int rc = err(ioctl(dev, VFIO_DEVICE_GET_INFO, &info));
	printf("info %d %u\n", rc, info.num_regions);
	ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc);
	struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof(attach), .pt_id = alloc.out_ioas_id };
	printf("attach %d\n", err(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach)));

	uint16_t vendor = 0;
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg);
	ssize_t got = pread(dev, &vendor, 2, cfg.offset);
	printf("vendor %zd %04x\n", got, vendor);

	struct vfio_region_info bar = { .argsz = sizeof(bar), .index = VFIO_PCI_BAR0_REGION_INDEX };
	ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &bar);
	void *va = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar.offset);
	printf("bar_mmap %d\n", va == MAP_FAILED ? errno : 0);

	struct iommu_ioas_map map = { .size = sizeof(map), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE |
		IOMMU_IOAS_MAP_FIXED_IOVA, .ioas_id = alloc.out_ioas_id, .user_va = (uintptr_t)buf, .length = page };
	printf("map %d\n", err(ioctl(iommufd, IOMMU_IOAS_MAP, &map)));
	printf("debugfs_mapped %d\n", debugfs_fields());
	struct iommu_ioas_map mmio = map;
	mmio.user_va = (uintptr_t)va;
	mmio.iova = 1 << 20;
	printf("map_bar %d\n", err(ioctl(iommufd, IOMMU_IOAS_MAP, &mmio)));
	struct iommu_ioas_unmap unmap = { .size = sizeof(unmap), .ioas_id = alloc.out_ioas_id, .length = page };
	printf("unmap %d\n", err(ioctl(iommufd, IOMMU_IOAS_UNMAP, &unmap)));
	printf("debugfs_unmapped %d\n", debugfs_fields());
	printf("group_while_bound %d\n", err(open("/dev/vfio/3", O_RDWR)));
	munmap(va, bar.size);
	close(dev);
	close(iommufd);

	/* the group, /dev/vfio/vfio as its container */
	int container = open("/dev/vfio/vfio", O_RDWR);
	int group = open("/dev/vfio/3", O_RDWR);
	struct vfio_group_status status = { .argsz = sizeof(status) };

	printf("container_link %s\n", fd_link(container));
	printf("group_link %s\n", fd_link(group));
	printf("api %d\n", ioctl(container, VFIO_GET_API_VERSION));
	printf("second_group_open %d\n", err(open("/dev/vfio/3", O_RDWR)));
	ioctl(group, VFIO_GROUP_GET_STATUS, &status);
	printf("status %u\n", status.flags);
	printf("get_device_no_container %d\n", err(ioctl(group, VFIO_GROUP_GET_DEVICE_FD, BDF)));
	printf("set_container %d\n", err(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)));
	printf("set_container_again %d\n", err(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)));
	ioctl(group, VFIO_GROUP_GET_STATUS, &status);
	printf("status_set %u\n", status.flags);
	printf("extension %d\n", ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU));
	printf("set_iommu %d\n", err(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)));
	printf("other_group_device %d\n", err(ioctl(group, VFIO_GROUP_GET_DEVICE_FD, "0000:00:04.0")));
	printf("vf_token %d\n",
	       err(ioctl(group, VFIO_GROUP_GET_DEVICE_FD, BDF " vf_token=52ac9bff-3a88-4fbd-901a-0d767c3b6c97")));
	int gdev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, BDF);
	int cloexec = !!(fcntl(gdev, F_GETFD) & FD_CLOEXEC);
	printf("group_device %d %s cloexec %d\n", gdev >= 0, fd_link(gdev), cloexec);
	printf("group_device_bind %d\n", err(ioctl(gdev, VFIO_DEVICE_BIND_IOMMUFD, &bind)));
	printf("group_device_info %d\n", err(ioctl(gdev, VFIO_DEVICE_GET_INFO, &info)));
	vendor = 0;
	got = pread(gdev, &vendor, 2, cfg.offset);
	printf("group_vendor %zd %04x\n", got, vendor);
	struct vfio_iommu_type1_dma_map dma = { .argsz = sizeof(dma), .flags = VFIO_DMA_MAP_FLAG_READ |
		VFIO_DMA_MAP_FLAG_WRITE, .vaddr = (uintptr_t)buf, .size = page };
	printf("map_dma %d\n", err(ioctl(container, VFIO_IOMMU_MAP_DMA, &dma)));
	printf("group_debugfs_mapped %d\n", debugfs_fields());
	close(gdev);
	printf("unset_container %d\n", err(ioctl(group, VFIO_GROUP_UNSET_CONTAINER)));
	printf("unset_again %d\n", err(ioctl(group, VFIO_GROUP_UNSET_CONTAINER)));
	close(group);
	close(container);
	printf("no_such_group %d\n", err(open("/dev/vfio/99", O_RDWR)));
	printf("no_such_cdev %d\n", err(open("/dev/vfio/devices/vfio7", O_RDWR)));
	return 0;
}
