"""Where a measurement's CPU time went: each named process, PostgreSQL, the rest.

Linux only (it reads ``/proc``); elsewhere :class:`CpuMeter` measures nothing and the
benchmarks print no CPU columns. On a machine with few cores, a throughput ratio says
little without this: it shows whether the cores were saturated, and which process had
them, so that a result can be read for hosts with more or separate cores.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["QUIET_BELOW", "CpuMeter", "CpuShare", "quiet_summary", "wait_for_quiet"]

PROC = Path("/proc")
#: A machine whose cores are less busy than this (with the benchmark idle) is quiet.
QUIET_BELOW = 0.25
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuShare:
    """CPU seconds over one measurement, by where they were spent."""

    wall: float
    #: Each named process (its threads included).
    processes: dict[str, float]
    #: PostgreSQL's processes: all of them, or (see :class:`CpuMeter`) the server's own
    #: and the sessions on the benchmark's databases.
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

    @property
    def foreign(self) -> float:
        """Share of all cores busy with :attr:`rest`, 0 to 1: other work on the machine
        (kernel threads, other programs) that a quiet machine keeps near 0."""
        return self.rest / (self.wall * self.cores) if self.wall > 0 else 0.0


class CpuMeter:
    """Samples CPU time before and after a measurement.

    ``processes`` maps names to pids; the name ``"this process"`` is added for the caller
    (the load generator or client, in the benchmarks). With ``databases``, PostgreSQL's
    share counts only the sessions connected to those databases, plus the server's own
    processes (checkpointer, WAL writer...): other programs' sessions on a shared server
    then show as work of others, not as the benchmark's.
    """

    def __init__(self, processes: dict[str, int], *, databases: tuple[str, ...] = ()) -> None:
        self.processes = {"this process": os.getpid(), **processes}
        self.databases = databases
        self.available = (PROC / "stat").exists()
        self._start: _Sample | None = None

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> CpuShare | None:
        """The CPU time since :meth:`start`, or None where ``/proc`` is missing."""
        if self._start is None or not self.available:
            return None
        before, after = self._start, self._sample()
        # Per process: a session that started meanwhile counts whole, one that ended is lost.
        postgres = sum(
            seconds - before.postgres.get(pid, 0.0) for pid, seconds in after.postgres.items()
        )
        return CpuShare(
            wall=after.wall - before.wall,
            processes={name: after.named[name] - before.named[name] for name in before.named},
            postgres=postgres,
            machine=after.busy - before.busy,
            steal=after.steal - before.steal,
            cores=os.cpu_count() or 1,
        )

    def _sample(self) -> _Sample:
        wall = time.perf_counter()
        if not self.available:
            return _Sample(wall, {}, {}, 0.0, 0.0)
        named = {name: _process_seconds(pid) for name, pid in self.processes.items()}
        busy, steal = _machine_seconds()
        return _Sample(wall, named, self._postgres_processes(), busy, steal)

    def _postgres_processes(self) -> dict[int, float]:
        found = {}
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    continue
                title = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            if self._counts(title):
                found[int(entry.name)] = _process_seconds(int(entry.name))
        return found

    def _counts(self, title: str) -> bool:
        if not self.databases:
            return True
        words = title.split()
        if any(name in words for name in self.databases):
            return True
        # A session's title names its client as host(port); the server's own processes
        # (and the postmaster's command line) have none. Autovacuum and parallel workers
        # name their database, which was not one of ours.
        return "(" not in title and "worker" not in title


async def wait_for_quiet(patience: float, *, busy_below: float = QUIET_BELOW) -> float:
    """Wait until the cores were less than ``busy_below`` busy over half a second (the
    benchmark's own processes idle meanwhile, so that is other work), for at most
    ``patience`` seconds; return the busy share last seen (0 where /proc is missing)."""
    if not (PROC / "stat").exists():
        return 0.0
    deadline = time.perf_counter() + patience
    while True:
        busy0, _ = _machine_seconds()
        start = time.perf_counter()
        await asyncio.sleep(0.5)
        busy1, _ = _machine_seconds()
        share = (busy1 - busy0) / ((time.perf_counter() - start) * (os.cpu_count() or 1))
        if share < busy_below or time.perf_counter() >= deadline:
            return share


def quiet_summary(shares: list[float]) -> str:
    """One line on what :func:`wait_for_quiet` found before each round."""
    calm = sum(share < QUIET_BELOW for share in shares)
    return (
        f"{calm} of {len(shares)} measurements started on a quiet machine (other work under"
        f" {QUIET_BELOW:.0%} of the cores); the others after waiting as long as allowed"
    )


@dataclass(frozen=True)
class _Sample:
    wall: float
    named: dict[str, float]
    postgres: dict[int, float]
    busy: float
    steal: float


def _process_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds; 0 once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _machine_seconds() -> tuple[float, float]:
    """Busy and stolen time of all cores together, in seconds."""
    # The first line of /proc/stat: "cpu user nice system idle iowait irq softirq steal ..."
    user, nice, system, _, _, irq, softirq, steal = (
        int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq) / TICKS, steal / TICKS
