#!/bin/sh
# PID 1 of the test VM that conformance/vm.py boots (run as `init=/bin/sh -- THIS SCRATCH`,
# so the script needs no exec bit in an installed copy).
#
# The root is the host's / over virtio-9p, read-only. SCRATCH is a host directory shared
# back writable under the same path, so paths mean the same thing on both sides. The host
# wrote SCRATCH/.vm/job.sh (hugepages, cwd, env, command); its output and exit status are
# left in SCRATCH/.vm/ for the host. Then the machine resets, and QEMU (-no-reboot) exits.
S=$1
V=$S/.vm
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

reset_machine() {
	sync
	echo b >/proc/sysrq-trigger
	sleep 10 # not reached
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# CONFIG_DEVTMPFS_MOUNT normally did this already.
grep -q '^[^ ]* /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
# /tmp is left as the host's (read-only): a clone under /tmp must stay visible.
# Writable temporary files go to /run/tmp (TMPDIR and HOME in the job's environment).
mkdir -m 1777 /run/tmp
mount -t debugfs debugfs /sys/kernel/debug
mount -t hugetlbfs hugetlbfs /dev/hugepages

# The host created the scratch directory, so its mount point exists on the shared root.
# cache=none: every write reaches the host at once (it tails the output file while the
# command runs). cache=mmap would allow shared writable mmap of scratch files, but it
# buffers writes until close.
if ! mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 scratch "$S"; then
	echo "guest-init: cannot mount the scratch directory at $S" >&2
	reset_machine
fi
: >"$V/started"

sh "$V/job.sh" >"$V/output" 2>&1 </dev/null
echo $? >"$V/status.tmp" && mv "$V/status.tmp" "$V/status"
reset_machine
