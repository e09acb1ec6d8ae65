"""The kernel the model plays: its configuration and limits (x86_64, 64-bit), in one place.

The uapi version is chosen in model/uapi.py; this is what the headers do not say.
"""

# Kconfig of the project's test kernel (conformance/kernel/iommufd.config).
CONFIG_IOMMUFD_TEST = True  # the mock IOMMU and IOMMU_TEST_CMD (model/selftest/)
CONFIG_TRANSPARENT_HUGEPAGE = True  # iopt_alloc_iova() caps automatic IOVA alignment at HPAGE_SIZE

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT  # x86_64, the test kernel's architecture
HPAGE_SHIFT = 21
HPAGE_SIZE = 1 << HPAGE_SHIFT  # PMD size on x86_64
U32_MAX = (1 << 32) - 1
U64_MAX = ULONG_MAX = SIZE_MAX = (1 << 64) - 1  # unsigned long and size_t are 64-bit

# include/uapi/linux/capability.h
CAP_IPC_LOCK = 14
CAP_SYS_RESOURCE = 24
