"""The published figures `hostd compare` sets its measurements beside: constants, quoted, never measured.

- SEED: the 2015 halt_poll patch's (DESIGN §7), shown only in "seed" columns and labelled so;
- QUOTED and ROWS: `compare --table dyn2015|guest2019`, Wanpeng Li's dynamic halt-polling (2015)
  and cpuidle-haltpoll's ping-pong (2019): each table's quoted figures, and the rows that measure them.

Here because the engines plan and judge by them and the output prints them.
"""
from __future__ import annotations

from dataclasses import dataclass

IDLE_VCPUS = 4  # the seed's idle guest: its ~10 halts/s are of all four vCPUs

SEED = {
    "source": "Bonzini 2015, 'kvm: x86: add halt_poll module parameter' (figures quoted, not measured here)",
    "io": {
        "none": "KVM ~30% of bare metal (~50% with cache=directsync)",
        "fixed": "60-65% of bare metal, 99% of idle=poll",
        "idle-poll": "100% (the reference)",
    },
    "io_fixed_pct_of_idle_poll": 99.0,
    "idle": {
        "fixed": "1.5-2.5% of a core; ~10 halts/s, nearly all failed polls",
    },
    "idle_fixed_cpu_pct_range": [1.5, 2.5],
    "idle_halts_per_s_4vcpu": 10,
    "timer": {
        "none": "20,000-120,000 cycles",
        "fixed": "8,000-10,000 cycles",
    },
    "timer_cycles_with_poll": [8000, 10000],
    "timer_cycles_without_poll": [20000, 120000],
}

TABLES = ("dyn2015", "guest2019")
NOHZ_TICK_HZ = 1.0  # "idle (nohz)": a NOHZ guest still takes a rare wakeup; 1 Hz stands for it

QUOTED = {
    "dyn2015": {
        "source": "Wanpeng Li, 'KVM: dynamic halt-polling' (2015): each vCPU pinned, 60 s per figure "
                  "(quoted, not measured here)",
        "idle_nohz": {"none": [0.15, 0.15], "fixed": [0.3, 0.3], "adaptive": [0.2, 0.2]},
        "idle_250hz": {"none": [1.1, 1.1], "fixed": [4.6, 14.0], "adaptive": [1.2, 1.2]},
        "rr": {"none": [34.0, 34.0], "fixed": [27.0, 27.0], "adaptive": [26.7, 26.7]},
    },
    "guest2019": {
        "source": "cpuidle-haltpoll (2019), small-packet ping-pong latency, us (quoted, not measured here)",
        "rr": {"host": [31.33, 31.33], "host-poll": [33.40, 33.40], "guest-poll": [32.73, 32.73]},
        "pct_of_host": {"host": [100.0, 100.0], "host-poll": [93.8, 93.8], "guest-poll": [95.7, 95.7]},
    },
}


@dataclass(frozen=True)
class Row:
    table: str
    key: str
    label: str
    workload: str
    configs: tuple[str, ...]
    figure: str  # the metric the verdict judges (and the quoted figures are of)
    tick_hz: float = 0.0


ROWS = (
    Row("dyn2015", "idle_nohz", f"idle vCPU, rare tick ({NOHZ_TICK_HZ:g} Hz): %c0 of its CPU", "idle",
        ("none", "fixed", "adaptive"), "c0_pct", NOHZ_TICK_HZ),
    Row("dyn2015", "idle_250hz", "idle vCPU, 250 Hz tick: %c0 of its CPU", "idle",
        ("none", "fixed", "adaptive"), "c0_pct", 250.0),
    Row("dyn2015", "rr", "rr (TCP_RR-like) round trip, us", "rr", ("none", "fixed", "adaptive"), "rtt_mean_us"),
    Row("guest2019", "rr", "rr ping-pong round trip, us", "rr", ("host", "host-poll", "guest-poll"), "rtt_mean_us"),
)
