"""Readiness probes of the brokers: can we open a TCP connection to them right now."""

from __future__ import annotations

import socket
from collections.abc import Callable


def tcp_probe(host: str, port: int, timeout: float = 1.0) -> Callable[[], tuple[bool, str]]:
    def probe() -> tuple[bool, str]:
        try:
            with socket.create_connection((host, port), timeout):
                return True, f"{host}:{port}"
        except OSError as exc:
            return False, f"{host}:{port}: {exc.strerror or type(exc).__name__}"

    return probe


def kafka_probe(bootstrap: str) -> Callable[[], tuple[bool, str]]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return tcp_probe(host or "127.0.0.1", int(port or 9092))
