/*
 * Force-included (-include) when building tools/testing/selftests/vfio from Debian's
 * linux-source-7.2 (7.2.13): lib/vfio_pci_device.c calls calloc_assert(), which nothing in that
 * tree defines, so the library does not compile under the selftests' -Werror. This is the
 * helper the library expects: calloc() that ends the test when it fails.
 */
#include <stdio.h>
#include <stdlib.h>
#ifndef calloc_assert
#define calloc_assert(n, size) ({ void *__p = calloc((n), (size)); \
	if (!__p) { perror("calloc"); exit(1); } __p; })
#endif
