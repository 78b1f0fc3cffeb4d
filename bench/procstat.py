"""CPU time of process trees from /proc, and how to find a service's processes.

A process tree's CPU time is the sum, over its live members, of utime + stime + cutime +
cstime from ``/proc/<pid>/stat``: a member that exited was waited for by its parent,
whose cutime/cstime then hold its time, so a PostgreSQL backend that ends between two
samples still counts. Children are found by the PPid field; a service by the process
that listens on its TCP port (``/proc/net/tcp*`` and the ``socket:[inode]`` links in
``/proc/<pid>/fd``), or else by its process name.

    groups = [Group("postgres", [postmaster_pid]), Group("writer-0", [writer.pid])]
    before = sample(groups)
    ...
    used = cpu_delta(before, sample(groups))   # seconds of CPU per group
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")
_LISTEN = "0A"


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat this module uses (times in clock ticks)."""

    pid: int
    comm: str
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def tree_ticks(self) -> int:
        """Its own time and that of the children it has waited for."""
        return self.utime + self.stime + self.cutime + self.cstime


@dataclass(frozen=True)
class HostTicks:
    """The host's CPU time from the first line of /proc/stat (clock ticks, all cores)."""

    busy: int  # neither idle nor waiting for I/O, nor taken by the hypervisor
    steal: int  # the hypervisor ran someone else on our virtual cores
    total: int

    @classmethod
    def now(cls) -> HostTicks:
        with open(_PROC / "stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        # already counted in user and nice.
        idle, steal = fields[3] + fields[4], fields[7]
        total = sum(fields[:8])
        return cls(busy=total - idle - steal, steal=steal, total=total)

    def shares(self, later: HostTicks) -> dict[str, float]:
        """Busy and stolen shares of the host's CPU time from this sample to ``later``."""
        span = max(1, later.total - self.total)
        return {
            "busy": round((later.busy - self.busy) / span, 3),
            "steal": round((later.steal - self.steal) / span, 3),
        }


def read_stat(pid: int) -> ProcStat | None:
    """The stat of ``pid``, None if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The name is in parentheses and may itself contain spaces and parentheses.
    open_at, close_at = text.index("("), text.rindex(")")
    fields = text[close_at + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, so fields[11].
    return ProcStat(
        pid=pid,
        comm=text[open_at + 1 : close_at],
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def scan() -> dict[int, ProcStat]:
    """Every process on the host."""
    table = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                table[stat.pid] = stat
    return table


def tree(roots: Iterable[int], table: dict[int, ProcStat]) -> set[int]:
    """``roots`` (those alive) and all their descendants."""
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    stack = [pid for pid in roots if pid in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


@dataclass
class Group:
    """A named set of process trees whose CPU time is added up (``note`` says how found)."""

    name: str
    roots: list[int]
    note: str = ""
    kind: str = "pipeline"  # "pipeline", "load" or "tool": what the totals count


@dataclass
class Sample:
    """CPU seconds per group at one instant, and how many processes each group had."""

    cpu_s: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)


def sample(groups: Iterable[Group]) -> Sample:
    """One /proc scan: the CPU seconds used so far by each group's trees."""
    table = scan()
    result = Sample()
    for group in groups:
        pids = tree(group.roots, table)
        result.cpu_s[group.name] = sum(table[p].tree_ticks for p in pids) / CLK_TCK
        result.processes[group.name] = len(pids)
    return result


def cpu_delta(before: Sample, after: Sample) -> dict[str, float]:
    """CPU seconds each group used between two samples."""
    return {name: after.cpu_s.get(name, 0.0) - used for name, used in before.cpu_s.items()}


# -- finding services --------------------------------------------------------------------


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def listening_pids(port: int) -> set[int]:
    """Processes holding a socket that listens on TCP ``port`` (needs root for others')."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    found: set[int] = set()
    if not wanted:
        return found
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if links & wanted:
            found.add(int(entry.name))
    return found


def roots_only(pids: set[int], table: dict[int, ProcStat]) -> list[int]:
    """The members of ``pids`` whose parent is not also a member."""
    return sorted(p for p in pids if p in table and table[p].ppid not in pids)


def by_name(names: Iterable[str], table: dict[int, ProcStat]) -> list[int]:
    """Root processes whose name starts with one of ``names`` (a service's main process)."""
    prefixes = tuple(names)
    pids = {pid for pid, stat in table.items() if stat.comm.startswith(prefixes)}
    return roots_only(pids, table)


def find_service(name: str, port: int | None, names: Iterable[str]) -> Group:
    """The group of a service on this host: by its listening port, else by process name."""
    table = scan()
    if port is not None:
        roots = roots_only(listening_pids(port), table)
        if roots:
            return Group(name, roots, f"listens on port {port}")
    roots = by_name(names, table)
    if roots:
        return Group(name, roots, f"by process name ({', '.join(names)}): may include others")
    return Group(name, [], "not found on this host: skipped")
