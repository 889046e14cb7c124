"""`python -m bench.vmm_floor [--seconds S] [--cap-ns N] [--pipe] [--json] [--io-dir DIR]`:
the smallest VMM that runs the kvm backend's guest on the same kernel, as a floor for its io path.

One KVM VM with one vCPU runs the project's guest image (vcpu/kvm/kvm_guest.py) with workload io:
the guest writes its submit port, halts, and takes the completion interrupt. Nothing else of the
project is used (a test holds this file to vcpu.kvm.kvm_api's ioctl numbers and structs and to
vcpu.kvm.kvm_guest's image): no KvmVm, no injector, no WriteDevice, no hostd.

- submit: the port write signals an eventfd inside the kernel (KVM_IOEVENTFD; the vCPU never
  returns to us), or with --pipe it exits to this loop, which writes one byte to a pipe;
- the device: a forked child on the housekeeping CPU, blocked on that eventfd (or pipe), doing
  ONE 4 KiB os.pwrite to an O_DSYNC file (256 blocks, allocated before the run and cycled, as
  the project's device does), then an eventfd write on the irqfd (GSI 0: the PIC's IRQ0, which
  the guest takes);
- the vCPU: this process's calling thread on the last allowed CPU, in KVM_RUN; a stopper thread
  ends it with immediate_exit and a signal.

Writes are counted by the guest itself (G_COUNT: interrupts taken, one per completed write).
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import json
import mmap
import os
import signal
import struct
import sys
import tempfile
import threading
import time

from vcpu.kvm import kvm_api as k
from vcpu.kvm import kvm_guest as g

SEED_CAP_NS = 769_230        # the seed's 2,000,000 cycles at 2.6 GHz
DEFAULT_IO_DIR = "/var/tmp"  # disk-backed, where the project's device file lives
BLOCK = 4096
IO_SPAN = 256                # blocks cycled over, as the project's device does
INJECT_GPA = 0x9000          # the guest ISR reads a "device stamp" here: any RAM word will do
IRQ_GSI = 0
STOP_SIGNAL = signal.SIGUSR1
STOP_EVENT = 1 << 40         # an eventfd value no submit can reach: the device's "stop"
HALT_STATS = ("halt_exits", "halt_attempted_poll", "halt_successful_poll", "halt_poll_invalid", "halt_wakeup")


def cpus() -> tuple[int, int]:
    """(housekeeping CPU, vCPU CPU): the first and the last allowed CPU."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


# --- the device: a forked child, nothing but read, pwrite, irqfd write -----------------------
def _device(io_fd: int, irqfd: int, submit_fd: int, close_fd: int | None, cpu: int) -> None:
    """The forked child's whole life; never returns. close_fd: the pipe's write end (pipe submit)."""
    pipe = close_fd is not None
    code = 1
    try:
        if pipe:
            os.close(close_fd)  # EOF once the VMM closes its end
        os.sched_setaffinity(0, [cpu])
        buf = os.urandom(BLOCK)
        block = 0
        while True:
            if pipe:
                if not os.read(submit_fd, 1):
                    break
            elif os.eventfd_read(submit_fd) >= STOP_EVENT:
                break
            os.pwrite(io_fd, buf, block * BLOCK)
            block = (block + 1) % IO_SPAN
            os.eventfd_write(irqfd, 1)
        code = 0
    except BaseException as exc:
        sys.stderr.write(f"vmm_floor device: {type(exc).__name__}: {exc}\n")
    finally:
        os._exit(code)


# --- the VM ------------------------------------------------------------------------------------
def _halt_stats(stats_fd: int) -> dict:
    """The halt counters from the vCPU's binary stats fd (KVM_GET_STATS_FD)."""
    hdr = k.kvm_stats_header.from_buffer_copy(os.pread(stats_fd, ctypes.sizeof(k.kvm_stats_header), 0))
    dsize = ctypes.sizeof(k.kvm_stats_desc) + hdr.name_size
    raw = os.pread(stats_fd, dsize * hdr.num_desc, hdr.desc_offset)
    out = {}
    for i in range(hdr.num_desc):
        chunk = raw[i * dsize:(i + 1) * dsize]
        name = chunk[ctypes.sizeof(k.kvm_stats_desc):].split(b"\0", 1)[0].decode()
        if name in HALT_STATS:
            d = k.kvm_stats_desc.from_buffer_copy(chunk)
            out[name] = struct.unpack("<Q", os.pread(stats_fd, 8, hdr.data_offset + d.offset))[0]
    return out


def _cpu_busy_s(cpu_list: list[int]) -> float:
    """Busy seconds of these CPUs (differences only): elapsed less idle, iowait, irq, softirq. Idle
    is clocked at idle entry and exit; user/system are tick samples that alias with periodic
    loads (hostd.plumbing.hoststats.cpu_busy_s says more)."""
    want = {f"cpu{c}" for c in cpu_list}
    idle = 0
    now = time.monotonic()
    with open("/proc/stat") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name in want:
                v = [int(x) for x in rest.split()[:7]] + [0] * 7
                idle += v[3] + v[4] + v[5] + v[6]
    return len(want) * now - idle / os.sysconf("SC_CLK_TCK")


