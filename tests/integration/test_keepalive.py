"""TCP keepalive on the connections to PostgreSQL and to Kafka, read from the sockets."""

from __future__ import annotations

import os
import socket
from contextlib import closing

import pytest

from cityops.bootstrap import city_app
from infra import kafka as topics
from infra.pgstore import make_pool
from infra.settings import Settings

pytestmark = pytest.mark.integration

IDLE_S = 17


def keepalive_of(sock: socket.socket) -> tuple[int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


def sockets_to(port: int) -> list[socket.socket]:
    """This process's TCP sockets connected to ``port`` on loopback (copies of them)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port:
                found.append(sock)
                continue
        except (OSError, IndexError, TypeError):
            pass
        sock.close()
    return found


def test_database_connections_have_keepalive(settings: Settings) -> None:
    tuned = settings.model_copy(update={"tcp_keepalive_idle_s": IDLE_S})
    with closing(make_pool(tuned, max_size=1)) as pool, pool.connection() as conn:
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            assert keepalive_of(sock) == (1, IDLE_S, IDLE_S // 3, 3)


def test_event_store_connections_have_keepalive(settings: Settings) -> None:
    tuned = settings.model_copy(update={"tcp_keepalive_idle_s": IDLE_S})
    with closing(city_app(tuned, pool_size=1)) as app:
        datastore = app.recorder.datastore  # type: ignore[attr-defined]
        with (
            datastore.get_connection() as conn,
            socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock,
        ):
            assert keepalive_of(sock) == (1, IDLE_S, IDLE_S // 3, 3)


def test_kafka_connections_have_keepalive(settings: Settings, unique: str) -> None:
    tuned = settings.model_copy(update={"tcp_keepalive_idle_s": IDLE_S})
    port = int(settings.kafka_bootstrap.rsplit(":", 1)[1])
    producer = topics.make_producer(tuned)
    try:
        producer.send(topics.Topics.of(tuned).deadletter, b"keepalive-" + unique.encode()).get(30)
        found = sockets_to(port)
        assert found, "no connection to the broker found"
        try:
            assert {keepalive_of(s) for s in found} == {(1, IDLE_S, IDLE_S // 3, 3)}
        finally:
            for s in found:
                s.close()
    finally:
        producer.close(timeout=5)
