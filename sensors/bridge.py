"""MQTT -> Kafka bridge: gateway telemetry into ``cityops.telemetry``, rejects into dead letter.

At-least-once: a QoS 1 message is acknowledged to the broker (PUBACK) only after Kafka
has acknowledged what the bridge made of it (the normalised batch or its dead-letter
record). A bridge that crashes or loses its connection leaves those messages unacknowledged
in its persistent MQTT session, and the broker delivers them again, so Kafka may see a
message twice but never misses one. That needs a broker that keeps sessions (Mosquitto
does; amqtt 0.12 drops a client's in-flight messages when it disconnects, and keeps no
session at all for clients it lets in anonymously).

Messages are handled in windows (every ``window_ms`` or ``window_max`` messages,
whichever comes first): the MQTT session's network thread only queues each message (see
``sensors/mqtt_session.py`` for why it is not paho-mqtt's client); one window
thread decodes the window, sends every record, flushes the producer once, and then
acknowledges the window's messages in the order they arrived, as MQTT requires. Windows run one
after another, so the acks of a later window never overtake an earlier one, and a window
Kafka refuses is sent again (with backoff) before anything after it is acknowledged.
The bridge holds at most ``receive_maximum`` unacknowledged messages (plus one socket
read): it asks the broker for that limit (MQTT 5 Receive Maximum) and, since not every
broker keeps to it, stops reading its socket when it has that many in hand. When Kafka
is slow, the rest waits in the broker's session queue (Mosquitto's config in
``cityops/services.py`` never drops from it): a backlog in the broker, not in this
process. A QoS 1 publisher is acknowledged by the broker on receipt, so it is slowed
only when the broker itself is busy.

Run in-process::

    bridge = MqttBridge(settings, make_producer(settings), DeviceRegistry(app), client_id="b1")
    bridge.start()
    bridge.wait_connected(10)
    ...
    bridge.stop()
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.sensor.senml import REASON_CODES, Limits, RejectedPayload, deadletter_record, decode
from gis.china import to_wgs84_named
from infra.kafka import Topics, default_partition
from infra.pgstore import DATABASE_UNAVAILABLE, describe
from infra.settings import Settings
from sensors.mqtt_session import Incoming, MqttSession

log = logging.getLogger(__name__)

# Everything under cityops/: a message on a malformed topic must reach the dead letter
# with its reason, not vanish because no filter matched it.
TOPIC_FILTER = "cityops/#"

_RETRY_BASE_S = 0.25
_RETRY_MAX_S = 10.0
_WARN_INTERVAL_S = 10.0
# A window's flush waits this long for Kafka before its failed records are sent again.
_FLUSH_TIMEOUT_S = 30.0
# How long the broker must stay silent after an unsubscribe before a session is ended.
_QUIET_S = 0.5


class Producer(Protocol):
    """The part of kafka-python's KafkaProducer the bridge uses (a fake will do in tests)."""

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...


