"""The daemon of `hostd serve`: it owns any number of VM process groups and answers the control
socket (the protocol is in hostd/service/control.py).

One thread does everything that touches a VM (requests, child-death checks, snapshots), so a
VM is never read while it is being torn down; the optional Prometheus thread only reads the
latest snapshot, which the main loop replaces whole.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field

import zmq

from hostd.output import report
from hostd.plumbing import hoststats
from hostd.plumbing.errors import UsageError
from hostd.plumbing.policy_options import policy_spec_from_args, tsc_khz_from_args
from hostd.plumbing.results import build
from hostd.plumbing.spec import VmSpec, vm_spec_from_args
from hostd.plumbing.vm import ChildDied, Vm
from hostd.service import control
from hostd.service.control import ProtocolError
from vcpu import abi

TICK_S = 0.2             # child-death checks
SNAPSHOT_S = 1.0         # refresh of the snapshot the metrics endpoint serves
MAX_VMS = 32
MAX_TOTAL_VCPUS = 256
MAX_BATCH = 2000         # requests handled before the next housekeeping tick
ENDED_KEPT = 64
SAMPLE_CAPACITY = 1 << 16  # wake samples kept per vCPU of a served VM (beyond: counted as dropped)


def log(msg: str) -> None:
    sys.stderr.write(f"hostd serve: {msg}\n")
    sys.stderr.flush()


@dataclass
class Served:
    id: str
    vm: Vm
    tsc_khz: int
    launched: float  # wall clock
    params: dict = field(default_factory=dict)

    @property
    def spec(self) -> VmSpec:
        return self.vm.spec


class Daemon:
    def __init__(self, endpoints: list[str], metrics: tuple[str, int] | None = None) -> None:
        self.endpoints = endpoints
        self.metrics_addr = metrics
        self.vms: dict[str, Served] = {}
        self.ended: list[dict] = []
        self.next_id = 0
        self.quit = False
        self.started = time.monotonic()
        self.affinity = os.sched_getaffinity(0)
        self.latest: dict | None = None
        self.ctx = zmq.Context()
        self.socks: list[zmq.Socket] = []
        self.httpd = None
        self._option_defaults: dict | None = None
        self.handlers = {
            "ping": self.cmd_ping, "ps": self.cmd_ps, "stats": self.cmd_stats, "launch": self.cmd_launch,
            "set": self.cmd_set, "stop": self.cmd_stop, "shutdown": self.cmd_shutdown,
        }

    # --- sockets -----------------------------------------------------------------------
    def bind(self) -> None:
        for ep in self.endpoints:
            s = self.ctx.socket(zmq.ROUTER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, control.HARD_MAX_FRAME)
            s.setsockopt(zmq.SNDHWM, 1000)
            try:
                s.bind(ep)
            except zmq.ZMQError as exc:
                s.close(linger=0)
                raise UsageError(f"cannot listen on {ep}: {exc}") from None
            if ep.startswith("ipc://"):
                os.chmod(ep[len("ipc://"):], 0o600)
            self.socks.append(s)
        if self.metrics_addr:
            # lazy: prometheus_client (~90 ms to import) is needed only with --metrics
            from hostd.service.metrics import serve_metrics

            host, port = self.metrics_addr
            try:
                self.httpd, _ = serve_metrics(host, port, lambda: self.latest)
            except OSError as exc:
                raise UsageError(f"--metrics: cannot listen on {host}:{port}: {exc.strerror}") from None
            self.latest = self.snapshot()

    def metrics_url(self) -> str | None:
        if self.httpd is None:
            return None
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/metrics"

    # --- main loop ---------------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        next_tick = time.monotonic()
        next_snap = next_tick + SNAPSHOT_S
        while not self.quit:
            wait_ms = max(0, int(1000 * (next_tick - time.monotonic())))
            try:
                ready = dict(poller.poll(wait_ms))
            except zmq.ZMQError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            for s in ready:
                self._drain(s)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                self.check_children()
            if self.httpd is not None and now >= next_snap:
                next_snap = now + SNAPSHOT_S
                self.latest = self.snapshot()

    def _drain(self, s: zmq.Socket) -> None:
        for _ in range(MAX_BATCH):
            if self.quit:
                return
            try:
                frames = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, payload = control.split_envelope(frames)
            reply = self.handle(payload)
            try:
                s.send_multipart([*envelope, reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client is gone or not reading: its loss

    def handle(self, payload: list[bytes]) -> bytes:
        """Frames of one request -> one reply frame. Never raises."""
        try:
            req = control.decode_request(payload)
            return control.reply_ok(**self.handlers[req["cmd"]](req))
        except ProtocolError as exc:
            return control.reply_error(str(exc))
        except UsageError as exc:
            return control.reply_error(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not take the VMs down with it
            log(f"internal error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            return control.reply_error(f"internal error: {type(exc).__name__}: {exc}")

    # --- VM bookkeeping ----------------------------------------------------------------
    def _repin(self) -> None:
        """The daemon sits on the union of its VMs' device CPUs, off every vCPU's core where
        possible, and back on its own CPUs when none runs."""
        cpus = {r.spec.device_cpu for r in self.vms.values() if r.spec.device_cpu is not None}
        target = cpus & self.affinity or self.affinity
        try:
            os.sched_setaffinity(0, target)
        except OSError:
            pass

    def _find(self, vm_id: str) -> Served:
        rec = self.vms.get(vm_id)
        if rec is None:
            ended = next((e for e in reversed(self.ended) if e["id"] == vm_id), None)
            if ended:
                raise ProtocolError(f"VM {vm_id!r} is no longer running ({ended['state']}: {ended['reason']})")
            running = ", ".join(self.vms) or "none"
            raise ProtocolError(f"no VM {vm_id!r} (running: {running})")
        return rec

    def _end(self, rec: Served, state: str, reason: str, summary: dict | None = None) -> None:
        self.vms.pop(rec.id, None)
        try:
            rec.vm.close()
        finally:
            self._repin()
        self.ended.append({"id": rec.id, "state": state, "reason": reason, "ended": time.time(),
                           "workload": rec.spec.workload, "policy": rec.spec.policy.policy, "summary": summary})
        del self.ended[:-ENDED_KEPT]

    def check_children(self) -> None:
        for rec in list(self.vms.values()):
            try:
                rec.vm.check_children()
            except ChildDied as exc:
                log(f"{rec.id}: {exc}; the VM was stopped and cleaned up")
                self._end(rec, "died", str(exc))

    def option_defaults(self) -> dict:
        if self._option_defaults is None:
            self._option_defaults = vars(control.launch_options_parser().parse_args([]))
        return self._option_defaults

    # --- commands ----------------------------------------------------------------------
    def cmd_ping(self, req: dict) -> dict:
        return {"pid": os.getpid(), "uptime_s": time.monotonic() - self.started, "vms": len(self.vms),
                "endpoints": self.endpoints, "metrics": self.metrics_url()}

    def cmd_launch(self, req: dict) -> dict:
        options = req["options"]
        if len(self.vms) >= MAX_VMS:
            raise ProtocolError(f"launch: this daemon already runs {len(self.vms)} VMs (the limit is {MAX_VMS})")
        _check_cpu_text(options.get("cpus"))
        ns = argparse.Namespace(**{**self.option_defaults(), **{k: v for k, v in options.items() if v is not None}})
        vm_id = f"vm{self.next_id}"
        policy = policy_spec_from_args(ns)
        tsc_khz = tsc_khz_from_args(ns)
        # Placement reads the daemon's own affinity: give it back the CPUs it started with
        # (it sits on the device CPUs of running VMs), then sit down again.
        os.sched_setaffinity(0, self.affinity)
        try:
            spec = vm_spec_from_args(ns, policy, vm=vm_id)
        finally:
            self._repin()
        if spec.extra.get("bare"):  # no vCPU halts in it: nothing to poll, set or watch
            raise ProtocolError("launch: --rr-bare is rr's host-alone reference, not a VM (nothing halts in it); "
                                "measure it with `hostd run --workload rr --rr-bare`")
        total = sum(r.spec.vcpus for r in self.vms.values()) + spec.vcpus
        if total > MAX_TOTAL_VCPUS:
            raise ProtocolError(f"launch: {total} vCPUs in all would exceed the daemon's limit of {MAX_TOTAL_VCPUS}")
        spec.duration_s = None
        spec.sample_capacity = SAMPLE_CAPACITY
        self.next_id += 1
        vm = Vm(spec, pin_host=False)
        try:
            vm.start()
            vm.go()
        except (ChildDied, TimeoutError, OSError, zmq.ZMQError) as exc:
            vm.close()
            self._repin()
            raise ProtocolError(f"launch: {vm_id} failed to start: {exc}") from None
        except BaseException:
            vm.close()
            self._repin()
            raise
        p = spec.policy
        params = {"halt_poll_ns": p.halt_poll_ns, "halt_poll_ns_grow": p.halt_poll_ns_grow,
                  "halt_poll_ns_grow_start": p.halt_poll_ns_grow_start, "halt_poll_ns_shrink": p.halt_poll_ns_shrink}
        if spec.workload == "idle":
            params["tick_hz"] = spec.tick_hz
        rec = Served(vm_id, vm, tsc_khz, time.time(), params)
        self.vms[vm_id] = rec
        self._repin()
        shared = sorted(
            r.id for r in self.vms.values()
            if r.id != vm_id and r.spec.vcpu_cpus and spec.vcpu_cpus and set(r.spec.vcpu_cpus) & set(spec.vcpu_cpus)
        )
        log(f"{vm_id}: launched {spec.vcpus} vCPU(s), workload {spec.workload}, policy {p.policy} "
            f"(halt_poll_ns {p.halt_poll_ns}), pids {vm.child_pids()}")
        return {"vm": vm_id, **self._describe(rec), "shares_cpus_with": shared}

    def _describe(self, rec: Served) -> dict:
        spec, vm = rec.spec, rec.vm
        dev = vm.device()
        states = []
        for i in range(spec.vcpus):
            s = vm.words[abi.slot_base(i) + abi.STATE]
            states.append(abi.STATE_NAMES[s] if s < len(abi.STATE_NAMES) else str(s))
        return {
            "id": rec.id, "state": "running", "launched": rec.launched,
            "uptime_s": (time.monotonic_ns() - vm.started_ns) / 1e9,
            "vcpus": spec.vcpus, "workload": spec.workload, "policy": spec.policy.policy,
            "host_policy": spec.policy.host_policy, "params": dict(rec.params),
            "interval_ns": spec.interval_ns if spec.workload == "timer" else None,
            "rr_service_ns": spec.io_service_ns if spec.workload == "rr" else None,
            "overcommit": spec.overcommit, "tsc_khz": rec.tsc_khz,
            "device": {"pid": dev.pid, "cpu": spec.device_cpu},
            "vcpu": [{"index": i, "pid": pid, "cpu": None if spec.vcpu_cpus is None else spec.vcpu_cpus[i],
                      "state": states[i]} for i, pid in enumerate(vm.vcpu_pids())],
            "neighbour": _describe_neighbour(vm),
        }

    def cmd_ps(self, req: dict) -> dict:
        return {"vms": [self._describe(r) for r in self.vms.values()], "ended": self.ended,
                "daemon": self.cmd_ping(req)}

    def snapshot(self, only: str | None = None) -> dict:
        vms = []
        for rec in self.vms.values():
            if only is not None and rec.id != only:
                continue
            d = self._describe(rec)
            vcpus = []
            for i, pid in enumerate(rec.vm.vcpu_pids()):
                counters = rec.vm.counters(i)
                hist = {h: counters.pop(h) for h in abi.HISTS}
                try:
                    t = hoststats.process_stats(pid)
                    host = {"cpu_ns": t.cpu_ns, "runq_wait_ns": t.runq_wait_ns, "ctx_voluntary": t.ctx_voluntary,
                            "ctx_involuntary": t.ctx_involuntary, "migrations": t.migrations}
                except (ProcessLookupError, OSError, ValueError):
                    host = None
                vcpus.append({**d["vcpu"][i], "counters": counters, "hist": hist, "host": host})
            d["vcpus"] = vcpus
            del d["vcpu"]
            for proc in (d["neighbour"] or {}).get("procs", []):
                try:
                    proc["cpu_ns"] = hoststats.process_stats(proc["pid"]).cpu_ns
                except (ProcessLookupError, OSError, ValueError):
                    proc["cpu_ns"] = None
            vms.append(d)
        return {"t_ns": time.monotonic_ns(), "time": time.time(), "vms": vms}

    def cmd_stats(self, req: dict) -> dict:
        if "vm" in req:
            self._find(req["vm"])
        snap = self.snapshot(req.get("vm"))
        if "vm" not in req and self.httpd is not None:
            self.latest = snap
        return snap

    def cmd_set(self, req: dict) -> dict:
        rec = self._find(req["vm"])
        name, value = req["param"], req["value"]
        spec = rec.spec
        if name in ("tick_hz", "tick_millihz"):
            if spec.workload != "idle":
                raise ProtocolError(f"set: {name} is the idle workload's tick; {rec.id} runs the "
                                    f"{spec.workload} workload, which has none")
            millihz = round(value * 1000) if name == "tick_hz" else int(value)
            rec.vm.set_param("tick_millihz", millihz)
            rec.params["tick_hz"] = millihz / 1000
        else:
            host = spec.policy.host_policy
            if host == "none":
                raise ProtocolError(f"set: {rec.id} runs policy {spec.policy.policy}, whose host side never "
                                    f"polls; {name} would have no effect")
            if name != "halt_poll_ns" and spec.backend == "kvm":
                raise ProtocolError(f"set: {name} is a global kvm module parameter on the kvm backend; only "
                                    f"halt_poll_ns (the VM's KVM_CAP_HALT_POLL) is per VM")
            if name != "halt_poll_ns" and host != "adaptive":
                raise ProtocolError(f"set: {name} is read only by the adaptive host policy; "
                                    f"{rec.id} runs {host}")
            rec.vm.set_param(name, int(value))
            rec.params[name] = int(value)
        log(f"{rec.id}: {name} = {value}")
        return {"vm": rec.id, "params": rec.params}

    def cmd_stop(self, req: dict) -> dict:
        rec = self._find(req["vm"])
        try:
            rec.vm.stop()
            result = build(rec.vm, rec.tsc_khz)
        except (ChildDied, TimeoutError, zmq.ZMQError, KeyError) as exc:
            self._end(rec, "failed", f"stop: {exc}")
            raise ProtocolError(f"stop: {rec.id} did not stop cleanly ({exc}); it was torn down") from None
        except BaseException:
            self._end(rec, "failed", "stop: internal error")
            raise
        failures = report.check_failures(result)
        self._end(rec, "stopped", "; ".join(failures) or "stopped by request", _summary(result))
        log(f"{rec.id}: stopped{' with failed checks: ' + '; '.join(failures) if failures else ''}")
        return {"vm": rec.id, "result": result, "failures": failures}

    def cmd_shutdown(self, req: dict) -> dict:
        self.quit = True
        return {"pid": os.getpid(), "stopping": list(self.vms)}

    # --- teardown ----------------------------------------------------------------------
    def stop_all(self) -> None:
        for rec in list(self.vms.values()):
            try:
                rec.vm.stop()
                result = build(rec.vm, rec.tsc_khz)
                failures = report.check_failures(result)
                log(f"{rec.id}: stopped" + (f"; check failed: {'; '.join(failures)}" if failures else ""))
                self._end(rec, "stopped", "daemon shutdown", _summary(result))
            except Exception as exc:  # noqa: BLE001 - whatever happens, tear it down
                log(f"{rec.id}: did not stop cleanly ({type(exc).__name__}: {exc}); torn down")
                self._end(rec, "failed", str(exc))

    def close(self) -> None:
        for rec in list(self.vms.values()):  # only if stop_all did not run (e.g. an error)
            self._end(rec, "failed", "daemon exit")
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        for s in self.socks:
            s.close(linger=0)
        self.ctx.destroy(linger=0)
        for ep in self.endpoints:
            if ep.startswith("ipc://"):
                try:
                    os.unlink(ep[len("ipc://"):])
                except FileNotFoundError:
                    pass


def _describe_neighbour(vm: Vm) -> dict | None:
    """The VM's neighbours (--neighbour): their duty cycle, processes, and the CPU they got alone
    (cores, summed) in the baseline before the vCPUs ran. None without."""
    n = vm.spec.neighbour
    if n is None:
        return None
    alone = vm.neighbour_alone
    return {"duty": n.duty, "period_ns": n.period_ns,
            "alone_cpu_cores": None if alone is None else alone.cores,
            "procs": [{"name": c.name, "pid": c.pid, "cpu": c.cpu} for c in vm.neighbours()]}


def _check_cpu_text(text: object) -> None:
    """`--cpus 0-99999999` would make spec.parse_cpu_list build a huge list: refuse it first."""
    if not isinstance(text, str):
        return
    for n in re.findall(r"\d+", text):
        if len(n) > 6 or int(n) > 65535:
            raise UsageError(f"--cpus: CPU number {n[:12]} is out of range")


def _summary(result: dict) -> dict:
    vc = result["vcpus"]
    return {
        "duration_s": result["spec"]["duration_s"],
        "halt_exits": sum(v["stats"]["halt_exits"] for v in vc),
        "halt_successful_poll": sum(v["stats"]["halt_successful_poll"] for v in vc),
        "checks_ok": result["checks"]["ok"],
    }

