"""Where a measurement's CPU time went: each named process, PostgreSQL, the rest.

Linux only (it reads ``/proc``); elsewhere :class:`CpuMeter` measures nothing and the
benchmarks print no CPU columns. On a machine with few cores, a throughput ratio says
little without this: it shows whether the cores were saturated, and which process had
them, so that a result can be read for hosts with more or separate cores.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuMeter", "CpuShare"]

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuShare:
    """CPU seconds over one measurement, by where they were spent."""

    wall: float
    #: Each named process (its threads included).
    processes: dict[str, float]
    #: Every process whose command is ``postgres`` (the server and all its backends,
    #: also those serving other databases: on a shared server that is noise).
    postgres: float
    #: All cores together, busy (not idle, not waiting for I/O).
    machine: float
    #: Time the hypervisor ran something else while this machine's cores wanted to run
    #: (a virtual machine's noisy neighbours; 0 on bare metal).
    steal: float
    cores: int

    @property
    def rest(self) -> float:
        """Busy time not accounted to a named process or PostgreSQL."""
        return max(0.0, self.machine - sum(self.processes.values()) - self.postgres)

    @property
    def utilisation(self) -> float:
        """Busy share of all cores, 0 to 1."""
        return self.machine / (self.wall * self.cores) if self.wall > 0 else 0.0


class CpuMeter:
    """Samples CPU time before and after a measurement.

    ``processes`` maps names to pids; the name ``"this process"`` is added for the caller
    (the load generator or client, in the benchmarks).
    """

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = {"this process": os.getpid(), **processes}
        self.available = (PROC / "stat").exists()
        self._start: tuple[float, dict[str, float], float, tuple[float, float]] | None = None

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> CpuShare | None:
        """The CPU time since :meth:`start`, or None where ``/proc`` is missing."""
        if self._start is None or not self.available:
            return None
        wall0, named0, postgres0, (busy0, steal0) = self._start
        wall1, named1, postgres1, (busy1, steal1) = self._sample()
        return CpuShare(
            wall=wall1 - wall0,
            processes={name: named1[name] - named0[name] for name in named0},
            postgres=postgres1 - postgres0,
            machine=busy1 - busy0,
            steal=steal1 - steal0,
            cores=os.cpu_count() or 1,
        )

    def _sample(self) -> tuple[float, dict[str, float], float, tuple[float, float]]:
        wall = time.perf_counter()
        if not self.available:
            return wall, {}, 0.0, (0.0, 0.0)
        named = {name: _process_seconds(pid) for name, pid in self.processes.items()}
        return wall, named, _postgres_seconds(), _machine_seconds()


def _process_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds; 0 once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _postgres_seconds() -> float:
    total = 0.0
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        total += _process_seconds(int(entry.name))
    return total


def _machine_seconds() -> tuple[float, float]:
    """Busy and stolen time of all cores together, in seconds."""
    # The first line of /proc/stat: "cpu user nice system idle iowait irq softirq steal ..."
    user, nice, system, _, _, irq, softirq, steal = (
        int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq) / TICKS, steal / TICKS
