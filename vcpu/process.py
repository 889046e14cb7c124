"""The vCPU process: set up, pin, report ready, run the guest until told to stop, report."""
from __future__ import annotations

import argparse
import os
import signal
import sys

import msgpack
import psutil
import zmq

from vcpu import abi
from vcpu.emu import guest
from vcpu.emu.bare import run_bare
from vcpu.emu.guest_haltpoll import make_guest_policy
from vcpu.emu.costs import Costs
from vcpu.emu.halt import Recorder, VCpu
from vcpu.policy import PolicySpec, make_host_policy
from vcpu.emu.single_task import RunQueue
from vcpu.emu.submit import Submitter


def siblings(cpus: list[int] | None, index: int) -> tuple[int, ...]:
    """The other vCPUs pinned to our CPU (unknown when unpinned: the scheduler moves us)."""
    if cpus is None:
        return ()
    return tuple(i for i, c in enumerate(cpus) if c == cpus[index] and i != index)


def runqueue(words: memoryview, spec: dict, index: int) -> RunQueue:
    """The single_task_running() stand-in, told which of our tasks run on other CPUs than ours."""
    cpus, device = spec["vcpu_cpus"], spec["device_cpu"]
    mine = siblings(cpus, index)
    elsewhere = tuple(i for i in range(spec["vcpus"]) if i != index and i not in mine)
    return RunQueue(words, elsewhere, cpus is None or device is None or device != cpus[index])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vcpu", description="one emulated vCPU (started by hostd)")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--index", type=int, required=True)
    args = ap.parse_args(argv)
    with open(os.path.join(args.run_dir, abi.SPEC_FILE), "rb") as f:
        spec = msgpack.unpackb(f.read())
    index = args.index
    abi.child_setup(f"{spec['vm']}/vcpu{index}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is hostd's to handle
    cpus = spec["vcpu_cpus"]
    if cpus is not None:
        # Pin before ZeroMQ starts its I/O threads: one that is not given a CPU inherits this one.
        psutil.Process().cpu_affinity([cpus[index]])
    words = abi.attach(spec["shm"])
    kvm = None
    # A vCPU alone on its core receives kicks on an I/O thread on the device's CPU, which wakes it
    # across CPUs as KVM's kick does (the irqfd's wake-up runs where the device writes it, then an
    # IPI). On the vCPU's core that thread stayed counted in nr_running after each kick it delivered
    # (EEVDF's delayed dequeue keeps a sleeper with negative lag queued until its CPU next picks,
    # and a polling vCPU never lets it), so /proc/loadavg ended ~every poll that followed a blocked
    # wake (vcpu/emu/single_task.py: 150 of 151 on an idle guest); on the device's CPU it goes as
    # soon as that CPU idles. vCPUs sharing a core (overcommit) keep theirs there: they end each
    # other's polls anyway, and their kicks on the device's CPU cost it the injections it must keep
    # up (bench: 2 vCPUs' 50k/s schedule fell to 97% kept). The greeting and the reports go out
    # through a second context on the device's CPU. Submits take neither: they are the ring and the
    # eventfd (vcpu/emu/submit.py).
    ctx = zmq.Context()
    out_ctx = zmq.Context()
    if spec["device_cpu"] is not None:
        out_ctx.set(zmq.THREAD_AFFINITY_CPU_ADD, spec["device_cpu"])
        if cpus is not None and cpus.count(cpus[index]) == 1 and cpus[index] != spec["device_cpu"]:
            ctx.set(zmq.THREAD_AFFINITY_CPU_ADD, spec["device_cpu"])
    kick = ctx.socket(zmq.PULL)
    kick.bind(abi.kick_endpoint(args.run_dir, index))
    req = out_ctx.socket(zmq.PUSH)
    abi.connect(req, abi.device_endpoint(args.run_dir))
    ctl = out_ctx.socket(zmq.PUSH)
    abi.connect(ctl, abi.control_endpoint(args.run_dir))
    try:
        req.send(msgpack.packb((abi.REQ_HELLO, index)))
        kick.setsockopt(zmq.RCVTIMEO, abi.HELLO_TIMEOUT_MS)
        kick.recv()  # the device's greeting: its kicks reach us
        kick.setsockopt(zmq.RCVTIMEO, -1)
        # Allocate (and touch) the sample buffers before saying ready: that CPU must not land in
        # the measurement window, where an idle guest's whole cost is a few ms per second.
        # The kvm backend builds its VM here too: KVM refuses a VM's ioctls to any other process.
        if spec["backend"] == "kvm":
            # lazy: numpy and ctypes, not an emulated vCPU's start-up cost
            from vcpu.kvm.kvm_vcpu import KvmVcpu

            kvm = KvmVcpu(spec, index, words)
        policy = PolicySpec.from_dict(spec["policy"])
        recorder = Recorder(spec["sample_capacity"]) if kvm is None else None
        trips = guest.RoundTrips(spec["sample_capacity"]) if spec["workload"] == "rr" else None
        ctl.send(msgpack.packb({"kind": "ready", "who": "vcpu", "index": index, "pid": os.getpid()}))
        # hostd sets RUN once every process is up, then kicks us.
        while not (words[abi.H_RUN] or words[abi.H_STOP]):
            kick.recv()
        if kvm is not None:
            kvm.run()
            ctl.send(msgpack.packb({"kind": "report", "who": "vcpu", "index": index, **kvm.report()}))
            return 0
        submit_fd = spec["submit_fds"][index] if spec["submit_fds"] else None
        if spec["extra"].get("bare"):  # rr's host reference: no vCPU in the loop
            run_bare(words, kick, Submitter(words, index, submit_fd, 0), index, trips, spec["safety_timeout_ms"])
            ctl.send(msgpack.packb({"kind": "report", "who": "vcpu", "index": index, **recorder.payload(),
                                    **trips.payload()}))
            return 0
        calibration = spec["calibration"]
        costs = Costs.of(policy.exit_cost_ns, calibration["costs_ns"] if calibration else None)
        # A blocked vCPU's timer wakes it on this CPU's hrtimer: without slack, as KVM's LAPIC timer.
        abi.set_timer_slack_ns(1)
        v = VCpu(
            words,
            index,
            kick,
            make_host_policy(policy),
            make_guest_policy(policy),
            policy.policy == "idle-poll",
            costs,
            recorder,
            spec["safety_timeout_ms"],
            siblings(cpus, index),
            runqueue(words, spec, index),
        )
        # The bare-metal io reference: the device writes alone; this vCPU just stays halted.
        workload = "idle" if spec["extra"].get("bare_io") else spec["workload"]
        sub = Submitter(words, index, submit_fd, costs.submit_ns) if submit_fd is not None else None
        guest.run(workload, v, sub, spec["interval_ns"], trips)
        ctl.send(msgpack.packb({"kind": "report", "who": "vcpu", "index": index, **recorder.payload(),
                                **(trips.payload() if trips else {})}))
    except Exception as exc:  # one line for the user; hostd reports which vCPU failed
        sys.stderr.write(f"vcpu{index}: {type(exc).__name__}: {exc}\n")
        return 1
    finally:
        if kvm is not None:
            kvm.close()
        for s in (kick, req, ctl):
            s.close(linger=2000)
        ctx.term()
        out_ctx.term()
    return 0
