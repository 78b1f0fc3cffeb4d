"""Does the Kafka-protocol broker slow down as a topic grows?

Starts its own Tansu on loopback (memory storage, Tansu's default; ``--storage postgres``
runs it on a throwaway PostgreSQL instead, if the Tansu build has that engine), or uses
the broker named by CITYOPS_KAFKA_BOOTSTRAP. Creates a fresh topic of 4 partitions, like
``cityops.telemetry``, and fills it in steps with telemetry-sized records (about 240 bytes
of JSON, keyed by 2,000 device ids) through the project's producer (``make_producer``).
After each step it prints one line:

- records: how many records the topic holds, by the offsets the broker gave the produced
  records (checked against what was sent; the JSON also has the broker's ListOffsets
  count, which Tansu 0.6 reports short, see ``timed_fetch``);
- produce/s: the step's produce rate, ``producer.flush()`` included;
- newest/s: a fresh consumer (no group, every partition assigned) reading the newest
  ``--window`` records, a quarter from the end of each partition;
- oldest/s: the same reading ``--window`` records from the start of the topic;
- RSS and CPU: the broker's resident memory (VmRSS) and CPU seconds (utime + stime) so
  far, from /proc (only for a broker this script started, or with ``--broker-pid``);
- µs/rec: the broker's CPU per record produced in the step. The clients are Python and
  often the slower side: this column shows the broker's own cost per record even when
  the rates above are the client's.

At the end, a summary compares the first step with the last. ``--json`` adds every figure
as one JSON object, the last thing on stdout. With ``--minutes``, the step under way when
the time is up still finishes.

``--restart-check`` measures nothing: it produces 1,000 records, restarts Tansu on the same
storage URL and counts the records the new process serves.

    python bench/bench_broker.py                           # 3,000,000 records, steps of 250,000
    python bench/bench_broker.py --minutes 30 --step 500000 --json  # fill for 30 minutes
    python bench/bench_broker.py --records 500000 --step 100000   # a short smoke run
    python bench/bench_broker.py --storage postgres        # Tansu on PostgreSQL
    python bench/bench_broker.py --restart-check [--storage postgres]

Runs by hand (never in the test suite). The machine is shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from cityops.services import (
    create_database,
    free_port,
    start_postgres_cluster,
    tansu_binary,
    wait_for_port,
)
from core.sensor.telemetry import CANONICAL_UNITS, SENSOR_TYPES, Reading, TelemetryMessage
from infra.kafka import make_producer, telemetry_fetch
from infra.settings import Settings
from simulations.city import DEVICE_PREFIXES

PARTITIONS = 4  # as the project's topics (Settings.kafka_partitions)
DEVICES = 2_000
# Distinct values per device: enough that the log is not one record repeated, few enough
# that building them costs nothing next to the run.
VARIANTS = 16
FETCH_TIMEOUT_S = 600.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Plausible first readings per sensor type (low, high), in the canonical unit.
_RANGES = {"water_level": (5.0, 180.0), "pm25": (3.0, 140.0), "tilt": (0.0, 4.0)}


# -- payloads --------------------------------------------------------------------------------


def telemetry_records(seed: int = 7) -> tuple[list[bytes], list[bytes]]:
    """Keys (one per device) and a pool of values: value ``j`` belongs to key ``j % DEVICES``.

    Each value is what the bridge puts on ``cityops.telemetry``: a device's main reading
    and its battery, about 240 bytes of JSON.
    """
    rng = random.Random(seed)
    types = list(SENSOR_TYPES)
    devices = []
    for d in range(DEVICES):
        sensor_type = types[d % len(types)]
        devices.append((f"{DEVICE_PREFIXES[sensor_type]}-{d // len(types) + 1:06d}", sensor_type))
    keys = [device.encode() for device, _ in devices]
    base = 1_763_700_000.0
    values: list[bytes] = []
    for variant in range(VARIANTS):
        for d, (device, sensor_type) in enumerate(devices):
            metric = SENSOR_TYPES[sensor_type][0]
            low, high = _RANGES.get(metric, (0.0, 150.0))
            ts = base + 60.0 * variant + d % 60
            message = TelemetryMessage(
                device_id=device,
                gateway_id=f"gw-{d // 400 + 1:02d}-{d % 400 // 50 + 1:02d}",
                received_at=round(ts + rng.uniform(0.05, 0.9), 3),
                readings=(
                    Reading(ts, metric, round(rng.uniform(low, high), 2), CANONICAL_UNITS[metric]),
                    Reading(ts, "battery", round(rng.uniform(20.0, 100.0), 1), "%"),
                ),
            )
            values.append(message.to_json())
    return keys, values


# -- the broker process ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    rss_mib: float
    cpu_s: float


def proc_sample(pid: int | None) -> ProcSample | None:
    """The broker's resident memory and CPU seconds so far, or None without a pid."""
    if pid is None:
        return None
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
            break
    # The command name (field 2) may hold spaces: split after its closing parenthesis,
    # which leaves field 3 (state) at index 0, so utime (14) and stime (15) at 11 and 12.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return ProcSample(rss_kib / 1024, (int(fields[11]) + int(fields[12])) / CLK_TCK)


