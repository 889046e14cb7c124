"""The seed table's bare-metal reference: the device's O_DSYNC writes alone, other CPUs idle or busy."""
from __future__ import annotations

import os

import psutil
import pytest

from hostd.measure.bare_metal import measure_bare_io
from tests.conftest import segments_of


@pytest.mark.parametrize("mode", ["idle", "busy"])
def test_bare_io_writes_with_no_vcpu_in_the_loop(mode):
    r = measure_bare_io(mode, 0.7, 2_600_000)
    assert r["writes"] > 20 and r["writes_per_s"] > 30  # real O_DSYNC writes: generous floor only
    v = r["result"]["vcpus"][0]
    assert v["guest"]["ops"] == 0 and v["stats"]["irq_injected"] == 0  # the vCPU never took part
    assert v["stats"]["halt_exits"] <= 1  # it halted once and stayed halted
    others = sorted(set(r["result"]["spec"]["vcpu_cpus"]) - {r["device_cpu"]})
    assert r["busy_cpus"] == ([] if mode == "idle" else others)
    left = [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
    assert not left  # spinners and the VM's processes all reaped
    assert not segments_of({os.getpid()})


def test_pct_of_bare_metal_is_per_repeat_against_the_idle_cpus_figure():
    from hostd.measure.bare_metal import pct_of_bare_metal

    def run(exp, pol, rep, w):
        return {"id": f"{exp}/{pol}/r{rep}", "experiment": exp, "policy": pol, "repeat": rep,
                "metrics": {"writes_per_s": w}}

    runs = [run("bare-metal", "idle", 1, 5000), run("bare-metal", "busy", 1, 7000), run("io", "fixed", 1, 2500),
            run("bare-metal", "idle", 2, 4000), run("bare-metal", "busy", 2, 6000), run("io", "fixed", 2, 4000)]
    b = pct_of_bare_metal(runs)
    assert "idle" in b["reference"]
    assert (b["pct"]["fixed"]["min"], b["pct"]["fixed"]["max"]) == (50.0, 100.0)
    assert b["pct"]["bare-busy"]["median"] == pytest.approx(145.0)
    assert b["idle"]["runs"] == ["bare-metal/idle/r1", "bare-metal/idle/r2"]
    assert {"value", "ci_low", "ci_high", "n"} <= set(b["busy"])
