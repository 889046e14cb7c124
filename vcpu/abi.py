"""The one contract between hostd, irqsrc and the vCPUs: shared-memory layout and channel names.

The segment is an array of u64 words. A 128-byte header is followed by one slot per vCPU.
Each slot is a whole number of 64-byte cache lines, and each line has a single writer, so a
vCPU spinning on its pending word never shares a line with another vCPU or with a word the
device writes for someone else. Nothing outside this module knows a byte offset.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import platform
import secrets
import signal

import zmq

WORD = 8
LINE_WORDS = 64 // WORD
HIST_BUCKETS = 32  # KVM's HALT_POLL_HIST_COUNT: log2 buckets, index = fls64(value)

# Header (hostd writes it, but for H_DEVICE_AWAKE).
H_MAGIC, H_NVCPUS, H_RUN, H_STOP = range(4)
H_DEVICE_AWAKE = 4  # the device writes: 1 unless it sleeps in epoll (vcpu/emu/single_task.py counts it)
HEADER_WORDS = 2 * LINE_WORDS
MAGIC = 0x48414C54504F4C4C  # "HALTPOLL"

# Wake paths, as each backend tags a wake's sample and hostd's report splits latency by them.
PATH_POLL, PATH_BLOCK, PATH_GUEST_POLL = 0, 1, 2

# vCPU states, as the `state` word shows them.
RUNNING, POLLING, BLOCKED, GUEST_POLLING = 0, 1, 2, 3
STATE_NAMES = ("RUNNING", "POLLING", "BLOCKED", "GUEST_POLLING")

# Slot line 0: written by the device only.
IRQ_SEQ = 0      # bumped once per injected interrupt
INJECT_NS = 1    # monotonic_ns of the latest injection, written before IRQ_SEQ
INJECT_TSC = 2   # kvm backend: host TSC of the latest injection, read by the guest's ISR
# Slot line 1: written by the vCPU's hot path only.
IRQ_ACK = 8            # last IRQ_SEQ consumed
STATE = 9
TIMER_DEADLINE_NS = 10  # armed guest timer, 0 = none
# Slot line 2: written by hostd (live parameters; PARAM_GEN bumped after the others).
HALT_POLL_NS = 16
HALT_POLL_NS_GROW = 17
HALT_POLL_NS_GROW_START = 18
HALT_POLL_NS_SHRINK = 19
PARAM_GEN = 20
RATE_MILLIHZ = 21  # workload rate (idle tick / timer frequency) in mHz, read by the device
# The live parameters by name, as `hostd set` and the control API name them.
PARAMS = {
    "halt_poll_ns": HALT_POLL_NS,
    "halt_poll_ns_grow": HALT_POLL_NS_GROW,
    "halt_poll_ns_grow_start": HALT_POLL_NS_GROW_START,
    "halt_poll_ns_shrink": HALT_POLL_NS_SHRINK,
    "tick_millihz": RATE_MILLIHZ,
}

# From line 3 on: the vCPU's statistics (single writer: the vCPU), KVM's names first.
COUNTERS = (
    "halt_exits",
    "halt_attempted_poll",
    "halt_successful_poll",
    "halt_poll_invalid",
    "halt_wakeup",
    "halt_poll_success_ns",
    "halt_poll_fail_ns",
    "halt_wait_ns",
    "halt_poll_ns",  # the per-vCPU value the (adaptive) policy holds now
    "irq_delivered",
    "irq_coalesced",
    "spurious_wakeup",
    "lost_wakeup",
    "late_wakeup",  # the safety net fired first, but the kick did arrive within a grace period
    "halt_poll_preempted",  # failed polls cut short because another task wanted the CPU
    "block_wake_excess_ns",  # blocked wakes' time beyond the kernel's resume (profile), kept from the policies
    "guest_halt_poll_success",
    "guest_halt_poll_fail",
    "guest_halt_poll_ns",  # the guest governor's current poll_limit_ns
    "guest_poll_ns",       # time spent polling inside the guest
    "idle_periods",        # times the guest went idle (halted or guest-polled)
    "timer_local",         # guest timer expiries the vCPU took on its own timer (polling or blocked)
    "ops",                 # workload operations completed (io writes, timer wakes, ticks)
    "samples_dropped",     # wake samples beyond the recording buffer
    "ring_full",           # submits that found the ring full: a protocol bug, fails the exactly-once check
)
COUNTERS_BASE = 3 * LINE_WORDS
C = {name: COUNTERS_BASE + i for i, name in enumerate(COUNTERS)}
# Of those words, the gauges: levels the policies move both ways (no rate, a Prometheus gauge,
# checked against their bounds, never for monotonicity). Every other word only ever grows.
GAUGES = frozenset({"halt_poll_ns", "guest_halt_poll_ns"})
assert GAUGES <= C.keys()

HISTS = (
    "halt_poll_success_hist", "halt_poll_fail_hist", "halt_wait_hist",
    # Emulator-only: wake latency by path, for live percentiles while a VM runs.
    "wake_latency_poll_hist", "wake_latency_block_hist",
)
_HIST_BASE = COUNTERS_BASE + -(-len(COUNTERS) // LINE_WORDS) * LINE_WORDS
HIST = {name: _HIST_BASE + i * HIST_BUCKETS for i, name in enumerate(HISTS)}

# The submit ring (io and rr: DESIGN §3 Submit), single producer, single consumer. Its first line
# is the guest's (the head, then the entries: each the guest's monotonic_ns at the submit); the
# next is the device's (the tail). Head and tail count submits from the start and never wrap.
RING_HEAD = _HIST_BASE + len(HISTS) * HIST_BUCKETS
RING_ENTRIES = RING_HEAD + 1
RING_CAP = LINE_WORDS - 1  # one request is in flight per vCPU: more than enough
RING_TAIL = RING_HEAD + LINE_WORDS

SLOT_WORDS = RING_TAIL + LINE_WORDS
assert SLOT_WORDS % LINE_WORDS == 0

SHM_PREFIX = "hpemu"


def segment_size(nvcpus: int) -> int:
    return (HEADER_WORDS + nvcpus * SLOT_WORDS) * WORD


def slot_base(index: int) -> int:
    """Word index of vCPU `index`'s slot; add a field constant to address a word."""
    return HEADER_WORDS + index * SLOT_WORDS