class Tansu:
    """One Tansu broker on loopback, restartable on the same storage engine."""

    def __init__(self, storage_url: str, workdir: Path) -> None:
        self.storage_url = storage_url
        self.log_path = workdir / "tansu.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        # A new port on every start: a restarted broker never waits for the old socket.
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage_url,
        ]
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"}
            )
        try:
            wait_for_port(port, 30, self.proc)
            # Tansu binds its listener before it opens the storage: a storage engine it
            # cannot use makes it exit a moment after the port answers.
            time.sleep(0.5)
            if self.proc.poll() is not None:
                raise RuntimeError(f"Tansu exited with {self.proc.returncode}")
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise SystemExit(
                f"Tansu did not start on {self.storage_url}: {exc}\n{self.log_tail()}"
            ) from exc
        self.bootstrap = f"127.0.0.1:{port}"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM, not SIGKILL: the restart check gives the storage every chance to keep
        # what the broker acknowledged.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log_tail(self, chars: int = 2_000) -> str:
        with contextlib.suppress(OSError):
            return _ANSI.sub("", self.log_path.read_text(errors="replace")[-chars:])
        return ""


def storage_url(kind: str, workdir: Path, stack: contextlib.ExitStack) -> str:
    if kind == "memory":
        return "memory://tansu/"
    pg = start_postgres_cluster(workdir)
    stack.callback(pg.stop)
    url = create_database(pg.url, "tansu")
    # The scheme as Tansu's --help spells it.
    return "postgres://" + url.split("://", 1)[1]


# -- Kafka clients ---------------------------------------------------------------------------


def create_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-broker")
    try:
        admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        admin.close()


def topic_exists(bootstrap: str, name: str) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-broker")
    try:
        return name in set(admin.list_topics())
    finally:
        admin.close()


def fresh_consumer(settings: Settings) -> KafkaConsumer:
    """A consumer outside any group, fetching as the project's telemetry consumers do."""
    return KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id="bench-broker-fetch",
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **telemetry_fetch(settings),
    )


def listed_records(settings: Settings, topic: str) -> int:
    """Records in the topic by the broker's ListOffsets answer (latest minus earliest)."""
    consumer = fresh_consumer(settings)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        begins, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return sum(ends.values()) - sum(begins.values())
    finally:
        consumer.close()


@dataclass(frozen=True)
class Fetch:
    records: int
    seconds: float
    broker_cpu_s: float | None

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def timed_fetch(
    settings: Settings,
    topic: str,
    ends: dict[int, int],
    window: int,
    newest: bool,
    pid: int | None,
) -> Fetch:
    """Read ``window`` records, a quarter per partition, from its end or its start.

    ``ends`` are the partitions' next offsets as the producer learnt them, not the
    broker's ListOffsets answer: Tansu 0.6 answers "latest" with an offset inside the
    partition's last record batch: a window that ended there would miss the newest records.
    """
    consumer = fresh_consumer(settings)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        # Also opens the connection to the broker, before the clock starts.
        begins = consumer.beginning_offsets(tps)
        share = window // PARTITIONS
        stop_at: dict[Any, int] = {}
        for tp in tps:
            end = ends.get(tp.partition, 0)
            if newest:
                start, stop = max(begins[tp], end - share), end
            else:
                start, stop = begins[tp], min(end, begins[tp] + share)
            consumer.seek(tp, start)
            if stop > start:
                stop_at[tp] = stop
        got = 0
        before = proc_sample(pid)
        t0 = time.perf_counter()
        deadline = t0 + FETCH_TIMEOUT_S
        while stop_at:
            for tp, records in consumer.poll(timeout_ms=1_000).items():
                until = stop_at.get(tp)
                if until is None or not records:
                    continue
                got += sum(1 for r in records if r.offset < until)
                if records[-1].offset + 1 >= until:
                    # Done with this partition: no fetches for it while the others finish.
                    del stop_at[tp]
                    consumer.pause(tp)
            if time.perf_counter() > deadline:
                raise TimeoutError(f"fetched {got} records of {window} in {FETCH_TIMEOUT_S:.0f}s")
        seconds = time.perf_counter() - t0
        after = proc_sample(pid)
    finally:
        consumer.close()
    cpu = after.cpu_s - before.cpu_s if before and after else None
    return Fetch(got, seconds, cpu)


