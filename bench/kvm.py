"""`python -m bench.kvm [--seconds S] [--json]`: the kernel's own halt polling here, without hostd.

DESIGN §9's figures from the kvm backend's own pieces (hostd/commands/calibrate/kvm_probe.py), so each
piece is proven before hostd runs them: the guest's TSC-deadline latency with cap 0 and a 2 ms
cap, and the seed's synchronous writes at several caps and with an idle=poll guest.
"""
from __future__ import annotations

import argparse
import json
import sys

from hostd.commands.calibrate.kvm_probe import io, timer
from vcpu.kvm import kvm_api

SEED_CAP_NS = 769_230  # the seed's 2,000,000 cycles at 2.6 GHz


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kvm", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="each run (default 2)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        kvm_api.probe()
    except kvm_api.KvmUnavailable as exc:
        sys.stderr.write(f"bench.kvm: {exc}\n")
        return 2
    s = args.seconds
    runs = {
        "timer": [timer(0, s), timer(2_000_000, s)],
        "io": [io(0, s), io(200_000, s), io(SEED_CAP_NS, s), io(0, s, spin=True)],
    }
    if args.json:
        json.dump(runs, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'timer, cap':>22} {'cycles p50':>11} {'polls ok':>15} {'foreign':>8}")
    for r in runs["timer"]:
        print(f"{r['cap_ns']:>19} ns {r['cycles_p50']:>11} "
              f"{r['halt_successful_poll']:>6}/{r['halt_attempted_poll']:<8} {r['foreign_load']:>8}")
    print(f"\n{'io, cap':>22} {'writes/s':>11} {'polls ok':>15} {'foreign':>8} {'wake p50 us':>12}")
    for r in runs["io"]:
        label = "idle=poll guest" if r["guest"] != "hlt" else f"{r['cap_ns']} ns"
        print(f"{label:>22} {r['writes_per_s']:>11} {r['halt_successful_poll']:>6}/{r['halt_attempted_poll']:<8} "
              f"{r['foreign_load']:>8} {r['wake_us_p50']:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
