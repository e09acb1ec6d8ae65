/*
 * The round trip the server benchmark times: IOMMU_IOAS_IOVA_RANGES on one IOAS, N times
 * (argv[1]), after one warm-up call. Prints "N seconds".
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/iommufd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000;
	int fd = open("/dev/iommu", O_RDWR);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	struct iommu_iova_range ranges[4];
	struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .num_iovas = 4,
					    .allowed_iovas = (unsigned long)ranges };
	struct timespec t0, t1;

	if (fd < 0 || ioctl(fd, IOMMU_IOAS_ALLOC, &a)) {
		perror("iommufd");
		return 1;
	}
	r.ioas_id = a.out_ioas_id;
	if (ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &r)) {
		perror("IOVA_RANGES");
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < n; i++) {
		r.num_iovas = 4;
		if (ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &r)) {
			perror("IOVA_RANGES");
			return 1;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%ld %.6f\n", n, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
