"""The slice of the KVM ioctl API the kvm backend needs (x86-64, include/uapi/linux/kvm.h).

ioctls go through libc's `ioctl` via ctypes: `fcntl.ioctl` refuses an immutable buffer over
1024 bytes (KVM_SET_CPUID2) and an int argument above 2^31 (KVM_SET_TSS_ADDR), DESIGN §9.
ctypes releases the GIL around the call, so a thread blocked in KVM_RUN blocks nobody else.
"""
from __future__ import annotations

import ctypes
import mmap
import os
from ctypes import c_char, c_int16, c_uint8, c_uint16, c_uint32, c_uint64

KVMIO = 0xAE
KVM_API_VERSION = 12


def _io(nr: int) -> int:
    return (KVMIO << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (KVMIO << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (KVMIO << 8) | nr


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (KVMIO << 8) | nr


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [("slot", c_uint32), ("flags", c_uint32), ("guest_phys_addr", c_uint64),
                ("memory_size", c_uint64), ("userspace_addr", c_uint64)]


class kvm_regs(ctypes.Structure):
    _fields_ = [(n, c_uint64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint32), ("selector", c_uint16), ("type", c_uint8),
                ("present", c_uint8), ("dpl", c_uint8), ("db", c_uint8), ("s", c_uint8), ("l", c_uint8),
                ("g", c_uint8), ("avl", c_uint8), ("unusable", c_uint8), ("padding", c_uint8)]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


class kvm_sregs(ctypes.Structure):
    _fields_ = [(n, kvm_segment) for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")] + [
        ("gdt", kvm_dtable), ("idt", kvm_dtable)] + [
        (n, c_uint64) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")] + [
        ("interrupt_bitmap", c_uint64 * 4)]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [(n, c_uint32) for n in ("function", "index", "flags", "eax", "ebx", "ecx", "edx")] + [
        ("padding", c_uint32 * 3)]


CPUID_MAX_ENTRIES = 256


class kvm_cpuid2(ctypes.Structure):
    _fields_ = [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * CPUID_MAX_ENTRIES)]


class kvm_irqfd(ctypes.Structure):
    _fields_ = [("fd", c_uint32), ("gsi", c_uint32), ("flags", c_uint32), ("resamplefd", c_uint32),
                ("pad", c_uint8 * 16)]


class kvm_ioeventfd(ctypes.Structure):
    _fields_ = [("datamatch", c_uint64), ("addr", c_uint64), ("len", c_uint32), ("fd", ctypes.c_int32),
                ("flags", c_uint32), ("pad", c_uint8 * 36)]


KVM_IOEVENTFD_FLAG_PIO = 1 << 1


class kvm_enable_cap(ctypes.Structure):
    _fields_ = [("cap", c_uint32), ("flags", c_uint32), ("args", c_uint64 * 4), ("pad", c_uint8 * 64)]


class kvm_device_attr(ctypes.Structure):
    _fields_ = [("flags", c_uint32), ("group", c_uint32), ("attr", c_uint64), ("addr", c_uint64)]


class kvm_run_io(ctypes.Structure):
    _fields_ = [("direction", c_uint8), ("size", c_uint8), ("port", c_uint16), ("count", c_uint32),
                ("data_offset", c_uint64)]


class kvm_run(ctypes.Structure):
    """The head of the shared kvm_run page: what the exits we handle need."""
    _fields_ = [("request_interrupt_window", c_uint8), ("immediate_exit", c_uint8), ("padding1", c_uint8 * 6),
                ("exit_reason", c_uint32), ("ready_for_interrupt_injection", c_uint8), ("if_flag", c_uint8),
                ("flags", c_uint16), ("cr8", c_uint64), ("apic_base", c_uint64), ("io", kvm_run_io)]


class kvm_stats_header(ctypes.Structure):
    _fields_ = [(n, c_uint32) for n in ("flags", "name_size", "num_desc", "id_offset", "desc_offset", "data_offset")]


class kvm_stats_desc(ctypes.Structure):
    """Followed in the fd by `name_size` bytes of NUL-padded name."""
    _fields_ = [("flags", c_uint32), ("exponent", c_int16), ("size", c_uint16), ("offset", c_uint32),
                ("bucket_size", c_uint32)]


assert ctypes.sizeof(kvm_sregs) == 312 and ctypes.sizeof(kvm_regs) == 144
assert ctypes.sizeof(kvm_enable_cap) == 104 and ctypes.sizeof(kvm_irqfd) == 32
assert ctypes.sizeof(kvm_ioeventfd) == 64

KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, 8)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, ctypes.sizeof(kvm_userspace_memory_region))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IOEVENTFD = _iow(0x79, ctypes.sizeof(kvm_ioeventfd))
KVM_IRQFD = _iow(0x76, ctypes.sizeof(kvm_irqfd))
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, ctypes.sizeof(kvm_regs))
KVM_SET_REGS = _iow(0x82, ctypes.sizeof(kvm_regs))
KVM_GET_SREGS = _ior(0x83, ctypes.sizeof(kvm_sregs))
KVM_SET_SREGS = _iow(0x84, ctypes.sizeof(kvm_sregs))
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_ENABLE_CAP = _iow(0xA3, ctypes.sizeof(kvm_enable_cap))
KVM_GET_TSC_KHZ = _io(0xA3)
KVM_GET_STATS_FD = _io(0xCE)
KVM_GET_DEVICE_ATTR = _iow(0xE2, ctypes.sizeof(kvm_device_attr))

