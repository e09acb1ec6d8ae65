/*
 * What the model hands a C program through the preload library: the access descriptor of
 * IOMMU_TEST_OP_CREATE_ACCESS, a fault queue's descriptor (a page request read from it and
 * answered), a vIOMMU's mmap region, and close() releasing the context before the next open
 * sees the pins. Prints "name values..." lines for conformance/tool_tests/test_server.py.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include "iommufd_test.h"

static int test_cmd(int fd, struct iommu_test_cmd *c)
{
	c->size = sizeof(*c);
	return ioctl(fd, IOMMU_TEST_CMD, c);
}

int main(void)
{
	long page = sysconf(_SC_PAGESIZE);
	int fd = open("/dev/iommu", O_RDWR);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	struct stat st;
	char *buf;

	if (fd < 0 || ioctl(fd, IOMMU_IOAS_ALLOC, &a)) { perror("ioas"); return 1; }
	buf = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(buf, 0x5a, 4 * page);
	strcpy(buf + page, "through the access");
	struct iommu_ioas_map m = { .size = sizeof(m), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE |
		IOMMU_IOAS_MAP_FIXED_IOVA, .ioas_id = a.out_ioas_id, .user_va = (uintptr_t)buf,
		.length = 4 * page, .iova = MOCK_APERTURE_START };
	if (ioctl(fd, IOMMU_IOAS_MAP, &m)) { perror("map"); return 1; }

	/* the access: a real descriptor of this process, usable by number */
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = a.out_ioas_id };
	if (test_cmd(fd, &c)) { perror("create_access"); return 1; }
	int afd = c.create_access.out_access_fd;
	printf("access_fd %d %s\n", fstat(afd, &st) == 0, (fcntl(afd, F_GETFD) & FD_CLOEXEC) ? "cloexec" : "inherit");
	char out[32] = { 0 };
	c = (struct iommu_test_cmd){ .op = IOMMU_TEST_OP_ACCESS_RW, .id = afd,
		.access_rw = { .iova = MOCK_APERTURE_START + page, .length = 18, .uptr = (uintptr_t)out } };
	int rc = test_cmd(fd, &c);
	printf("access_rw %d %s\n", rc, out);
	close(afd);
	rc = test_cmd(fd, &c);
	printf("closed_access %d %s\n", rc, rc ? strerror(errno) : "-");

	/* a fault queue on a nested HWPT: a page request for PASID 1 goes to the RID's nested
	 * domain (the mock keeps a user PASID table), read here and answered */
	c = (struct iommu_test_cmd){ .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = a.out_ioas_id };
	if (test_cmd(fd, &c)) { perror("mock_domain"); return 1; }
	uint32_t stdev = c.mock_domain.out_stdev_id, idev = c.mock_domain.out_idev_id;
	struct iommu_hwpt_alloc parent = { .size = sizeof(parent), .flags = IOMMU_HWPT_ALLOC_NEST_PARENT,
		.dev_id = idev, .pt_id = a.out_ioas_id };
	if (ioctl(fd, IOMMU_HWPT_ALLOC, &parent)) { perror("parent"); return 1; }
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa)) { perror("fault_alloc"); return 1; }
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	struct iommu_hwpt_alloc nested = { .size = sizeof(nested), .flags = IOMMU_HWPT_FAULT_ID_VALID,
		.dev_id = idev, .pt_id = parent.out_hwpt_id, .data_type = IOMMU_HWPT_DATA_SELFTEST,
		.data_len = sizeof(data), .data_uptr = (uintptr_t)&data, .fault_id = fa.out_fault_id };
	if (ioctl(fd, IOMMU_HWPT_ALLOC, &nested)) { perror("nested"); return 1; }
	c = (struct iommu_test_cmd){ .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev,
		.mock_domain_replace = { .pt_id = nested.out_hwpt_id } };
	if (test_cmd(fd, &c)) { perror("replace"); return 1; }
	c = (struct iommu_test_cmd){ .op = IOMMU_TEST_OP_TRIGGER_IOPF, .trigger_iopf = { .dev_id = idev,
		.pasid = 1, .grpid = 2, .perm = IOMMU_PGFAULT_PERM_READ, .addr = 0xdeadbeaf } };
	if (test_cmd(fd, &c)) { perror("trigger"); return 1; }
	struct iommu_hwpt_pgfault f = { 0 };
	ssize_t n = read(fa.out_fault_fd, &f, sizeof(f));
	printf("fault %zd pasid %u addr %#llx grpid %u\n", n, f.pasid, (unsigned long long)f.addr, f.grpid);
	struct iommu_hwpt_page_response resp = { .cookie = f.cookie, .code = IOMMUFD_PAGE_RESP_SUCCESS };
	printf("response %zd\n", write(fa.out_fault_fd, &resp, sizeof(resp)));
	/* the fault queue's rules (iommufd_fault_fops_read/write()) */
	n = write(fa.out_fault_fd, &resp, sizeof(resp));
	printf("response_again %zd %s\n", n, n < 0 ? strerror(errno) : "-");
	n = write(fa.out_fault_fd, &resp, 1);
	printf("response_short %zd %s\n", n, n < 0 ? strerror(errno) : "-");
	n = read(fa.out_fault_fd, &f, sizeof(f) - 1);
	printf("fault_short %zd %s\n", n, n < 0 ? strerror(errno) : "-");
	n = read(fa.out_fault_fd, &f, sizeof(f));
	printf("fault_empty %zd\n", n);

	/* the vIOMMU's region: the mock writes in_data into its first word */
	struct iommu_viommu_selftest vdata = { .in_data = 0xbadbeef };
	struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_SELFTEST, .dev_id = idev,
		.hwpt_id = parent.out_hwpt_id, .data_len = sizeof(vdata), .data_uptr = (uintptr_t)&vdata };
	if (ioctl(fd, IOMMU_VIOMMU_ALLOC, &va)) { perror("viommu"); return 1; }
	uint32_t *region = mmap(NULL, vdata.out_mmap_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
				vdata.out_mmap_offset);
	printf("mmap %d word %#x\n", region != MAP_FAILED, region != MAP_FAILED ? region[0] : 0);
	void *bad = mmap(NULL, vdata.out_mmap_length, PROT_READ, MAP_PRIVATE, fd, vdata.out_mmap_offset);
	printf("private %s\n", bad == MAP_FAILED ? strerror(errno) : "mapped");
	struct iommu_destroy d = { .size = sizeof(d), .id = va.out_viommu_id };
	rc = ioctl(fd, IOMMU_DESTROY, &d);
	printf("destroy_mapped %d %s\n", rc, rc ? strerror(errno) : "-");
	munmap(region, vdata.out_mmap_length);
	rc = ioctl(fd, IOMMU_DESTROY, &d);
	printf("destroy_unmapped %d\n", rc);

	/* a vEVENTQ's reads follow the kernel's rules (iommufd_veventq_fops_read()) */
	struct iommu_viommu_alloc va2 = { .size = sizeof(va2), .type = IOMMU_VIOMMU_TYPE_SELFTEST, .dev_id = idev,
		.hwpt_id = parent.out_hwpt_id };
	if (ioctl(fd, IOMMU_VIOMMU_ALLOC, &va2)) { perror("viommu2"); return 1; }
	struct iommu_hwpt_alloc vnested = { .size = sizeof(vnested), .dev_id = idev, .pt_id = va2.out_viommu_id,
		.data_type = IOMMU_HWPT_DATA_SELFTEST, .data_len = sizeof(data), .data_uptr = (uintptr_t)&data };
	struct iommu_vdevice_alloc vd = { .size = sizeof(vd), .viommu_id = va2.out_viommu_id, .dev_id = idev,
		.virt_id = 0x99 };
	struct iommu_veventq_alloc vq = { .size = sizeof(vq), .viommu_id = va2.out_viommu_id,
		.type = IOMMU_VEVENTQ_TYPE_SELFTEST, .veventq_depth = 4 };
	if (ioctl(fd, IOMMU_HWPT_ALLOC, &vnested) || ioctl(fd, IOMMU_VDEVICE_ALLOC, &vd) ||
	    ioctl(fd, IOMMU_VEVENTQ_ALLOC, &vq)) { perror("veventq setup"); return 1; }
	c = (struct iommu_test_cmd){ .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev,
		.mock_domain_replace = { .pt_id = vnested.out_hwpt_id } };
	if (test_cmd(fd, &c)) { perror("replace2"); return 1; }
	unsigned char ev[64];
	int efd = vq.out_veventq_fd;
	n = read(efd, ev, sizeof(ev));
	printf("vevent_empty %zd\n", n);
	c = (struct iommu_test_cmd){ .op = IOMMU_TEST_OP_TRIGGER_VEVENT, .trigger_vevent = { .dev_id = idev } };
	if (test_cmd(fd, &c) || test_cmd(fd, &c)) { perror("trigger_vevent"); return 1; }
	n = read(efd, ev, 0);
	printf("vevent_zero %zd %s\n", n, n < 0 ? strerror(errno) : "-");
	n = read(efd, ev, sizeof(struct iommufd_vevent_header));
	printf("vevent_header_only %zd %s\n", n, n < 0 ? strerror(errno) : "-");
	n = pread(efd, ev, sizeof(ev), 1);
	printf("vevent_pread %zd %s\n", n, n < 0 ? strerror(errno) : "-");
	n = read(efd, ev, 20); /* room for one record of 12 bytes, not two */
	struct iommufd_vevent_header *h = (void *)ev;
	printf("vevent_one %zd seq %u virt_id %#x\n", n, h->sequence, *(uint32_t *)(ev + sizeof(*h)));
	n = read(efd, ev, sizeof(ev));
	printf("vevent_rest %zd seq %u\n", n, h->sequence);
	close(efd);
	c = (struct iommu_test_cmd){ .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev,
		.mock_domain_replace = { .pt_id = nested.out_hwpt_id } };
	test_cmd(fd, &c);

	/* the fault queue's descriptor holds the context: closing /dev/iommu leaves the pages
	 * pinned until it is closed too, and then the release is done before the next open looks */
	close(fd);
	fd = open("/dev/iommu", O_RDWR);
	c = (struct iommu_test_cmd){ .op = IOMMU_TEST_OP_MD_CHECK_REFS,
		.check_refs = { .length = 4 * page, .uptr = (uintptr_t)buf, .refs = 0 } };
	rc = test_cmd(fd, &c);
	printf("refs_fault_open %d %s\n", rc, rc ? strerror(errno) : "-");
	close(fa.out_fault_fd);
	rc = test_cmd(fd, &c);
	printf("refs_after_close %d\n", rc);
	close(fd);
	return 0;
}
