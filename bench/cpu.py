"""CPU accounting of the benchmarks: seconds per process group, per unit of work, and the bottleneck."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psutil

from tests.harness.servers import Servers

__all__ = ["OTHER", "CpuMeter", "bottleneck", "cpu_per_unit", "server_groups"]

OTHER = "other (other users, kernel)"


def cpu_per_unit(cpu: dict[str, Any], units_per_s: float) -> dict[str, Any]:
    """CPU milliseconds per unit of work by process group, and the machine-CPU limit.

    ``cpu_limit_per_s`` is the rate the whole machine would reach if every core went to this
    workload at the measured CPU cost per unit (other users' load excluded).
    """
    cores = cpu.get("cores_by_process", {})
    ours = sum(v for k, v in cores.items() if k != OTHER)
    n = cpu.get("machine_cores") or 1
    per = {k: round(1000 * v / units_per_s, 2) for k, v in cores.items() if k != OTHER} if units_per_s else {}
    return {
        "cpu_ms_per_unit": per,
        "cpu_ms_per_unit_total": round(1000 * ours / units_per_s, 2) if units_per_s else None,
        "cpu_limit_per_s": round(n * units_per_s / ours, 2) if ours else None,
    }


class CpuMeter:
    """CPU seconds used by named process groups (a process plus its live descendants)."""

    def __init__(self, groups: Mapping[str, Sequence[int]], *, self_only: Iterable[str] = ("bench client",)) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self._self_only = set(self_only)
        self._start: dict[str, dict[int, float]] = {}
        self._sys_start: Any = None
        self._t0 = 0.0
        self.result: dict[str, Any] = {}

    @staticmethod
    def _tree(pids: Sequence[int], recursive: bool = True) -> dict[int, float]:
        out: dict[int, float] = {}
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                procs = [proc, *proc.children(recursive=True)] if recursive else [proc]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    t = p.cpu_times()
                    out[p.pid] = t.user + t.system
                except psutil.Error:
                    continue
        return out

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._sys_start = psutil.cpu_times()
        self._start = {name: self._tree(pids, name not in self._self_only) for name, pids in self.groups.items()}
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        end = {name: self._tree(pids, name not in self._self_only) for name, pids in self.groups.items()}
        sys_end = psutil.cpu_times()
        cores: dict[str, float] = {}
        for name, procs in end.items():
            start = self._start.get(name, {})
            used = sum(max(0.0, t - start.get(pid, 0.0)) for pid, t in procs.items())
            cores[name] = round(used / wall, 3) if wall > 0 else 0.0

        def busy(t: Any) -> float:
            return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

        total = busy(sys_end) - busy(self._sys_start)
        machine = round(total / wall, 3) if wall > 0 else 0.0
        cores[OTHER] = round(max(0.0, machine - sum(cores.values())), 3)
        self.result = {"wall_s": round(wall, 2), "cores_by_process": cores, "machine_busy_cores": machine,
                       "machine_cores": os.cpu_count()}
        return self.result


def server_groups(servers: Servers) -> dict[str, list[int]]:
    """CPU groups of the local embedded servers (empty for external servers)."""
    names = {"postgres": "postgres", "seaweedfs": "s3 (seaweedfs)", "kafka": "kafka (tansu)"}
    return {names.get(n, n): [pid] for n, pid in servers.server_pids().items()}


def bottleneck(cpu: dict[str, Any]) -> str:
    """A one-line reading of a CpuMeter result."""
    cores = cpu.get("cores_by_process", {})
    machine = cpu.get("machine_busy_cores", 0.0)
    n = cpu.get("machine_cores") or 1
    top = sorted(cores.items(), key=lambda kv: kv[1], reverse=True)[:3]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in top)
    state = "CPU saturated" if machine >= 0.9 * n else "CPU not saturated"
    return f"{state}: machine {machine:.2f}/{n} cores busy; top: {parts}"