# Capabilities (KVM_CHECK_EXTENSION), and what the backend needs each one for.
KVM_CAP_IRQCHIP = 0
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_IRQFD = 32
KVM_CAP_IOEVENTFD = 36
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_VCPU_ATTRIBUTES = 127
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_HALT_POLL = 182
KVM_CAP_BINARY_STATS_FD = 203
REQUIRED_CAPS = (
    (KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "the in-kernel interrupt controller"),
    (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest memory"),
    (KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", "a real-mode guest"),
    (KVM_CAP_IRQFD, "KVM_CAP_IRQFD", "device interrupts through eventfds"),
    (KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", "I/O submits handled in the kernel, as a VMM's virtio notify"),
    (KVM_CAP_TSC_DEADLINE_TIMER, "KVM_CAP_TSC_DEADLINE_TIMER", "the guest's TSC-deadline timer"),
    (KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "stopping a halted guest"),
    (KVM_CAP_HALT_POLL, "KVM_CAP_HALT_POLL", "a per-VM halt-poll budget"),
    (KVM_CAP_VCPU_ATTRIBUTES, "KVM_CAP_VCPU_ATTRIBUTES", "reading the guest's TSC offset"),
    (KVM_CAP_BINARY_STATS_FD, "KVM_CAP_BINARY_STATS_FD", "the kernel's halt statistics"),
)

# Exit reasons: a port write to user space (bench/vmm_floor.py's pipe submit; the backend's guest
# makes none, its submit is a KVM_IOEVENTFD), and names for the ones that mean it went wrong.
KVM_EXIT_IO = 2
EXIT_NAMES = {0: "KVM_EXIT_UNKNOWN", 1: "KVM_EXIT_EXCEPTION", 2: "KVM_EXIT_IO", 5: "KVM_EXIT_HLT", 6: "KVM_EXIT_MMIO",
              8: "KVM_EXIT_SHUTDOWN (triple fault)", 9: "KVM_EXIT_FAIL_ENTRY", 17: "KVM_EXIT_INTERNAL_ERROR"}

KVM_VCPU_TSC_CTRL = 0
KVM_VCPU_TSC_OFFSET = 0

TSS_ADDR = 0xFFFBD000  # three pages below the BIOS, where QEMU puts it too

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int


class KvmUnavailable(Exception):
    """KVM cannot be used here; the message is one line: what is missing and what to do."""


def kvm_dev() -> str:
    """The device node, overridable so tests can prove the refusal on any machine."""
    return os.environ.get("HPEMU_KVM_DEV", "/dev/kvm")


def ioctl(fd: int, request: int, arg=None) -> int:
    """ioctl(2); `arg` is an int, a ctypes object (passed by reference) or None."""
    if arg is None or isinstance(arg, int):
        p = arg
    else:
        p = ctypes.addressof(arg)
    r = _ioctl(fd, request, p)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def open_kvm() -> int:
    dev = kvm_dev()
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KvmUnavailable(f"{dev} does not exist: load kvm_intel or kvm_amd, with VT-x/AMD-V on in "
                             "the firmware (nested virtualization on, inside a VM)") from None
    except PermissionError:
        raise KvmUnavailable(f"{dev}: permission denied: add yourself to group kvm "
                             "(sudo usermod -aG kvm $USER, then log in again)") from None
    except OSError as exc:
        raise KvmUnavailable(f"{dev}: {exc.strerror}: not a usable KVM device") from None
    try:
        version = ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        os.close(fd)
        raise KvmUnavailable(f"{dev} is not a KVM device ({exc.strerror})") from None
    if version != KVM_API_VERSION:
        os.close(fd)
        raise KvmUnavailable(f"{dev}: KVM API version {version}, expected {KVM_API_VERSION}")
    return fd


def missing_cap(has) -> str | None:
    """The refusal for the first capability `has(cap)` denies, or None: one line, what and why."""
    for cap, name, why in REQUIRED_CAPS:
        if not has(cap):
            return f"{kvm_dev()}: the kernel lacks {name} ({why}): use a Linux kernel of 5.16 or later"
    return None


def check_caps(kvm_fd: int) -> None:
    why = missing_cap(lambda cap: ioctl(kvm_fd, KVM_CHECK_EXTENSION, cap) > 0)
    if why:
        raise KvmUnavailable(why)


def ioeventfd(vm_fd: int, port: int, fd: int) -> None:
    """A guest's 1-byte write to `port` signals eventfd `fd` inside the kernel: the exit never
    reaches user space (a VMM's virtio notify)."""
    ioctl(vm_fd, KVM_IOEVENTFD, kvm_ioeventfd(addr=port, len=1, fd=fd, flags=KVM_IOEVENTFD_FLAG_PIO))


def create_vm(kvm_fd: int) -> int:
    try:
        return ioctl(kvm_fd, KVM_CREATE_VM, 0)
    except OSError as exc:
        raise KvmUnavailable(f"KVM_CREATE_VM failed ({exc.strerror}): hardware virtualization is off or "
                             "in use; enable VT-x/AMD-V (nested virtualization, inside a VM)") from None


def probe() -> None:
    """Raise KvmUnavailable unless a VM with what the backend needs can be made here (~1 ms)."""
    kvm = open_kvm()
    try:
        check_caps(kvm)
        os.close(create_vm(kvm))
    finally:
        os.close(kvm)


def enable_cap(fd: int, cap: int, *args: int) -> None:
    c = kvm_enable_cap(cap=cap)
    for i, a in enumerate(args):
        c.args[i] = a
    ioctl(fd, KVM_ENABLE_CAP, c)


def get_sregs(vcpu_fd: int) -> kvm_sregs:
    s = kvm_sregs()
    ioctl(vcpu_fd, KVM_GET_SREGS, s)
    return s


def get_regs(vcpu_fd: int) -> kvm_regs:
    r = kvm_regs()
    ioctl(vcpu_fd, KVM_GET_REGS, r)
    return r


def set_supported_cpuid(kvm_fd: int, vcpu_fd: int) -> None:
    """Give the vCPU every CPUID bit KVM supports (x2APIC and TSC-deadline among them)."""
    c = kvm_cpuid2(nent=CPUID_MAX_ENTRIES)
    ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c)
    ioctl(vcpu_fd, KVM_SET_CPUID2, c)


def tsc_offset(vcpu_fd: int) -> int:
    """Guest TSC minus host TSC for this vCPU, as a signed number of cycles."""
    v = c_uint64()
    a = kvm_device_attr(group=KVM_VCPU_TSC_CTRL, attr=KVM_VCPU_TSC_OFFSET, addr=ctypes.addressof(v))
    ioctl(vcpu_fd, KVM_GET_DEVICE_ATTR, a)
    return ctypes.c_int64(v.value).value


def map_run(kvm_fd: int, vcpu_fd: int) -> tuple[mmap.mmap, kvm_run]:
    size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE)
    m = mmap.mmap(vcpu_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    return m, kvm_run.from_buffer(m)


def buffer_address(buf) -> int:
    """Address of a writable buffer (mmap, bytearray), for KVM's userspace_addr."""
    return ctypes.addressof(c_char.from_buffer(buf))


def run(vcpu_fd: int) -> int:
    """KVM_RUN once: 0, or -errno (EINTR when a signal or immediate_exit ended it)."""
    r = _ioctl(vcpu_fd, KVM_RUN, None)
    return r if r >= 0 else -ctypes.get_errno()

