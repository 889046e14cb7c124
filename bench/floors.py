"""The physical floors: what two bare Python processes, or the kernel itself, can do."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from multiprocessing import shared_memory

import numpy as np

from bench import peers
from irqsrc.emu.inject import Injector
from hostd.analysis.stats import CHUNKS, chunk_quantiles
from hostd.plumbing.results import percentiles
from vcpu import abi

SHM_PREFIX = "hpbench"
CAPACITY = 1 << 20


def segment_name() -> str:
    return f"{SHM_PREFIX}.{os.getpid()}.{secrets.token_hex(4)}"


def _spawn(role: str, shm: str, cpu: int, *args, pass_fds=()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.peers", role, shm, str(cpu), *map(str, args)],
        stdin=subprocess.DEVNULL, pass_fds=pass_fds,
    )


def _reap(procs: list[subprocess.Popen], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def ping_pong(kind: str, inject_cpu: int, wake_cpu: int, duration_s: float) -> dict:
    """One-way wake latency between two pinned processes: kind is 'shm', 'pipe' or 'zmq'.

    The injector sits where the emulator's device sits and the receiver where its vCPU sits.
    """
    shm = shared_memory.SharedMemory(segment_name(), create=True, size=8 * peers.segment_words(CAPACITY))
    w = shm.buf.cast("Q")
    procs: list[subprocess.Popen] = []
    fds: list[int] = []
    run_dir = None
    dur_ns = int(duration_s * 1e9)
    try:
        if kind == "shm":
            procs.append(_spawn("shm-poll", shm.name, wake_cpu, CAPACITY))
            procs.append(_spawn("shm-inject", shm.name, inject_cpu, dur_ns))
        elif kind == "pipe":
            r, wr = os.pipe()
            ar, aw = os.pipe()
            fds += [r, wr, ar, aw]
            procs.append(_spawn("pipe-wait", shm.name, wake_cpu, CAPACITY, r, aw, pass_fds=(r, aw)))
            procs.append(_spawn("pipe-inject", shm.name, inject_cpu, dur_ns, wr, ar, pass_fds=(wr, ar)))
        elif kind == "zmq":
            run_dir = tempfile.mkdtemp(prefix="hpbench-")
            procs.append(_spawn("zmq-wait", shm.name, wake_cpu, CAPACITY, run_dir))
            procs.append(_spawn("zmq-inject", shm.name, inject_cpu, dur_ns, run_dir))
        else:
            raise ValueError(kind)
        for fd in fds:
            os.close(fd)
        fds = []
        _reap(procs, duration_s + 20)
        failed = [p.returncode for p in procs if p.returncode]
        if failed:
            raise RuntimeError(f"{kind} floor: a peer process failed (exit {failed})")
        n = int(w[peers.COUNT])
        samples = np.array(w[peers.SAMPLES : peers.SAMPLES + n], dtype=np.int64)
        if n > 10:
            samples = samples[n // 20 :]  # drop the warm-up (first 5%)
        out = percentiles(samples)
        out["chunk_p50s"] = chunk_quantiles(samples, 0.5)
        out["receiver_cpu_us_per_wake"] = round(w[peers.CPU_NS] / max(1, n) / 1000, 2)
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for fd in fds:
            os.close(fd)
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        w.release()
        shm.close()
        shm.unlink()


def cyclictest(cpu: int, interval_us: int, duration_s: float, slack_ns: int | None = None) -> dict | None:
    """cyclictest, one SCHED_OTHER thread on `cpu`, every sample in ns; None where it is missing.

    --laptop: leave /dev/cpu_dma_latency alone, since the emulator's runs do not set it either.
    slack_ns: start it with this timer slack (inherited across fork and exec) instead of the
    default 50 us that a SCHED_OTHER thread's nanosleep otherwise adds.
    """
    exe = shutil.which("cyclictest")
    if exe is None:
        return None
    loops = max(10, int(duration_s * 1e6 / interval_us))
    cmd = [exe, "-t", "1", "-a", str(cpu), "-i", str(interval_us), "-l", str(loops),
           "--policy=other", "-N", "-v", "--laptop"]
    pre = None if slack_ns is None else partial(abi.set_timer_slack_ns, slack_ns)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=duration_s * 3 + 30, preexec_fn=pre)
    if proc.returncode != 0:
        raise RuntimeError(f"cyclictest failed (exit {proc.returncode}): {proc.stderr.strip()[:200]}")
    lat = [int(m.group(1)) for m in re.finditer(r"^\s*0:\s*\d+:\s*(\d+)\s*$", proc.stdout, re.M)]
    if not lat:
        raise RuntimeError("cyclictest printed no samples")
    samples = np.array(lat, dtype=np.int64)
    if samples.size > 10:
        samples = samples[samples.size // 20 :]
    out = percentiles(samples)
    out["chunk_p50s"] = chunk_quantiles(samples, 0.5)
    out["command"] = " ".join(cmd)
    out["timer_slack_ns"] = slack_ns if slack_ns is not None else "default (50000)"
    return out


def inject_ceiling(n: int = 50_000) -> dict:
    """The device's own inject() (timestamp, bump, kick) back to back, into a socket that never
    fills: the most interrupts/s one device core can emit, before any vCPU consumes them."""
    import zmq

    words = memoryview(bytearray(abi.segment_size(1))).cast("Q")
    run_dir = tempfile.mkdtemp(prefix="hpbench-")
    ctx = zmq.Context()
    try:
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, 0)
        pull.bind(f"ipc://{run_dir}/kick")
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 0)
        push.connect(f"ipc://{run_dir}/kick")
        inj = Injector(words, [push])
        inject = inj.inject
        for _ in range(1000):  # warm up the connection
            inject(0)
        chunk = max(1, n // CHUNKS)
        rates, t0 = [], time.monotonic_ns()
        for _ in range(CHUNKS):  # timed in chunks: their spread is the ceiling's
            c0 = time.monotonic_ns()
            for _ in range(chunk):
                inject(0)
            rates.append(chunk * 1e9 / (time.monotonic_ns() - c0))
        dt = time.monotonic_ns() - t0
        n = chunk * CHUNKS
        return {"per_s": n * 1e9 / dt, "ns_per_inject": dt / n, "kicks_dropped": inj.kicks_dropped,
                "chunk_per_s": rates}
    finally:
        ctx.destroy(linger=0)
        shutil.rmtree(run_dir, ignore_errors=True)