def produce(
    producer: Any,
    topic: str,
    keys: list[bytes],
    values: list[bytes],
    start: int,
    count: int,
    ends: dict[int, int],
) -> float:
    """Send records ``start`` .. ``start + count`` and flush; the seconds it took.

    Updates ``ends`` (partition: next offset) from the offsets the broker gave the
    records. Record ``i`` has key ``i % len(keys)``, so the last ``len(keys)`` sends hold
    each key once, and with it the last record of every partition: only their futures
    are kept, which spares the loop the cost of a callback per record.
    """
    send = producer.send
    n_keys, n_values = len(keys), len(values)
    stop = start + count
    tail_from = max(start, stop - n_keys)
    t0 = time.perf_counter()
    for i in range(start, tail_from):
        send(topic, key=keys[i % n_keys], value=values[i % n_values])
    tail = [
        send(topic, key=keys[i % n_keys], value=values[i % n_values])
        for i in range(tail_from, stop)
    ]
    producer.flush()
    seconds = time.perf_counter() - t0
    for future in tail:
        meta = future.get(timeout=30)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return seconds


# -- the growth run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    records: int  # in the topic after this step
    listed_records: int  # the same by ListOffsets
    step_records: int
    produce_s: float
    produce_rate: float
    produce_broker_cpu_s: float | None
    newest_rate: float
    newest_broker_cpu_s: float | None
    oldest_rate: float
    oldest_broker_cpu_s: float | None
    rss_mib: float | None
    cpu_s: float | None

    @property
    def broker_us_per_record(self) -> float | None:
        if self.produce_broker_cpu_s is None or not self.step_records:
            return None
        return self.produce_broker_cpu_s / self.step_records * 1e6


HEADER = (
    f"{'records':>10} {'produce/s':>10} {'newest/s':>10} {'oldest/s':>10} "
    f"{'RSS MiB':>9} {'CPU s':>8} {'µs/rec':>7}"
)


def step_line(s: Step) -> str:
    def opt(v: float | None, fmt: str, width: int) -> str:
        return f"{'-':>{width}}" if v is None else f"{v:>{width}{fmt}}"

    return (
        f"{s.records:>10,} {s.produce_rate:>10,.0f} {s.newest_rate:>10,.0f} "
        f"{s.oldest_rate:>10,.0f} {opt(s.rss_mib, ',.1f', 9)} {opt(s.cpu_s, ',.1f', 8)} "
        f"{opt(s.broker_us_per_record, '.1f', 7)}"
    )