@dataclass
class BridgeCounters:
    """What the bridge has done since it started; ``as_dict`` is served on /metrics."""

    received: int = 0
    forwarded: int = 0  # readings or status messages Kafka has acknowledged
    deadlettered: int = 0  # dead-letter records Kafka has acknowledged
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASON_CODES, 0))
    kafka_errors: int = 0  # failed sends of records, each retried
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def add(self, **counts: int) -> None:
        """Add to counters, once per window (thread-safe: /metrics reads them)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def reject(self, reason_code: str) -> None:
        """Count one rejected payload."""
        with self._lock:
            self.rejected[reason_code] = self.rejected.get(reason_code, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        with self._lock:
            rejected = dict(self.rejected)
            return {
                "received": self.received,
                "forwarded": self.forwarded,
                "deadlettered": self.deadlettered,
                "rejected": rejected,
                "rejected_total": sum(rejected.values()),
                "kafka_errors": self.kafka_errors,
            }


@dataclass(slots=True, eq=False)
class _Outgoing:
    topic: str
    key: bytes
    value: bytes
    counter: str  # BridgeCounters field to bump once Kafka has it


class _RateLimitedWarnings:
    """At most one warning per key per interval, so a broken gateway cannot flood the log."""

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d more like this suppressed)"
            args = (*args, suppressed)
        self._logger.warning(msg, *args)


class MqttBridge:
    """Subscribes to gateway topics and forwards every message to Kafka before acking it.

    ``client_id`` names the persistent MQTT session. Give each bridge its own, stable across
    restarts (e.g. the host or pod name): a restarted bridge then receives what was queued
    for it while it was down. The default is unique per instance, so a restart with the
    default starts a new session and leaves the old one to expire after
    ``session_expiry_s`` (MQTT 5) with whatever was queued for it.
    """

    def __init__(
        self,
        settings: Settings,
        producer: Producer,
        gateway_of: Callable[[str], str | None],
        metrics: BridgeCounters | None = None,
        *,
        client_id: str | None = None,
        session_expiry_s: int = 3600,
        receive_maximum: int = 4000,
        window_ms: float = 10.0,
        window_max: int = 1000,
        keepalive_s: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else BridgeCounters()
        self.client_id = (
            client_id or f"cityops-bridge-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        )
        self._producer = producer
        self._gateway_of = gateway_of
        self._limits = Limits.from_settings(settings)
        self._topics = Topics.of(settings)
        self._clock = clock
        self._v5 = settings.mqtt_protocol == 5
        if self._v5:
            # Shared subscription: several bridges split the load, each message goes to one.
            prefix = f"$share/{settings.mqtt_share_group}/"
            self.filters = (prefix + TOPIC_FILTER,)
        else:
            self.filters = (TOPIC_FILTER,)

        # Messages received and not yet taken into a window.
        self._inbox: deque[Incoming] = deque()
        self._window_s = window_ms / 1000
        self._window_max = window_max
        self._window_full = threading.Event()
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._in_flight = 0  # messages of the window being sent
        # kafka-python hashes every key again in pure Python (murmur2); a bridge sees the
        # same devices over and over, so each (key, partition count) is hashed once.
        self._partition_of = functools.lru_cache(maxsize=65_536)(default_partition)
        self._stopping = threading.Event()
        self._accepting = True
        self._started = False
        self._last_message_at = time.monotonic()
        self._warnings = _RateLimitedWarnings(log, _WARN_INTERVAL_S)
        self._window_thread = threading.Thread(
            target=self._window_loop, name=f"{self.client_id}-window", daemon=True
        )
        self._session = MqttSession(
            settings.mqtt_host or "127.0.0.1",  # empty: the embedded broker
            settings.mqtt_port,
            self.client_id,
            self.filters,
            self._on_messages,
            protocol=5 if self._v5 else 4,
            username=settings.mqtt_username or None,
            password=settings.mqtt_password or None,
            keepalive_s=keepalive_s,
            # MQTT 5 ends a session at disconnect unless told otherwise; a persistent
            # session alone would not keep what is queued while the bridge is down.
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
            on_disconnected=self._on_disconnected,
            # Never more in hand than the broker was asked to send unacknowledged.
            hold=lambda: self.pending_acks >= receive_maximum,
        )

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the session reconnects with backoff until stop()."""
        if self._started:
            raise RuntimeError("an MqttBridge starts once; make a new one to restart")
        self._started = True
        self._window_thread.start()
        # Connects in the background: a broker that is down at start-up is retried.
        self._session.start()
        log.info(
            "MQTT bridge %s connecting to %s:%s (MQTT %s), filters %s",
            self.client_id,
            self._session.host,
            self.settings.mqtt_port,
            "5" if self._v5 else "3.1.1",
            ", ".join(self.filters),
        )

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected and subscribed; False on timeout."""
        return self._session.subscribed.wait(timeout)

    @property
    def connected(self) -> bool:
        """Connected and subscribed right now."""
        return self._session.subscribed.is_set()

    @property
    def pending_acks(self) -> int:
        """Messages received but not yet acknowledged to the broker (about: no lock)."""
        return len(self._inbox) + self._in_flight

    def metrics_dict(self) -> dict[str, Any]:
        """Counters plus live state, for /metrics."""
        return {
            **self.metrics.as_dict(),
            "pending_acks": self.pending_acks,
            "connected": self.connected,
        }

    def stop(self, timeout: float = 10.0, *, end_session: bool = False) -> None:
        """Hand what is in flight to Kafka, ack it, disconnect.

        By default the MQTT session and its subscriptions survive, so the broker queues
        messages for this ``client_id`` until it comes back. ``end_session=True`` is for
        scaling down for good: unsubscribe first so the broker routes new messages to the
        other bridges, drain, then end the session (a shared-subscription session that
        never returns would otherwise keep getting a share of the traffic).
        """
        if not self._started or self._stopping.is_set():
            return
        deadline = time.monotonic() + timeout
        if end_session and self.connected:
            self._unsubscribe_and_drain(deadline)
        # From here on, new messages stay unacknowledged in the session: redelivered later.
        self._accepting = False
        self._window_full.set()
        self._wait_drained(deadline)
        self._stopping.set()
        self._session.stop(end_session=end_session)
        self._window_thread.join(timeout=max(0.1, deadline - time.monotonic()))
        left = self.pending_acks
        if left:
            log.warning(
                "MQTT bridge %s stopped with %d messages unacknowledged", self.client_id, left
            )
        log.info("MQTT bridge %s stopped: %s", self.client_id, self.metrics.as_dict())

    def _unsubscribe_and_drain(self, deadline: float) -> None:
        self._session.unsubscribe(max(0.0, deadline - time.monotonic()))
        # Messages already queued in the session keep coming after UNSUBACK; take them all.
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self._last_message_at >= _QUIET_S
            if quiet and self.pending_acks == 0:
                return
            time.sleep(0.05)

    def _wait_drained(self, deadline: float) -> None:
        with self._drained:
            self._drained.wait_for(
                lambda: not self._inbox and not self._in_flight,
                timeout=max(0.0, deadline - time.monotonic()),
            )

    # --- MQTT session callbacks (its network thread) ----------------------------------

    def _on_disconnected(self, reason: str) -> None:
        self._warnings.warning(
            "connection", "MQTT bridge %s disconnected (%s); reconnecting", self.client_id, reason
        )

    def _on_messages(self, messages: list[Incoming]) -> None:
        # Only queue them; the window thread does the rest.
        if not self._accepting:
            return  # not acknowledged: stays in the session for the next connection
        self._last_message_at = time.monotonic()
        self._inbox.extend(messages)
        if len(self._inbox) >= self._window_max:
            self._window_full.set()

    # --- message path: one window at a time --------------------------------------------

    def _window_loop(self) -> None:
        while True:
            self._window_full.wait(self._window_s)
            self._window_full.clear()
            # Taken by count, not by swapping the deque: the session appends concurrently.
            n = min(len(self._inbox), self._window_max)
            if n:
                with self._lock:
                    self._in_flight = n
                window = [self._inbox.popleft() for _ in range(n)]
                try:
                    self._run_window(window)
                except _AbandonedError:
                    pass  # stopping: left unacknowledged, redelivered next session
                except Exception:
                    # Left unacknowledged: the broker delivers them again after the next
                    # reconnect.
                    log.exception("MQTT bridge %s failed on a window", self.client_id)
                if len(self._inbox) >= self._window_max:
                    self._window_full.set()
            elif self._stopping.is_set():
                return
            with self._lock:
                self._in_flight = 0
                if not self._inbox:
                    self._drained.notify_all()

    def _run_window(self, window: list[Incoming]) -> None:
        """Decode, send, flush, then acknowledge the window's messages in arrival order."""
        now = self._clock()
        taken: list[Incoming] = []
        outgoing: list[_Outgoing] = []
        for message in window:
            try:
                out = self._outgoing_when_known(message, now)
            except _AbandonedError:
                raise
            except Exception:
                # Not acknowledged, so the broker delivers it again after a reconnect.
                log.exception(
                    "MQTT bridge %s failed on message id %s", self.client_id, message.packet_id
                )
                continue
            taken.append(message)
            outgoing.append(out)
        self._deliver(outgoing)
        self._acknowledge(taken)
        forwarded = sum(1 for o in outgoing if o.counter == "forwarded")
        self.metrics.add(
            received=len(window),
            forwarded=forwarded,
            deadlettered=len(outgoing) - forwarded,
        )

    def _acknowledge(self, messages: list[Incoming]) -> None:
        # In arrival order, one write per connection; a window can span a reconnect, and
        # the session drops the acks of a connection that is gone.
        run: list[int] = []
        connection = -1
        for m in messages:
            if not m.qos:
                continue
            if m.connection != connection and run:
                self._session.ack(connection, run)
                run = []
            connection = m.connection
            run.append(m.packet_id)
        if run:
            self._session.ack(connection, run)

    def _outgoing_when_known(self, message: Incoming, now: float) -> _Outgoing:
        """``_outgoing``, waiting out a device registry whose database is down.

        Skipping the message instead would leave it unacknowledged on a connection that
        stays up, so the broker would not deliver it again until the next reconnect.
        """
        failures = 0
        while True:
            try:
                return self._outgoing(message, now)
            except DATABASE_UNAVAILABLE as exc:
                failures += 1
                self._warnings.warning(
                    "registry",
                    "MQTT bridge %s: device registry unavailable (%s); attempt %d, will retry",
                    self.client_id,
                    describe(exc),
                    failures,
                )
                if self._stopping.wait(min(_RETRY_BASE_S * 2 ** min(failures, 10), _RETRY_MAX_S)):
                    raise _AbandonedError from exc

    def _outgoing(self, message: Incoming, now: float) -> _Outgoing:
        try:
            topic = message.topic.decode()
        except UnicodeDecodeError:
            topic = "<topic not UTF-8>"  # decode rejects it as topic_shape
        payload = message.payload
        try:
            decoded = decode(topic, payload, now, self._gateway_of, self._limits, to_wgs84_named)
        except RejectedPayload as rejected:
            self.metrics.reject(rejected.reason_code)
            self._warnings.warning(
                rejected.reason_code, "rejected MQTT message on %s: %s", topic, rejected
            )
            record = deadletter_record("mqtt", topic, payload, rejected, now)
            return _Outgoing(self._topics.deadletter, b"mqtt", record, "deadlettered")
        return _Outgoing(
            self._topics.telemetry, decoded.device_id.encode(), decoded.to_json(), "forwarded"
        )

    def _partitions(self) -> Callable[[_Outgoing], int | None]:
        """Each record's partition, as the producer's default partitioner would choose it.

        The topics' partition counts are read once per window, so a topic that grows is
        hashed on its new count from the next window on.
        """
        partitions_for = getattr(self._producer, "partitions_for", None)
        if partitions_for is None:
            return lambda out: None
        counts: dict[str, int] = {}

        def partition(out: _Outgoing) -> int | None:
            n = counts.get(out.topic)
            if n is None:
                n = counts[out.topic] = len(partitions_for(out.topic) or ())
            return self._partition_of(out.key, n) if n else None

        return partition

    def _deliver(self, outgoing: list[_Outgoing]) -> None:
        """Send every record and flush once; resend what failed until Kafka has it all.

        ``stop`` waits for a window in flight (up to its timeout); once stopping, a window
        Kafka keeps refusing is given up, unacknowledged, for the broker to redeliver.
        """
        failures = 0
        while outgoing:
            futures = []
            partition = self._partitions()
            for out in outgoing:
                try:
                    futures.append(
                        self._producer.send(
                            out.topic, key=out.key, value=out.value, partition=partition(out)
                        )
                    )
                except Exception as exc:  # e.g. KafkaTimeoutError: no metadata, buffer full
                    futures.append(_Failed(exc))
            try:
                self._producer.flush(timeout=_FLUSH_TIMEOUT_S)
            except Exception as exc:
                log.debug("Kafka flush: %r", exc)  # the futures tell which records failed
            failed = [out for out, f in zip(outgoing, futures, strict=True) if not _succeeded(f)]
            if not failed:
                return
            failures += 1
            self.metrics.add(kafka_errors=len(failed))
            error = next(f for f in futures if not _succeeded(f))
            self._warnings.warning(
                "kafka",
                "Kafka send of %d records failed (%r); will retry",
                len(failed),
                _exception(error),
            )
            outgoing = failed
            if self._stopping.wait(min(_RETRY_BASE_S * 2 ** min(failures, 10), _RETRY_MAX_S)):
                raise _AbandonedError


class _AbandonedError(Exception):
    """The bridge stopped while Kafka was refusing a window."""


class _Failed:
    """Stands for the future of a send that raised at once."""

    def __init__(self, exc: BaseException) -> None:
        self.exception = exc


def _succeeded(future: Any) -> bool:
    return not isinstance(future, _Failed) and future.is_done and future.succeeded()


def _exception(future: Any) -> BaseException | None:
    return getattr(future, "exception", None)
