"""The kernel's limits as the test kernel (x86_64, 64-bit) has them, in one place."""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT  # x86_64, the test kernel's architecture
U32_MAX = (1 << 32) - 1
U64_MAX = ULONG_MAX = SIZE_MAX = (1 << 64) - 1  # unsigned long and size_t are 64-bit
