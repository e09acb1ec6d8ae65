"""VFIO's group files (drivers/vfio/group.c, Linux 7.2.13): /dev/vfio/N of an iommu_group whose
devices vfio-pci drives, and the device files its VFIO_GROUP_GET_DEVICE_FD hands out.

What is modelled is the group path with an iommufd as the container, which is what the kernel
does when VFIO_GROUP_SET_CONTAINER is given a /dev/iommu (and, under
CONFIG_IOMMUFD_VFIO_CONTAINER, a /dev/vfio/vfio, which is then iommufd's): the group takes a
reference on the context and iommufd creates its compat IOAS (iommufd_vfio_compat_ioas_create());
a device opened through the group binds to that context and its first open attaches it to the
compat IOAS (vfio_df_group_open(), vfio_iommufd_compat_attach_ioas()). VFIO's own type1
container (drivers/vfio/container.c, vfio_iommu_type1.c) is not modelled: a container
descriptor that is not an iommufd is EBADFD, as for any other file (group.c:151).

The ioctls (vfio_group_fops_unl_ioctl(), group.c:364):
- GET_STATUS (group.c:325): argsz >= 8 (EINVAL); CONTAINER_SET | VIABLE with a container,
  VIABLE while nobody claimed the group's DMA ownership, 0 otherwise;
- SET_CONTAINER (group.c:108): get_user(fd) (EFAULT), fdget (EBADF), EINVAL with a container
  already, EBADFD for a file that is not an iommufd, the compat IOAS's errors;
- UNSET_CONTAINER (group.c:83): EINVAL without a container, else the context is put;
- GET_DEVICE_FD (group.c:303): strndup_user(arg, PAGE_SIZE) (EFAULT; EINVAL without a NUL in
  a page), the device by vfio_pci_core_match() (the name, then " vf_token=UUID": EINVAL for an
  unparseable or unused token on a function that is neither a PF nor a VF, ENODEV for no
  match), then vfio_device_open_file(): EINVAL without a container, the bind and compat attach
  errors; the new file's descriptor is O_CLOEXEC (FD_ADD).
Opening a group is EBUSY while it is open (one opened_file) or while a device of it is bound
through its cdev (cdev_device_open_cnt); a device file opened through the group holds the group
file (its release waits for theirs).
"""
from __future__ import annotations

import errno
import re
import threading

from model.file import iommufd_ctx_from_fd, iommufd_ctx_put
from model.vfs import fget_inode
from model.objects import IommufdError
from model.uapi import B
from model.vfio.vfio import VfioDeviceFile, vfio_df_close, vfio_df_open

PAGE_SIZE = 4096
UUID_STRING_LEN = 36
VF_TOKEN_ARG = "vf_token="
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class VfioGroup:
    """struct vfio_group of one iommu_group (vfio_create_group(), named by its id)."""

    def __init__(self, iommu_group, devices: list):
        self.iommu_group = iommu_group
        self.id = iommu_group.id
        self.devices = devices  # device_list: the vfio_devices of the group
        self.opened_file: "VfioGroupFile | None" = None
        self.iommufd = None  # the iommufd_ctx given by SET_CONTAINER (a reference held)
        self.container = None  # VFIO's own type1 container: not modelled
        self.cdev_device_open_cnt = 0
        self.lock = threading.RLock()  # group_lock

    def has_iommu(self) -> bool:
        """vfio_group_has_iommu() (group.c:62)."""
        return self.container is not None or self.iommufd is not None


_GROUPS: dict[int, tuple[object, VfioGroup]] = {}
_GROUPS_LOCK = threading.Lock()


def vfio_groups(platform) -> None:
    """vfio_device_set_group() of every device of the machine, as vfio-pci's probe at boot."""
    for group_id in platform.groups:
        vfio_group_of(platform, group_id)


def vfio_group_of(platform, group_id: int) -> VfioGroup | None:
    """The vfio_group of iommu_group `group_id` of the machine (vfio_device_set_group() at
    vfio-pci's probe: every PCI function of a played machine is bound to vfio-pci), or None
    (no /dev/vfio/N node)."""
    from model.vfio.vfio_main import vfio_device_of

    iommu_group = platform.groups.get(group_id)
    if iommu_group is None:
        return None
    with _GROUPS_LOCK:
        held = _GROUPS.get(id(iommu_group))
        if held is not None and held[0] is iommu_group:
            return held[1]
        devices = [vfio_device_of(platform, dev) for dev in platform.devices.values() if dev.group is iommu_group]
        group = VfioGroup(iommu_group, devices)
        for vdev in devices:
            vdev.group = group  # vfio_device->group
        # the kernel has the group from the device's registration on: a cdev bound before the
        # model made it was counted by vfio_device_block_group() (model/vfio/device_cdev.py)
        group.cdev_device_open_cnt = sum(1 for d in devices if getattr(d, "cdev_opened", False))
        _GROUPS[id(iommu_group)] = (iommu_group, group)
        return group