def grow(args: argparse.Namespace, bootstrap: str, pid: int | None) -> dict[str, Any]:
    settings = Settings(kafka_bootstrap=bootstrap)
    topic = f"bench.broker.{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    keys, values = telemetry_records()
    mean_bytes = sum(map(len, values)) / len(values)
    print(
        f"topic {topic}: {PARTITIONS} partitions, {DEVICES:,} keys, "
        f"~{mean_bytes:.0f} bytes per value; fetch window {args.window:,}",
        flush=True,
    )
    print(HEADER, flush=True)
    producer = make_producer(settings, client_id="bench-broker")
    steps: list[Step] = []
    ends: dict[int, int] = {}
    sent = 0
    listed_warned = False
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    try:
        while True:
            if deadline is not None:
                if time.monotonic() >= deadline:
                    break
                count = args.step
            else:
                count = min(args.step, args.records - sent)
                if count <= 0:
                    break
            before = proc_sample(pid)
            produce_s = produce(producer, topic, keys, values, sent, count, ends)
            after = proc_sample(pid)
            sent += count
            # Offsets are dense from 0 in a fresh topic: the last offsets the broker gave
            # out count what it holds, and show any record lost or written twice.
            held = sum(ends.values())
            if held != sent:
                raise RuntimeError(f"the topic holds {held:,} records, {sent:,} were sent")
            listed = listed_records(settings, topic)
            if listed != held and not listed_warned:
                listed_warned = True
                print(
                    f"note: the broker's ListOffsets counts {listed:,} records, its produce "
                    f"offsets {held:,}; fetch windows use the produce offsets",
                    flush=True,
                )
            newest = timed_fetch(settings, topic, ends, args.window, True, pid)
            oldest = timed_fetch(settings, topic, ends, args.window, False, pid)
            now = proc_sample(pid)
            step = Step(
                records=held,
                listed_records=listed,
                step_records=count,
                produce_s=produce_s,
                produce_rate=count / produce_s,
                produce_broker_cpu_s=after.cpu_s - before.cpu_s if before and after else None,
                newest_rate=newest.rate,
                newest_broker_cpu_s=newest.broker_cpu_s,
                oldest_rate=oldest.rate,
                oldest_broker_cpu_s=oldest.broker_cpu_s,
                rss_mib=now.rss_mib if now else None,
                cpu_s=now.cpu_s if now else None,
            )
            steps.append(step)
            print(step_line(step), flush=True)
    except KeyboardInterrupt:
        # A long run stopped by hand still reports the steps it finished.
        print("interrupted", flush=True)
    finally:
        producer.close(timeout=10)
    return {"topic": topic, "value_bytes": mean_bytes, "steps": steps}


def summarize(steps: list[Step]) -> dict[str, Any]:
    if not steps:
        return {}
    first, last = steps[0], steps[-1]

    def compare(name: str, a: float | None, b: float | None) -> dict[str, Any]:
        ratio = b / a if a and b is not None else None
        return {"metric": name, "first": a, "last": b, "last_over_first": ratio}

    rows = [
        compare("produce records/s", first.produce_rate, last.produce_rate),
        compare("newest fetch records/s", first.newest_rate, last.newest_rate),
        compare("oldest fetch records/s", first.oldest_rate, last.oldest_rate),
        compare(
            "broker CPU µs per produced record",
            first.broker_us_per_record,
            last.broker_us_per_record,
        ),
    ]
    summary: dict[str, Any] = {
        "first_records": first.records,
        "last_records": last.records,
        "rows": rows,
    }
    if first.rss_mib is not None and last.rss_mib is not None and last.records > first.records:
        # Growth between the two steps only: the first step's RSS holds the broker's
        # fixed cost too.
        per_record = (last.rss_mib - first.rss_mib) * 1024 * 1024 / (last.records - first.records)
        summary["rss_bytes_per_record"] = per_record
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    if not summary:
        print("no step finished")
        return
    print(
        f"\nfirst step ({summary['first_records']:,} records) vs last "
        f"({summary['last_records']:,} records):"
    )
    for row in summary["rows"]:
        a, b, ratio = row["first"], row["last"], row["last_over_first"]
        if a is None or b is None:
            continue
        print(f"  {row['metric']:<34} {a:>12,.1f} -> {b:>12,.1f}   x{ratio:.2f}")
    if "rss_bytes_per_record" in summary:
        print(f"  broker RSS growth per record: {summary['rss_bytes_per_record']:,.0f} bytes")


# -- the restart check -------------------------------------------------------------------------


def count_records(bootstrap: str, topic: str, expected: int) -> int:
    """Read the topic from its start and count what arrives (not what offsets claim).

    Stops at ``expected`` records or after 5 s without one: ListOffsets cannot say
    where the end is (see ``timed_fetch``).
    """
    consumer = fresh_consumer(Settings(kafka_bootstrap=bootstrap))
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got = 0
        last_seen = time.monotonic()
        while got < expected and time.monotonic() - last_seen < 5:
            arrived = sum(map(len, consumer.poll(timeout_ms=500).values()))
            if arrived:
                got += arrived
                last_seen = time.monotonic()
        return got
    finally:
        consumer.close()