def _kernel_threads() -> dict[int, int]:
    """CPU ticks of each kernel thread: our O_DSYNC writes' journal work runs there."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == "2" or name == "2":
                out[int(name)] = int(fields[11]) + int(fields[12])
    return out


def _kernel_threads_since(before: dict[int, int]) -> float:
    """CPU seconds kernel threads used since `before`; a thread that ended in between is left
    out (counting its whole past as negative would make a neighbour out of nothing)."""
    now = _kernel_threads()
    return sum(t - before.get(pid, 0) for pid, t in now.items()) / os.sysconf("SC_CLK_TCK")


def _child_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def _reap(pid: int, timeout_s: float = 5.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def measure(cap_ns: int, seconds: float, pipe: bool = False, io_dir: str = DEFAULT_IO_DIR) -> dict:
    """Run the floor VMM for `seconds` with a halt-poll cap of `cap_ns`; writes/s and halt stats.
    Call from the main thread (the stop signal's handler is installed there)."""
    house, vcpu_cpu = cpus()
    fds: list[int] = []
    fd_file, path = tempfile.mkstemp(prefix="hpemu-floor-", suffix=".img", dir=io_dir)
    os.close(fd_file)
    pid = None
    old_handler = None
    affinity = os.sched_getaffinity(0)
    ram = run_map = run = None
    try:
        io_fd = os.open(path, os.O_RDWR | os.O_DSYNC | os.O_CLOEXEC)
        fds.append(io_fd)
        os.pwrite(io_fd, bytes(BLOCK * IO_SPAN), 0)  # allocated first, as the device's: overwrites only
        irqfd = os.eventfd(0, os.EFD_CLOEXEC)
        fds.append(irqfd)
        if pipe:
            sub_r, sub_w = os.pipe2(os.O_CLOEXEC)
            fds += [sub_r, sub_w]
        else:
            sub_r = sub_w = os.eventfd(0, os.EFD_CLOEXEC)
            fds.append(sub_r)
        pid = os.fork()  # before any KVM fd exists: the device never holds one
        if pid == 0:
            _device(io_fd, irqfd, sub_r, sub_w if pipe else None, house)
        if pipe:
            os.close(sub_r)
            fds.remove(sub_r)

        # The VM: TSS, in-kernel irqchip, the poll cap, RAM, one vCPU with KVM's CPUID, real mode.
        kvm = os.open(k.kvm_dev(), os.O_RDWR | os.O_CLOEXEC)
        fds.append(kvm)
        vm = k.ioctl(kvm, k.KVM_CREATE_VM, 0)
        fds.append(vm)
        k.ioctl(vm, k.KVM_SET_TSS_ADDR, k.TSS_ADDR)
        k.ioctl(vm, k.KVM_CREATE_IRQCHIP)
        cap = k.kvm_enable_cap(cap=k.KVM_CAP_HALT_POLL)
        cap.args[0] = cap_ns
        k.ioctl(vm, k.KVM_ENABLE_CAP, cap)
        ram = mmap.mmap(-1, g.RAM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
        k.ioctl(vm, k.KVM_SET_USER_MEMORY_REGION, k.kvm_userspace_memory_region(
            slot=0, guest_phys_addr=0, memory_size=len(ram),
            userspace_addr=ctypes.addressof(ctypes.c_char.from_buffer(ram))))
        vcpu = k.ioctl(vm, k.KVM_CREATE_VCPU, 0)
        fds.append(vcpu)
        cpuid = k.kvm_cpuid2(nent=k.CPUID_MAX_ENTRIES)
        k.ioctl(kvm, k.KVM_GET_SUPPORTED_CPUID, cpuid)
        k.ioctl(vcpu, k.KVM_SET_CPUID2, cpuid)
        s = k.kvm_sregs()
        k.ioctl(vcpu, k.KVM_GET_SREGS, s)
        s.cs.base = s.cs.selector = 0
        for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
            seg.base, seg.selector, seg.limit, seg.g = 0, 0, 0xFFFFFFFF, 1
        s.cr0 &= ~0x60000000  # CD, NW: caching on
        k.ioctl(vcpu, k.KVM_SET_SREGS, s)
        k.ioctl(vcpu, k.KVM_SET_REGS, k.kvm_regs(rip=g.LOAD_GPA, rsp=g.STACK_TOP, rflags=0x2))
        run_map = mmap.mmap(vcpu, k.ioctl(kvm, k.KVM_GET_VCPU_MMAP_SIZE), mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)
        run = k.kvm_run.from_buffer(run_map)
        with memoryview(ram) as mv:
            g.load(mv, "io", False, 0, INJECT_GPA)
        k.ioctl(vm, k.KVM_IRQFD, k.kvm_irqfd(fd=irqfd, gsi=IRQ_GSI))
        if not pipe:
            k.ioctl(vm, k.KVM_IOEVENTFD, k.kvm_ioeventfd(addr=g.SUBMIT_PORT, len=1, fd=sub_w,
                                                         flags=k.KVM_IOEVENTFD_FLAG_PIO))
        stats_fd = k.ioctl(vcpu, k.KVM_GET_STATS_FD)
        fds.append(stats_fd)

        # Run: the vCPU here on its CPU, the stopper on the housekeeping CPU.
        old_handler = signal.signal(STOP_SIGNAL, lambda signum, frame: None)
        me = threading.get_ident()

        def stopper() -> None:
            os.sched_setaffinity(0, [house])
            time.sleep(seconds)
            run.immediate_exit = 1
            signal.pthread_kill(me, STOP_SIGNAL)

        os.sched_setaffinity(0, [vcpu_cpu])
        stop = threading.Thread(target=stopper, name="vmm-floor-stopper")
        busy0, own0, kthreads0 = _cpu_busy_s([house, vcpu_cpu]), time.process_time(), _kernel_threads()
        thread0 = time.thread_time()
        t0 = time.monotonic()
        stop.start()
        exits = 0
        try:
            while True:
                try:
                    k.ioctl(vcpu, k.KVM_RUN)
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        break
                    raise
                if run.exit_reason == k.KVM_EXIT_IO and run.io.port == g.SUBMIT_PORT and pipe:
                    os.write(sub_w, b"x")
                    exits += 1
                    continue
                rip = k.kvm_regs()
                k.ioctl(vcpu, k.KVM_GET_REGS, rip)
                raise RuntimeError(f"guest stopped: {k.EXIT_NAMES.get(run.exit_reason, run.exit_reason)} "
                                   f"at rip {rip.rip:#x}")
        finally:
            stop.join()
            window = time.monotonic() - t0
            vcpu_thread_s = time.thread_time() - thread0
            os.sched_setaffinity(0, affinity)
        writes = struct.unpack_from("<I", ram, g.G_COUNT)[0]
        halts = _halt_stats(stats_fd)
        own = time.process_time() - own0 + _kernel_threads_since(kthreads0) + _child_cpu_s(pid)
        foreign = max(0.0, _cpu_busy_s([house, vcpu_cpu]) - busy0 - own) / window
        return {
            "submit": "pipe" if pipe else "ioeventfd", "cap_ns": cap_ns, "seconds": round(window, 3),
            "writes": writes, "writes_per_s": round(writes / window), "vmm_exits": exits,
            **halts,
            "poll_success_pct": round(100 * halts.get("halt_successful_poll", 0) / max(1, halts.get("halt_exits", 0)), 1),
            "vcpu_thread_core": round(vcpu_thread_s / window, 3),
            "device_core": round(_child_cpu_s(pid) / window, 3),
            "foreign_load": round(foreign, 3),
            "cpus": {"device": house, "vcpu": vcpu_cpu}, "io_file_dir": io_dir,
        }
    finally:
        if pid is not None:
            try:  # the device ends on EOF (pipe) or on STOP_EVENT (eventfd)
                if pipe:
                    fds.remove(sub_w)
                    os.close(sub_w)
                else:
                    os.eventfd_write(sub_w, STOP_EVENT)
            except OSError:
                pass
            code = _reap(pid)
            if code != 0:
                sys.stderr.write(f"vmm_floor: the device exited with {code}\n")
        if old_handler is not None:
            signal.signal(STOP_SIGNAL, old_handler)
        run = None  # the kvm_run view holds the mapping: dropped before the close
        if run_map is not None:
            run_map.close()
        for fd in reversed(fds):
            os.close(fd)
        if ram is not None:
            ram.close()
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.vmm_floor", description="The smallest VMM for the kvm backend's guest: "
                                 "synchronous O_DSYNC writes per second under a halt-poll cap.")
    ap.add_argument("--seconds", type=float, default=3.0, help="run time (default 3)")
    ap.add_argument("--cap-ns", type=int, default=0, help="KVM_CAP_HALT_POLL budget in ns (default 0)")
    ap.add_argument("--pipe", action="store_true", help="submit through a pipe from the vCPU loop, not KVM_IOEVENTFD")
    ap.add_argument("--io-dir", default=DEFAULT_IO_DIR, help=f"directory of the O_DSYNC file (default {DEFAULT_IO_DIR})")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        k.probe()
    except k.KvmUnavailable as exc:
        sys.stderr.write(f"bench.vmm_floor: {exc}\n")
        return 2
    if not os.path.isdir(args.io_dir):
        sys.stderr.write(f"bench.vmm_floor: --io-dir {args.io_dir}: not a directory\n")
        return 2
    r = measure(args.cap_ns, args.seconds, args.pipe, args.io_dir)
    if args.json:
        json.dump(r, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"minimal VMM, submit {r['submit']}, cap {r['cap_ns']} ns, {r['seconds']} s: "
          f"{r['writes_per_s']:,} writes/s ({r['writes']} writes)")
    print(f"halts {r.get('halt_exits')}, polls ok {r.get('halt_successful_poll')}/{r.get('halt_attempted_poll')} "
          f"({r['poll_success_pct']}% of halts); vCPU thread {r['vcpu_thread_core']} core, device "
          f"{r['device_core']} core; foreign load {r['foreign_load']} core on CPUs "
          f"{r['cpus']['device']},{r['cpus']['vcpu']}; file in {r['io_file_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
