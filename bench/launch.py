"""Launch-time probe, run as its own process: `python -m bench.launch N [emu|kvm]`.

Does what `hostd run --vcpus N --workload idle --policy none` does up to the point where every
vCPU is running its guest (the interpreter, hostd's imports, argument parsing, the segment,
the device and vCPU processes, pinning, go), then stops and tears the VM down. Prints the
monotonic timestamps of each step as JSON; the parent took its own stamp just before spawning.
"""
from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    # lazy: the probe's first stamp comes before hostd's imports, which are part of what it times
    from hostd.cli import build_parser
    from hostd.plumbing.orphans import remove_stale_segments
    from hostd.measure.window import spec_from_args
    from hostd.plumbing.vm import Vm
    from vcpu import abi

    main_ns = time.monotonic_ns()
    backend = argv[1] if len(argv) > 1 else "emu"
    args = build_parser().parse_args(["run", "--vcpus", argv[0], "--workload", "idle", "--policy", "none",
                                      "--duration", "1", "--backend", backend, "--calibration", "none"])
    spec, _ = spec_from_args(args)
    remove_stale_segments()
    vm = Vm(spec)
    try:
        vm.start()
        started_ns = time.monotonic_ns()
        vm.go()
        w = vm.words
        # Running: the emulator counts its idle periods; a kvm vCPU publishes the kernel's halts
        # (every 20 ms, so its figure may be that much late).
        counter = "idle_periods" if backend == "emu" else "halt_exits"
        idle = [abi.slot_base(i) + abi.C[counter] for i in range(spec.vcpus)]
        deadline = time.monotonic() + 30
        while not all(w[i] for i in idle):
            if time.monotonic() > deadline:
                raise TimeoutError("vCPUs did not start running")
            time.sleep(0.0002)
        running_ns = time.monotonic_ns()
        vm.stop()
    finally:
        vm.close()
    json.dump({"main_ns": main_ns, "started_ns": started_ns, "running_ns": running_ns}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