class VfioGroupFile:
    """An open /dev/vfio/N: the descriptor's reference and each device file's (release runs
    when the last goes: vfio_group_fops_release())."""

    def __init__(self, group: VfioGroup):
        self.group = group
        self.refs = 1
        self.released = False

    def put(self) -> None:
        """fput(): the last reference releases the file (vfio_group_fops_release(), group.c:458):
        the container's reference goes, the group can be opened again."""
        group = self.group
        with group.lock:
            self.refs -= 1
            if self.refs or self.released:
                return
            self.released = True
            ictx, group.iommufd = group.iommufd, None
            group.opened_file = None
        if ictx is not None:
            iommufd_ctx_put(ictx)

    # -- ioctls ------------------------------------------------------------------------------------

    def ioctl(self, task, cmd: int, arg: int, fd_add) -> int:
        """vfio_group_fops_unl_ioctl() (group.c:364). `fd_add(df)`: FD_ADD(O_CLOEXEC, file) of a
        device file into the caller's table, its number (IommufdError on failure, the file not
        installed)."""
        if cmd == B.VFIO_GROUP_GET_DEVICE_FD:
            return self.get_device_fd(task, arg, fd_add)
        if cmd == B.VFIO_GROUP_GET_STATUS:
            return self.get_status(task, arg)
        if cmd == B.VFIO_GROUP_SET_CONTAINER:
            return self.set_container(task, arg)
        if cmd == B.VFIO_GROUP_UNSET_CONTAINER:
            return self.unset_container()
        raise IommufdError(errno.ENOTTY)

    def get_status(self, task, arg: int) -> int:
        """vfio_group_ioctl_get_status() (group.c:325)."""
        minsz = 8  # offsetofend(struct vfio_group_status, flags)
        data = task.mm.read(arg, minsz)
        argsz = int.from_bytes(data[0:4], "little")
        if argsz < minsz:
            raise IommufdError(errno.EINVAL)
        group = self.group
        with group.lock:
            if group.iommu_group is None:
                raise IommufdError(errno.ENODEV)
            flags = 0
            if group.has_iommu():
                flags = B.VFIO_GROUP_FLAGS_CONTAINER_SET | B.VFIO_GROUP_FLAGS_VIABLE
            elif not group.iommu_group.owner_cnt:  # !iommu_group_dma_owner_claimed()
                flags = B.VFIO_GROUP_FLAGS_VIABLE
        task.mm.write(arg, data[0:4] + flags.to_bytes(4, "little"))
        return 0

    def set_container(self, task, arg: int) -> int:
        """vfio_group_ioctl_set_container() (group.c:108) with an iommufd."""
        from model.vfio_compat import iommufd_vfio_compat_ioas_create

        fd = int.from_bytes(task.mm.read(arg, 4), "little", signed=True)  # get_user()
        fget_inode(task.pid, fd)  # CLASS(fd): EBADF
        group = self.group
        with group.lock:
            if group.has_iommu():
                raise IommufdError(errno.EINVAL)
            if group.iommu_group is None:
                raise IommufdError(errno.ENODEV)
            # vfio_container_from_file(): VFIO's type1 container is not modelled (none exists)
            ictx = iommufd_ctx_from_fd(task.pid, fd)  # EBADFD: "The FD passed is not recognized"
            try:
                with ictx.lock:
                    iommufd_vfio_compat_ioas_create(ictx)
            except BaseException:
                iommufd_ctx_put(ictx)
                raise
            group.iommufd = ictx
        return 0

    def unset_container(self) -> int:
        """vfio_group_ioctl_unset_container() (group.c:83)."""
        group = self.group
        with group.lock:
            if not group.has_iommu():
                raise IommufdError(errno.EINVAL)
            ictx, group.iommufd = group.iommufd, None
        if ictx is not None:
            iommufd_ctx_put(ictx)
        return 0

    def get_device_fd(self, task, arg: int, fd_add) -> int:
        """vfio_group_ioctl_get_device_fd() (group.c:303)."""
        buf = strndup_user(task.mm, arg, PAGE_SIZE)
        device = vfio_device_get_from_name(self.group, buf)
        df = vfio_device_open_file(self, device)
        try:
            return fd_add(df)
        except BaseException:
            vfio_group_device_release(df)  # fput() of the file FD_ADD could not install
            raise


