"""Workers in threads and in subprocesses, HTTP servers waited for until ready, and the
backtest command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

from cityops.bootstrap import (
    run_bridge,
    run_in_thread,
    run_monitor,
    run_projector,
    run_telemetry,
    run_writer,
)
from cityops.cli.backtest import backtest_command
from infra.settings import Settings

# The workers that run as ``run_<name>(settings, stop)``.
RUNS: dict[str, Callable[[Settings, threading.Event], None]] = {
    "bridge": run_bridge,
    "monitor": run_monitor,
    "projector": run_projector,
    "telemetry": run_telemetry,
    "writer": run_writer,
}


@contextmanager
def threads(*targets: Callable[[threading.Event], None], join_s: float = 15) -> Iterator[None]:
    """Each ``target(stop)`` in a daemon thread; on exit every stop is set, then each
    thread joined."""
    started = [run_in_thread(target, f"test-worker-{i}") for i, target in enumerate(targets)]
    try:
        yield
    finally:
        for _, stop in started:
            stop.set()
        for thread, _ in started:
            thread.join(join_s)


def in_threads(settings: Settings, *names: str, join_s: float = 15) -> AbstractContextManager[None]:
    """``threads`` of the named workers (keys of ``RUNS``) on ``settings``."""
    return threads(*(partial(RUNS[name], settings) for name in names), join_s=join_s)


def worker_env(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings``' database, topics and city."""
    return {
        **os.environ,
        "CITYOPS_DATABASE_URL": settings.database_url,
        "CITYOPS_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "CITYOPS_DATA_DIR": str(settings.data_dir),
        "CITYOPS_SIM_SENSORS": str(settings.sim_sensors),
        "CITYOPS_LOG_LEVEL": "WARNING",
    }


CITYOPS = (sys.executable, "-m", "cityops")


def cityops(*args: str, env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """``python -m cityops <args>`` in a subprocess."""
    return subprocess.Popen([*CITYOPS, *args], env=env, **popen)


def start_worker(settings: Settings, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """``python -m cityops <name> <args>`` against ``settings``' database and topics."""
    return cityops(name, *args, env={**worker_env(settings), **env})


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each one still running, then wait (SIGKILL after 15 s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def stop_session(
    proc: subprocess.Popen[bytes], timeout: float, sig: signal.Signals = signal.SIGTERM
) -> None:
    """``sig`` (SIGINT: Ctrl-C) to a process started in a session of its own; its whole
    process group SIGKILLed when it has not ended in ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_http_ready(
    base: str,
    proc: subprocess.Popen[bytes],
    timeout: float,
    probe: str = "/readyz",
    output: Callable[[], str] | None = None,
) -> None:
    """Until ``base + probe`` answers 200; RuntimeError (with the tail of ``output``)
    when ``proc`` exits first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}{probe}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            said = output()[-3000:] if output else ""
            raise RuntimeError(f"the server exited:\n{said}")
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready in {timeout:.0f} s")


def log_of(path: Path) -> Callable[[], str]:
    """What a process has written to its log file so far (for ``wait_http_ready``)."""
    return lambda: path.read_text(errors="replace")


UVICORN = (sys.executable, "-m", "uvicorn", "--factory", "cityops.bootstrap:app_from_env")


@contextmanager
def http_process(
    argv: list[str],
    port: int,
    env: dict[str, str],
    log: Path,
    *,
    timeout: float,
    probe: str = "/readyz",
    stop: signal.Signals = signal.SIGTERM,
    stop_timeout: float = 30,
) -> Iterator[str]:
    """``argv`` (a server on ``port``) in a session of its own, its output in ``log``,
    until exit: its base URL once ``probe`` answers; ``stop`` ends it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(base, proc, timeout, probe=probe, output=log_of(log))
        yield base
    finally:
        stop_session(proc, stop_timeout, stop)


@contextmanager
def api_server(env: dict[str, str], log: Path, *args: str) -> Iterator[str]:
    """The API as production runs it (``uvicorn --factory``) on ``env``, its output in
    ``log``, until exit: its base URL once ``/healthz`` answers. ``args``: more of
    uvicorn's options (``--host``, ``--log-level`` ...)."""
    from cityops.services import free_port

    port = free_port()
    argv = [*UVICORN, "--port", str(port), *args]
    with http_process(argv, port, env, log, timeout=90, probe="/healthz") as base:
        yield base


def backtest(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], Result]:
    """`cityops audit backtest` on ``settings``' database: ``invoke(args)``, its result."""
    monkeypatch.setenv("CITYOPS_DATABASE_URL", settings.database_url)
    cli = typer.Typer()
    cli.command()(backtest_command)
    runner = CliRunner()
    return lambda args: runner.invoke(cli, args)
