"""The soak's processes: each started as a child, killed and restarted as a supervisor would.

Every logical process (``writer``, ``api``, ``simulate``, ...) keeps one command and one
log file; an incarnation is one pid. ``kill`` is SIGKILL and wait; ``restart`` starts the
same command again at once (a new incarnation, its start marked in the log). Memory is
read from ``/proc/<pid>/status`` (VmRSS) for the pid and its descendants.

    proc = Proc("writer", [sys.executable, "-m", "cityops", "writer"], log_dir / "writer.log")
    proc.start(env, t=0.0)
    proc.kill(t=61.2)
    proc.start(env, t=61.2)
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from bench.soak_report import RssPoint

REPO = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 30.0


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # a zombie has no VmRSS line


def tree_rss_kib(root: int, table: dict[int, procstat.ProcStat]) -> int | None:
    """RSS of ``root`` and its descendants (None when ``root`` is gone)."""
    if root not in table:
        return None
    sizes = [rss_kib(pid) for pid in procstat.tree([root], table)]
    return sum(s for s in sizes if s is not None)


@dataclass
class Proc:
    """One logical process of the soak and the history of its incarnations."""

    name: str
    command: list[str]
    log: Path
    kind: str = "pipeline"  # "pipeline", "load" (the simulators) or "service"
    popen: subprocess.Popen[bytes] | None = None
    born: float = 0.0  # when the current incarnation started (s since the load began)
    kills: list[float] = field(default_factory=list)
    exits: list[tuple[float, int]] = field(default_factory=list)  # exited by itself: (t, rc)
    rss: list[RssPoint] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    @property
    def restarts(self) -> int:
        return len(self.kills) + len(self.exits)

    def start(self, env: dict[str, str], t: float) -> None:
        """Start an incarnation; its output goes to the end of the process's log."""
        with open(self.log, "ab") as out:
            out.write(f"\n=== soak: start at {t:.1f} s: {' '.join(self.command)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.command,
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the terminal's Ctrl-C reaches the soak only
            )
        self.born = t

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exited(self, t: float) -> int | None:
        """The exit code if the incarnation ended by itself (recorded once), else None."""
        if self.popen is None or self.popen.poll() is None:
            return None
        rc = self.popen.returncode
        self.exits.append((t, rc))
        self.popen = None
        return rc

    def kill(self, t: float) -> None:
        """SIGKILL the incarnation (and what it started) and reap it."""
        assert self.popen is not None, f"{self.name} is not running"
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self.kills.append(t)
        self.popen = None

    def terminate(self) -> None:
        """SIGTERM, without waiting."""
        if self.alive():
            assert self.popen is not None
            self.popen.terminate()

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Wait for a terminated incarnation; SIGKILL its group if it outlives ``timeout_s``.
        Returns its exit code (None if it was not running)."""
        if self.popen is None:
            return None
        try:
            rc = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            rc = self.popen.wait(10)
        return rc

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); the exit code."""
        self.terminate()
        rc = self.wait(timeout_s)
        self.popen = None
        return rc

    def sample(self, t: float, table: dict[int, procstat.ProcStat]) -> None:
        """Record the incarnation's RSS at ``t`` (nothing if it is not running)."""
        pid = self.pid
        if pid is None:
            return
        size = tree_rss_kib(pid, table)
        if size is not None:
            self.rss.append(RssPoint(t, pid, size, self.born))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Service:
    """A service the soak does not start (PostgreSQL, Mosquitto, Tansu): RSS only."""

    name: str
    roots: list[int]
    note: str
    kind: str = "service"
    rss: list[RssPoint] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    exits: list[tuple[float, int]] = field(default_factory=list)

    @property
    def restarts(self) -> int:
        return 0

    def sample(self, t: float, table: dict[int, procstat.ProcStat]) -> None:
        sizes = [tree_rss_kib(root, table) for root in self.roots]
        found = [s for s in sizes if s is not None]
        if found:
            self.rss.append(RssPoint(t, self.roots[0], sum(found)))