def strndup_user(mem, addr: int, n: int) -> str:
    """strndup_user() (mm/util.c): the NUL-terminated string at addr; EFAULT when it cannot be
    read up to its NUL, EINVAL when there is no NUL in n bytes."""
    data = mem.read_partial(addr, n)
    nul = data.find(b"\0")
    if nul < 0:
        raise IommufdError(errno.EINVAL if len(data) >= n else errno.EFAULT)
    return data[:nul].decode("latin-1")


def vfio_pci_core_match(device, buf: str) -> int:
    """vfio_pci_core_match() (vfio_pci_core.c:2013) with vfio_pci_core_match_token_uuid()
    (:1920) for a function that is neither an SR-IOV PF nor a VF (the played machines'): 1 on
    a match, 0 for another name, -EINVAL for a bad option or any VF token."""
    name = device.dev.bdf
    if not buf.startswith(name):
        return 0
    vf_token = False
    if len(buf) > len(name):
        rest = buf[len(name):]
        if rest[0] != " ":
            return 0
        i = 0
        while i < len(rest):
            if rest[i] == " ":
                i += 1
                continue
            if not vf_token and rest.startswith(VF_TOKEN_ARG, i):
                i += len(VF_TOKEN_ARG)
                if len(rest) - i < UUID_STRING_LEN:
                    return -errno.EINVAL
                if not _UUID.fullmatch(rest[i:i + UUID_STRING_LEN]):  # uuid_parse(): uuid_is_valid()
                    return -errno.EINVAL
                vf_token = True
                i += UUID_STRING_LEN
            else:
                return -errno.EINVAL  # unknown or duplicate option
    if vf_token:
        return -errno.EINVAL  # "VF token incorrectly provided, not a PF or VF"
    return 1


def vfio_device_get_from_name(group: VfioGroup, buf: str):
    """vfio_device_get_from_name() (group.c:31): the first device of the group whose match()
    says so; its error stops the search; ENODEV for none."""
    for device in group.devices:
        ret = vfio_pci_core_match(device, buf)
        if ret < 0:
            raise IommufdError(-ret)
        if ret:
            return device
    raise IommufdError(errno.ENODEV)


def vfio_iommufd_compat_attach_ioas(device, ictx) -> None:
    """vfio_iommufd_compat_attach_ioas() (drivers/vfio/iommufd.c:35): the device attached to
    the context's compat IOAS (ENODEV without one)."""
    from model.vfio_compat import iommufd_vfio_compat_ioas_get_id

    with ictx.lock:
        ioas_id = iommufd_vfio_compat_ioas_get_id(ictx)
    device.attach_ioas(device, ioas_id)


def vfio_df_group_open(df: VfioDeviceFile) -> None:
    """vfio_df_group_open() (group.c:171): EINVAL without a container; the device opened with
    the group's iommufd (its first open binds it), the first open attached to the compat IOAS;
    then access is granted."""
    device = df.device
    group = df.group
    with group.lock:
        if not group.has_iommu():
            raise IommufdError(errno.EINVAL)
        with device.dev_set_lock:
            df.iommufd = group.iommufd
            try:
                vfio_df_open(df)
            except BaseException:
                df.iommufd = None
                raise
            if df.iommufd is not None and device.open_count == 1:
                try:
                    vfio_iommufd_compat_attach_ioas(device, df.iommufd)
                except BaseException:
                    vfio_df_close(df)
                    df.iommufd = None
                    raise
            df.access_granted = True


def vfio_df_group_close(df: VfioDeviceFile) -> None:
    """vfio_df_group_close() (group.c:237)."""
    device = df.device
    with df.group.lock, device.dev_set_lock:
        vfio_df_close(df)
        df.iommufd = None
        df.access_granted = False


def vfio_device_open_file(gfile: VfioGroupFile, device) -> VfioDeviceFile:
    """vfio_device_open_file() (group.c:254): a device file of the group path, opened; it
    holds the group file."""
    df = VfioDeviceFile(device)
    df.group = gfile.group
    vfio_df_group_open(df)
    with gfile.group.lock:
        gfile.refs += 1
    df.group_file = gfile
    return df


def vfio_group_device_release(df: VfioDeviceFile) -> None:
    """vfio_device_fops_release() (vfio_main.c:648) of a group-path device file: the device
    closed through the group, then the group file it held."""
    vfio_df_group_close(df)
    gfile = getattr(df, "group_file", None)
    if gfile is not None:
        df.group_file = None
        gfile.put()


def vfio_group_fops_open(group: VfioGroup) -> VfioGroupFile:
    """vfio_group_fops_open() (group.c:417): EBUSY while a device of the group is bound through
    its cdev or the group is open already."""
    with group.lock:
        if group.cdev_device_open_cnt:
            raise IommufdError(errno.EBUSY)
        if group.opened_file is not None:
            raise IommufdError(errno.EBUSY)
        f = VfioGroupFile(group)
        group.opened_file = f
        return f
