"""The floor processes: two pinned Python processes that wake each other, nothing else.

Run as `python -m bench.peers ROLE SHM CPU ...` by bench.floors. Roles:

- shm-inject / shm-poll: ping-pong a u64 word in shared memory, accessed exactly as
  vcpu/emu/halt.py does (memoryview cast 'Q' over the mapping). The injector writes a timestamp,
  then bumps the sequence word (the same store order as irqsrc/emu/inject.py); the poller spins on
  the sequence word, takes the time the moment it sees it move, and acks.
- pipe-inject / pipe-wait: the injector writes the timestamp into a pipe; the waiter is blocked
  in os.read, takes the time on return, and acks through a second pipe.
- zmq-inject / zmq-wait: the same through a ZeroMQ PUSH/PULL ipc pair, context created after
  pinning (as the emulator's vCPU does), so the I/O threads share their process's CPU.

Each sample is one-way: (time the receiver saw the wake) - (time the sender stamped it just
before its store/write), on the one system-wide monotonic clock, as the emulator measures.
Between wakes the injector spins a pseudo-random gap so the receiver is caught at a random
point of its loop (or has been asleep for a while), never right after its previous ack.
The receiver writes its samples into the shared segment; the parent reads them.
"""
from __future__ import annotations

import os
import sys
import time

from vcpu import abi

# Word layout of the floor segment (one writer per 64-byte line).
SEQ, TS = 0, 1          # line 0: injector
ACK = 8                 # line 1: receiver
READY_I, READY_R, STOP, COUNT, CPU_NS = 16, 17, 18, 19, 20  # line 2: flags, sample count, receiver CPU
SAMPLES = 24            # samples from here on

GAP_MIN_NS = 20_000
GAP_SPAN_NS = 40_000


def segment_words(capacity: int) -> int:
    return SAMPLES + capacity


def _gaps():
    """Deterministic pseudo-random gaps in [GAP_MIN_NS, GAP_MIN_NS + GAP_SPAN_NS) (an LCG; no allocation)."""
    x = 12345
    while True:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        yield GAP_MIN_NS + x % GAP_SPAN_NS


def _spin_until(t_ns: int) -> None:
    now = time.monotonic_ns
    while now() < t_ns:
        pass


def _cpu_ns() -> int:
    """This process's CPU time, every thread (ZeroMQ's I/O threads included)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return int((r.ru_utime + r.ru_stime) * 1e9)


def _wait_peer(w: memoryview, flag: int) -> None:
    while not w[flag]:
        time.sleep(0.001)


def shm_inject(w: memoryview, duration_ns: int) -> None:
    now = time.monotonic_ns
    w[READY_I] = 1
    _wait_peer(w, READY_R)
    end = now() + duration_ns
    gaps = _gaps()
    seq = 0
    while now() < end:
        _spin_until(now() + next(gaps))
        seq += 1
        w[TS] = now()
        w[SEQ] = seq
        while w[ACK] != seq:
            pass
    w[STOP] = 1
    w[SEQ] = seq + 1  # release the poller


def shm_poll(w: memoryview, capacity: int) -> None:
    now = time.monotonic_ns
    ack = 0
    n = 0
    c0 = _cpu_ns()
    w[READY_R] = 1
    while True:
        while w[SEQ] == ack:
            pass
        t = now()
        if w[STOP]:
            break
        ack = w[SEQ]
        if n < capacity:
            w[SAMPLES + n] = t - w[TS]
            n += 1
        w[ACK] = ack
    w[COUNT] = n
    w[CPU_NS] = _cpu_ns() - c0


def _inject(w: memoryview, duration_ns: int, send, wait_ack, settle_s: float = 0.0) -> None:
    """The sender of a blocking ping-pong: stamp, send, wait for the ack; one loop, any transport."""
    now = time.monotonic_ns
    w[READY_I] = 1
    _wait_peer(w, READY_R)
    time.sleep(settle_s)
    end = now() + duration_ns
    gaps = _gaps()
    while now() < end:
        _spin_until(now() + next(gaps))
        send(now().to_bytes(8, "little"))
        wait_ack()
    w[STOP] = 1
    send(b"\0" * 8)


def _wait(w: memoryview, capacity: int, recv, ack) -> None:
    """The receiver: block in recv, stamp on wake, record, ack."""
    now = time.monotonic_ns
    n = 0
    c0 = _cpu_ns()
    w[READY_R] = 1
    while True:
        data = recv()
        t = now()
        if w[STOP]:
            break
        if n < capacity:
            w[SAMPLES + n] = t - int.from_bytes(data, "little")
            n += 1
        ack()
    w[COUNT] = n
    w[CPU_NS] = _cpu_ns() - c0


def pipe_inject(w: memoryview, duration_ns: int, wfd: int, ackfd: int) -> None:
    _inject(w, duration_ns, lambda b: os.write(wfd, b), lambda: os.read(ackfd, 1))


def pipe_wait(w: memoryview, capacity: int, rfd: int, ackfd: int) -> None:
    _wait(w, capacity, lambda: os.read(rfd, 8), lambda: os.write(ackfd, b"a"))


def zmq_inject(w: memoryview, duration_ns: int, run_dir: str) -> None:
    import zmq

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"ipc://{run_dir}/wake")
    ack = ctx.socket(zmq.PULL)
    ack.bind(f"ipc://{run_dir}/ack")
    try:
        _inject(w, duration_ns, push.send, ack.recv, settle_s=0.05)  # let both connections establish
    finally:
        push.close(linger=1000)
        ack.close(linger=0)
        ctx.term()


def zmq_wait(w: memoryview, capacity: int, run_dir: str) -> None:
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"ipc://{run_dir}/wake")
    ack = ctx.socket(zmq.PUSH)
    ack.connect(f"ipc://{run_dir}/ack")
    try:
        _wait(w, capacity, pull.recv, lambda: ack.send(b"a"))
    finally:
        pull.close(linger=0)
        ack.close(linger=0)
        ctx.term()


def main(argv: list[str]) -> int:
    role, shm, cpu = argv[0], argv[1], int(argv[2])
    rest = argv[3:]
    abi.child_setup(f"bench/{role}")
    os.sched_setaffinity(0, {cpu})
    w = abi.attach(shm)
    if role == "shm-inject":
        shm_inject(w, int(rest[0]))
    elif role == "shm-poll":
        shm_poll(w, int(rest[0]))
    elif role == "pipe-inject":
        pipe_inject(w, int(rest[0]), int(rest[1]), int(rest[2]))
    elif role == "pipe-wait":
        pipe_wait(w, int(rest[0]), int(rest[1]), int(rest[2]))
    elif role == "zmq-inject":
        zmq_inject(w, int(rest[0]), rest[1])
    elif role == "zmq-wait":
        zmq_wait(w, int(rest[0]), rest[1])
    else:
        sys.stderr.write(f"bench.peers: unknown role {role!r}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