def restart_check(tansu: Tansu, records: int = 1_000) -> dict[str, Any]:
    topic = f"bench.restart.{uuid.uuid4().hex[:8]}"
    create_topic(tansu.bootstrap, topic)
    keys, values = telemetry_records()
    producer = make_producer(Settings(kafka_bootstrap=tansu.bootstrap), client_id="bench-broker")
    try:
        produce(producer, topic, keys, values, 0, records, {})
    finally:
        producer.close(timeout=10)
    before = count_records(tansu.bootstrap, topic, records)
    tansu.stop()
    tansu.start()
    exists = topic_exists(tansu.bootstrap, topic)
    after = count_records(tansu.bootstrap, topic, records) if exists else 0
    result = {
        "storage": tansu.storage_url,
        "produced": records,
        "read_before_restart": before,
        "topic_after_restart": exists,
        "read_after_restart": after,
    }
    print(
        f"{tansu.storage_url}: {records:,} produced, {before:,} read before the restart; "
        f"after it the topic {'exists' if exists else 'is gone'}, {after:,} records read"
    )
    return result


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--records", type=int, default=3_000_000, help="fill up to this many")
    parser.add_argument("--step", type=int, default=250_000, help="records per step")
    parser.add_argument(
        "--minutes", type=float, default=None, help="fill for this long instead of --records"
    )
    parser.add_argument("--window", type=int, default=100_000, help="records per timed fetch")
    parser.add_argument(
        "--storage",
        choices=["memory", "postgres"],
        default="memory",
        help="storage engine of the Tansu this script starts",
    )
    parser.add_argument(
        "--broker-pid",
        type=int,
        default=None,
        help="with CITYOPS_KAFKA_BOOTSTRAP: the broker's pid, for its memory and CPU",
    )
    parser.add_argument(
        "--restart-check",
        action="store_true",
        help="only check whether the log survives a restart of Tansu",
    )
    parser.add_argument("--json", action="store_true", help="end with every figure as JSON")
    args = parser.parse_args()
    if args.step <= 0 or args.window < PARTITIONS:
        parser.error("--step must be positive and --window at least the partition count")
    return args


@contextlib.contextmanager
def own_tansu(kind: str) -> Iterator[Tansu]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    os.chmod(workdir, 0o755)  # noqa: S103 - the postgres user must reach its data dir
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        tansu = Tansu(storage_url(kind, workdir, stack), workdir)
        stack.callback(tansu.stop)
        tansu.start()
        yield tansu


def main() -> None:
    args = parse_args()
    external = os.environ.get("CITYOPS_KAFKA_BOOTSTRAP", "")
    result: dict[str, Any] = {"config": vars(args).copy()}
    if args.restart_check:
        if external:
            sys.exit("--restart-check restarts a Tansu of its own: unset CITYOPS_KAFKA_BOOTSTRAP")
        with own_tansu(args.storage) as tansu:
            result["broker"] = {"bootstrap": tansu.bootstrap, "storage": tansu.storage_url}
            result["restart"] = restart_check(tansu)
    else:
        with contextlib.ExitStack() as stack:
            if external:
                bootstrap, pid = external, args.broker_pid
                result["broker"] = {"bootstrap": bootstrap, "pid": pid, "storage": "external"}
                print(f"broker {bootstrap} (CITYOPS_KAFKA_BOOTSTRAP), pid {pid}", flush=True)
            else:
                tansu = stack.enter_context(own_tansu(args.storage))
                bootstrap, pid = tansu.bootstrap, tansu.pid
                result["broker"] = {
                    "bootstrap": bootstrap,
                    "pid": pid,
                    "storage": tansu.storage_url,
                }
                print(f"Tansu {tansu_binary()} on {bootstrap}, {tansu.storage_url}", flush=True)
            run = grow(args, bootstrap, pid)
        summary = summarize(run["steps"])
        print_summary(summary)
        result.update(
            topic=run["topic"],
            value_bytes=run["value_bytes"],
            steps=[
                asdict(s) | {"broker_us_per_record": s.broker_us_per_record} for s in run["steps"]
            ],
            summary=summary,
        )
    if args.json:
        print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