def byte_offset(word: int) -> int:
    """Byte offset of a word in the segment, for a guest that maps the segment (kvm backend)."""
    return word * WORD


def segment_name(owner_pid: int) -> str:
    """`hpemu.<pid>.<random>`: recognisable, and the owner is known if a crash leaves it behind."""
    return f"{SHM_PREFIX}.{owner_pid}.{secrets.token_hex(4)}"


def segment_owner(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == SHM_PREFIX and parts[1].isdigit():
        return int(parts[1])
    return None


def run_dir_prefix(vm: str, owner_pid: int) -> str:
    """The run's private directory (mkdtemp adds a suffix without '-'): its owner is known too."""
    return f"{SHM_PREFIX}-{vm}-{owner_pid}-"


def run_dir_owner(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) >= 4 and parts[0] == SHM_PREFIX and parts[-2].isdigit():
        return int(parts[-2])
    return None


def attach(name: str) -> memoryview:
    """Map an existing segment as u64 words, for the life of the process.

    Plain mmap rather than SharedMemory: in a child, SharedMemory's resource tracker would
    unlink the segment when the child exits, and only hostd owns it.
    """
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    try:
        return memoryview(mmap.mmap(fd, 0)).cast("Q")
    finally:
        os.close(fd)


def set_param(words: memoryview, nvcpus: int, name: str, value: int) -> None:
    """Write a live parameter for every vCPU, then bump PARAM_GEN: used from each one's next halt."""
    off = PARAMS[name]
    for i in range(nvcpus):
        b = slot_base(i)
        words[b + off] = value
        words[b + PARAM_GEN] += 1


def hist_bucket(value_ns: int) -> int:
    """KVM_STATS_LOG_HIST_UPDATE: bucket fls64(value), the last bucket catching the rest."""
    b = value_ns.bit_length()
    return b if b < HIST_BUCKETS else HIST_BUCKETS - 1


# Wake channels: ZeroMQ ipc endpoints inside the run's private directory (mode 0700).
def kick_endpoint(run_dir: str, index: int) -> str:
    """Each vCPU binds a PULL socket here; the device (and hostd, to stop it) PUSH one-frame kicks."""
    return f"ipc://{run_dir}/vcpu{index}.kick"


def device_endpoint(run_dir: str) -> str:
    """The device's PULL socket: hostd's commands and the vCPUs' greetings (submits use the ring)."""
    return f"ipc://{run_dir}/irqsrc.req"


def control_endpoint(run_dir: str) -> str:
    """hostd's PULL socket: children report ready, then send their final report."""
    return f"ipc://{run_dir}/hostd.ctl"


SPEC_FILE = "spec.msgpack"

# Device control messages (first element of a msgpack list).
REQ_GO, REQ_STOP, REQ_HELLO = range(3)

# Readiness proves both wake paths connected: the device greets each vCPU with one kick
# frame and each vCPU greets the device with REQ_HELLO; nobody reports ready before its
# greeting arrived, so no interrupt of the run waits on a ZeroMQ reconnect (100 ms default).
RECONNECT_IVL_MS = 2
HELLO_TIMEOUT_MS = 15_000


def connect(sock: zmq.Socket, endpoint: str) -> None:
    """Connect, retrying quickly: the peer may bind an instant after we start."""
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.connect(endpoint)


# Conventions every child process follows (part of the contract: hostd relies on them).
_PR_SET_PDEATHSIG, _PR_SET_NAME, _PR_SET_TIMERSLACK = 1, 15, 29
_libc = ctypes.CDLL(None, use_errno=True)


def child_setup(comm: str) -> None:
    """Name the process for ps/top (as QEMU names `CPU 0/KVM`) and die with hostd.

    The parent-death signal means a SIGKILLed hostd leaves no orphans spinning on a core.
    """
    set_process_name(comm)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the signal was armed
        os._exit(1)


def set_process_name(comm: str) -> None:
    _libc.prctl(_PR_SET_NAME, comm.encode()[:15], 0, 0, 0)


def set_timer_slack_ns(ns: int) -> None:
    """Default slack is 50 us; a timer device that sleeps toward a deadline needs ~1 ns."""
    _libc.prctl(_PR_SET_TIMERSLACK, ns, 0, 0, 0)


# --- Instructions Python lacks ------------------------------------------------------------------
def native_function(code: bytes, restype=None):
    """A few bytes of machine code in an executable page, callable through ctypes (~0.1 us)."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    fn = ctypes.CFUNCTYPE(restype)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    fn._page = page  # the code lives as long as the function does
    return fn


# The one fence the wake protocol needs. The device kicks only a vCPU whose `state` shows
# BLOCKED, and a vCPU re-checks `irq_seq` after storing BLOCKED. Each side stores, then loads the
# other's word: x86-TSO lets a load pass the side's own earlier store, so without a full fence on
# both sides each could miss the other (an interrupt published, no kick sent, the vCPU asleep).
_FENCE_CODE = {
    "x86_64": b"\x0f\xae\xf0\xc3",                   # mfence; ret
    "aarch64": b"\xbf\x3b\x03\xd5\xc0\x03\x5f\xd6",  # dmb ish; ret
}
if platform.machine() not in _FENCE_CODE:
    raise ImportError(f"no memory fence for {platform.machine()}: the wake protocol needs x86_64 or aarch64")
full_fence = native_function(_FENCE_CODE[platform.machine()])
