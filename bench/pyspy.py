"""py-spy profiles of running Python processes: a flame graph and collapsed stacks each.

Two ``py-spy record --nonblocking`` per process for the same duration: one writes
``<name>.svg`` (flame graph), the other ``<name>.txt`` (``--format raw``, one line per
distinct stack, "frame;frame;... count"), from which :func:`top_self` reads the
functions that were on top of the stack most often (self time). With ``gil=True`` only
the thread holding the GIL is sampled: the process's Python work, without the threads
that wait (a wait in C, such as a socket read, otherwise often counts as busy); a
thread that holds the GIL while it waits for a core or in a system call still counts.
py-spy needs ptrace rights (root). The profilers take CPU themselves, so a profiled run
runs slower.

    profiles = start_profiles(Path("prof"), {"writer-0": 1234}, duration_s=60)
    ...
    for name, rows in finish_profiles(profiles).items():
        print(name, rows[:15])
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE_NUMBER = re.compile(r":\d+\)$")


def py_spy_binary() -> str | None:
    """py-spy next to this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    """The py-spy processes recording one target."""

    name: str
    pid: int
    svg: Path
    raw: Path
    procs: list[subprocess.Popen[bytes]]


def start_profiles(
    directory: Path,
    targets: dict[str, int],
    duration_s: float,
    rate: int = 100,
    gil: bool = False,
) -> list[Profile]:
    """Record each target for ``duration_s`` seconds (rounded up), ``rate`` samples a second."""
    binary = py_spy_binary()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    directory.mkdir(parents=True, exist_ok=True)
    seconds = str(max(1, int(-(-duration_s // 1))))
    profiles = []
    for name, pid in targets.items():
        svg, raw = directory / f"{name}.svg", directory / f"{name}.txt"
        common = ["record", "--nonblocking", "--pid", str(pid), "--duration", seconds]
        common += ["--rate", str(rate), *(["--gil"] if gil else [])]
        log = open(directory / f"{name}.py-spy.log", "wb")  # noqa: SIM115 - the children own it
        procs = [
            subprocess.Popen([binary, *common, "-o", str(svg)], stdout=log, stderr=log),
            subprocess.Popen(
                [binary, *common, "--format", "raw", "-o", str(raw)], stdout=log, stderr=log
            ),
        ]
        log.close()
        profiles.append(Profile(name, pid, svg, raw, procs))
    return profiles


def profiler_pids(profiles: list[Profile]) -> list[int]:
    """The py-spy processes, so that their CPU time can be reported apart."""
    return [p.pid for profile in profiles for p in profile.procs]


def finish_profiles(
    profiles: list[Profile], timeout_s: float = 60.0, top: int = 15
) -> dict[str, list[tuple[str, int, float]]]:
    """Wait for the recorders; the ``top`` self-time functions per target."""
    tops = {}
    for profile in profiles:
        for proc in profile.procs:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(10)
        tops[profile.name] = top_self(profile.raw, top) if profile.raw.exists() else []
    return tops


def top_self(raw: Path, top: int = 15) -> list[tuple[str, int, float]]:
    """(function, samples, share of all samples) for the functions most often on top."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        counts[_LINE_NUMBER.sub(")", leaf)] += int(number)
    total = sum(counts.values()) or 1
    return [(name, n, n / total) for name, n in counts.most_common(top)]
