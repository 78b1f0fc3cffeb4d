"""Soak: the rainstorm at a few times its rate, every process separate, one killed a minute.

Starts the whole pipeline as the demo does, one process per command (``python -m cityops
api | projector | telemetry | bridge | intake | sla | relay | brain | notifier``),
then the gateway simulator (``cityops simulate``: the demo city's 2,000 sensors over
MQTT) and the citizens (``cityops citizens``: cases over Open311 and the hotline topic),
both playing ``--scenario`` at ``--rate-factor`` times the demo's rates (messages and
everyday cases per second). After ``--warmup-s`` it SIGKILLs one of bridge, telemetry
(the writer and the monitor), projector, intake and brain about every ``--kill-every-s``
(the interval drawn from 0.5-1.5 times that, the victim at random, both from ``--seed``)
and restarts it at once, as a supervisor would. Every ``--sample-s`` it reads each
process's RSS, the projections' lag behind the log and the Kafka consumers' lag.

At the end it stops the simulators (they log what the broker acknowledged), waits for
the pipeline to drain (at most ``--drain-timeout``), stops everything and reports:
readings PUBACKed against those stored (lost, duplicated); cases acknowledged (HTTP 2xx,
hotline records Kafka acknowledged) against those recorded, alarms against incidents,
the brain's links, the relay's topic against the log, a backtest of the rules over the
stored readings; the worst projection lag; the live views against views rebuilt from
the log; RSS at the start and end of each process and its growth (does it level off?);
the kills and restarts. ``--json`` prints one JSON document, last on stdout. The exit
code is 1 if anything was lost or duplicated or the views differ.

    python -m bench.bench_soak --minutes 3 --kill-every-s 40
    python -m bench.bench_soak --minutes 30 --rate-factor 4 --kill-every-s 60 --json

Uses the services named by CITYOPS_* variables if CITYOPS_DATABASE_URL is set, otherwise
starts its own (throwaway PostgreSQL cluster, Mosquitto, Tansu); always a fresh database,
topic prefix, MQTT share group and bridge session, and the bench city (var/bench-city).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import signal
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import procstat
from bench import soak_checks as checks
from bench.bench_pipeline import publish_now, service_groups
from bench.harness import fresh_settings, services
from bench.mqtt_load import drop_session
from bench.soak_procs import Proc, Service
from bench.soak_report import kill_schedule, print_report, rss_growth
from cityops.bootstrap import seed
from cityops.services import free_port
from infra.kafka import Topics
from infra.settings import Settings

VICTIMS = ("bridge", "telemetry", "projector", "intake", "brain")
# The demo's processes (cityops/cli/demo.py), the simulators apart; ``telemetry`` is the
# writer and the monitor on one consumer.
PIPELINE: tuple[str, ...] = ("api", "projector", "telemetry", "bridge", "intake")
PIPELINE += ("sla", "relay", "brain", "notifier")
# What the RSS of a service means (their growth does not fail the run).
SERVICE_NOTES = {
    "tansu": "its storage is memory only: it holds every record, so it grows with the load",
    "postgres": "its processes added up: shared buffers count once per process that read them",
}
READY_TIMEOUT_S = 120.0
SIM_STOP_TIMEOUT_S = 90.0
_SIM_STATS = re.compile(r"simulator: SimulatorStats\(([^)]*)\)")
_CITIZEN_STATS = re.compile(r"citizens: CitizenStats\(([^)]*)\)")
_WRITER_STOPPED = re.compile(r"telemetry consumer stopping: writer (\{.*?\})")
_BRIDGE_STOPPED = re.compile(r"MQTT bridge \S+ stopped: (\{.*\})")


def _stats(pattern: re.Pattern[str], text: str) -> dict[str, Any]:
    """The fields of the last stats line ``pattern`` finds (``name=number, ...``)."""
    found = pattern.findall(text)
    if not found:
        return {}
    out: dict[str, Any] = {}
    for item in found[-1].split(","):
        name, _, value = item.strip().partition("=")
        out[name] = float(value) if "." in value else int(value)
    return out


def _logged_dicts(pattern: re.Pattern[str], text: str) -> list[dict[str, Any]]:
    out = []
    for found in pattern.findall(text):
        try:
            out.append(ast.literal_eval(found))
        except (ValueError, SyntaxError):
            continue
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    load = ap.add_argument_group("load")
    load.add_argument("--minutes", type=float, default=30.0, help="minutes of load")
    load.add_argument("--rate-factor", type=float, default=4.0, help="times the demo's rates")
    load.add_argument("--scenario", default="rainstorm")
    kills = ap.add_argument_group("kills")
    kills.add_argument(
        "--kill-every-s", type=float, default=60.0, help="mean s between kills; 0: none"
    )
    kills.add_argument("--seed", type=int, default=1, help="seeds the kill times and victims")
    kills.add_argument("--warmup-s", type=float, default=30.0, help="s of load before kills, RSS")
    checks = ap.add_argument_group("checks")
    checks.add_argument("--sample-s", type=float, default=3.0, help="s between samples")
    checks.add_argument(
        "--drain-timeout", type=float, default=300.0, help="s to wait for the drain"
    )
    checks.add_argument("--quiet-s", type=float, default=10.0, help="s without new events: drained")
    checks.add_argument(
        "--rss-floor", type=float, default=1.0, help="MiB/min below which no growth"
    )
    checks.add_argument(
        "--backtest",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replay the rules over the stored readings and compare with the log",
    )
    out = ap.add_argument_group("output")
    out.add_argument("--log-dir", type=Path, default=None, help="process logs (default: temp)")
    out.add_argument("--json", action="store_true", help="print every figure as JSON, last")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.rate_factor <= 0 or args.sample_s <= 0:
        ap.error("--minutes, --rate-factor and --sample-s must be positive")
    return args


class Soak:
    """One soak run: its processes, its clock (s since construction), what it sampled."""

    def __init__(self, args: argparse.Namespace, settings: Settings, log_dir: Path) -> None:
        self.args = args
        self.settings = settings
        self.topics = Topics.of(settings)
        self.log_dir = log_dir
        self.origin = time.monotonic()
        self.env = {**os.environ, "CITYOPS_LOG_LEVEL": "INFO"}
        self.bridge_id = f"{settings.kafka_topic_prefix}bridge"
        self.procs: dict[str, Proc] = {}
        self.services: list[Service] = []
        self.load_start = self.load_end = 0.0
        self.load_started_at = datetime.now(UTC)
        self.samples: list[dict[str, Any]] = []
        self.kills: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.drain: dict[str, Any] = {}

    def now(self) -> float:
        return time.monotonic() - self.origin

    # -- processes ------------------------------------------------------------------------

    def _command(self, name: str) -> list[str]:
        base = [sys.executable, "-m", "cityops"]
        if name == "bridge":
            return [*base, "bridge", "--client-id", self.bridge_id]
        if name == "simulate":
            return [*base, "simulate", "--scenario", self.args.scenario]
        return [*base, name]

    def start(self, name: str, kind: str = "pipeline") -> None:
        proc = self.procs.get(name)
        if proc is None:
            proc = Proc(name, self._command(name), self.log_dir / f"{name}.log", kind)
            self.procs[name] = proc
        proc.start(self.env, self.now())

    def kill_all(self) -> None:
        """SIGKILL whatever is still running (the way out after an error)."""
        for proc in self.procs.values():
            if proc.alive():
                proc.kill(self.now())

    def wait_ready(self) -> None:
        """Until the API answers and the bridge has subscribed (the broker has a subscriber)."""
        base = f"http://127.0.0.1:{self.settings.api_port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        api_up = bridge_up = False
        while time.monotonic() < deadline and not (api_up and bridge_up):
            self.check_exits()
            if not api_up:
                with suppress(httpx.HTTPError):
                    api_up = httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            if not bridge_up:
                # An unregistered device: dead-lettered by the bridge, not stored.
                result = publish_now(self.settings, ["soak-probe"])
                bridge_up = result["acked"] == 1 and not result["ack_reasons"].get("0x10")
            if not (api_up and bridge_up):
                time.sleep(1.0)
        if not (api_up and bridge_up):
            raise RuntimeError(
                f"not ready in {READY_TIMEOUT_S:.0f} s: API {'up' if api_up else 'down'},"
                f" bridge {'subscribed' if bridge_up else 'not subscribed'} (logs: {self.log_dir})"
            )

    def check_exits(self) -> None:
        """A process that ended by itself is noted; a pipeline process is restarted."""
        for proc in self.procs.values():
            rc = proc.exited(self.now())
            if rc is None:
                continue
            at = self.now() - self.load_start
            if len(proc.exits) == 1:  # a crash loop shows its cause once
                tail = "\n".join(proc.log_text().splitlines()[-8:])
                print(f"  {proc.name} exited with {rc}:\n{tail}", file=sys.stderr, flush=True)
            else:
                print(f"  {at:6.0f} s: {proc.name} exited again ({rc})", file=sys.stderr)
            if proc.kind == "load":
                raise RuntimeError(f"the {proc.name} simulator failed: its counts are lost")
            proc.start(self.env, self.now())

    # -- sampling -------------------------------------------------------------------------

    def sample(self, conn: Any, kafka: checks.KafkaView, phase: str) -> dict[str, Any]:
        t = self.now()
        table = procstat.scan()
        for proc in self.procs.values():
            proc.sample(t, table)
        for svc in self.services:
            svc.sample(t, table)
        point: dict[str, Any] = {"t": t, "phase": phase}
        point.update(checks.log_lags(conn))
        found = checks.consumers(conn, kafka, self.topics)
        point["consumers"] = {name: c["lag"] for name, c in found.items()}
        point["consumed"] = sum(c["read"] for c in found.values())
        self.samples.append(point)
        return point

    # -- the run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        for name in PIPELINE:
            self.start(name)
        self.wait_ready()
        self.services = [
            Service(g.name, g.roots, g.note) for g in service_groups(self.settings) if g.roots
        ]
        kafka = checks.KafkaView(self.settings)
        try:
            with checks.connect(self.settings.database_url) as conn:
                self.load(conn, kafka)
                self.stop_simulators()
                self.wait_drained(conn, kafka)
            self.stop_pipeline()
            return self.results(kafka)
        finally:
            kafka.close()

    def load(self, conn: Any, kafka: checks.KafkaView) -> None:
        """The simulators' load for --minutes, killing and restarting as scheduled."""
        args = self.args
        self.load_started_at = datetime.now(UTC)
        self.load_start = self.now()
        self.start("simulate", "load")
        self.start("citizens", "load")
        self.load_end = self.load_start + args.minutes * 60
        warm = self.load_start + args.warmup_s
        schedule = kill_schedule(args.seed, warm, self.load_end, args.kill_every_s, VICTIMS)
        print(
            f"load for {args.minutes:g} min, {len(schedule)} kills scheduled; logs in"
            f" {self.log_dir}",
            file=sys.stderr,
            flush=True,
        )
        next_sample = self.now()
        while (t := self.now()) < self.load_end:
            while schedule and schedule[0][0] <= t:
                _, victim = schedule.pop(0)
                self.kill_and_restart(victim)
            if t >= next_sample:
                self.check_exits()
                self.sample(conn, kafka, "warm-up" if t < warm else "load")
                next_sample += args.sample_s
            wait = min(next_sample, schedule[0][0] if schedule else self.load_end)
            time.sleep(max(0.0, min(0.5, wait - self.now())))

    def kill_and_restart(self, name: str) -> None:
        proc = self.procs[name]
        if not proc.alive():
            self.check_exits()  # it ended by itself: noted and restarted, not killed
            return
        t = self.now()
        proc.kill(t)
        self.kills.append({"process": name, "t": t - self.load_start})
        proc.start(self.env, self.now())
        print(f"  {t - self.load_start:6.0f} s: killed and restarted {name}", file=sys.stderr)

    def stop_simulators(self) -> None:
        for name in ("simulate", "citizens"):
            self.procs[name].terminate()
        for name in ("simulate", "citizens"):
            rc = self.procs[name].wait(SIM_STOP_TIMEOUT_S)
            self.procs[name].popen = None
            if rc != 0:
                self.problems.append(f"the {name} simulator stopped with exit code {rc}")

    def wait_drained(self, conn: Any, kafka: checks.KafkaView) -> None:
        """Until every consumer and follower is at its input's end, and neither the log nor
        the consumers' positions moved for --quiet-s."""
        args = self.args
        start = self.now()
        last: tuple[int, int] = (-1, -1)
        quiet_since = start
        outcome = "timed out"
        while self.now() - start < args.drain_timeout:
            self.check_exits()
            point = self.sample(conn, kafka, "drain")
            if (point["head"], point["consumed"]) != last:
                last, quiet_since = (point["head"], point["consumed"]), self.now()
            idle = (
                not any(point["consumers"].values())
                and point["projection_events"] == 0
                and point["brain_backlog"] == 0
                and point["relay_backlog"] == 0
            )
            if idle and self.now() - quiet_since >= args.quiet_s:
                outcome = "complete"
                break
            time.sleep(min(args.sample_s, 2.0))
        self.drain = {"outcome": outcome, "seconds": self.now() - start}
        if outcome != "complete":
            self.problems.append(f"the pipeline did not drain in {args.drain_timeout:.0f} s")

    def stop_pipeline(self) -> None:
        procs = [self.procs[name] for name in PIPELINE]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            rc = proc.wait()
            proc.popen = None
            # uvicorn raises the signal it caught again once it has shut down cleanly.
            if rc not in (0, None) and not (proc.name == "api" and rc == -signal.SIGTERM):
                self.problems.append(f"{proc.name} stopped with exit code {rc}")
        drop_session(
            self.settings.mqtt_host or "127.0.0.1",
            self.settings.mqtt_port,
            self.bridge_id,
            version=5 if self.settings.mqtt_protocol == 5 else 4,
            username=self.settings.mqtt_username,
            password=self.settings.mqtt_password,
        )

    # -- figures --------------------------------------------------------------------------

    def results(self, kafka: checks.KafkaView) -> dict[str, Any]:
        args = self.args
        simulator = _stats(_SIM_STATS, self.procs["simulate"].log_text())
        citizens = _stats(_CITIZEN_STATS, self.procs["citizens"].log_text())
        if not simulator or not citizens:
            self.problems.append("a simulator logged no counts: the accounting is incomplete")
        dead = checks.deadletters(kafka.read_all(self.topics.deadletter))
        with checks.connect(self.settings.database_url) as conn:
            readings = checks.readings(conn, simulator, dead)
            writer = _logged_dicts(_WRITER_STOPPED, self.procs["telemetry"].log_text())
            readings["writer_skipped_duplicates"] = writer[-1].get("duplicates") if writer else None
            events: dict[str, Any] = {
                "citizens": citizens,
                "cases": checks.cases(conn, citizens, dead),
                "alarms": checks.alarms(conn),
                "brain": checks.brain(conn),
                "relay": checks.relay(
                    conn, self.topics.domain_events, kafka.read_all(self.topics.domain_events)
                ),
                "deadletters": dead,
            }
        bridge = _logged_dicts(_BRIDGE_STOPPED, self.procs["bridge"].log_text())
        readings["bridge_counters_last_incarnation"] = bridge[-1] if bridge else None
        views = checks.views(self.settings, timeout_s=600)
        if args.backtest:
            end = datetime.now(UTC)
            events["backtest"] = checks.backtest(
                self.settings, self.load_started_at - timedelta(seconds=60), end
            )
        report = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "sim_rate": self.settings.sim_rate,
            "cases_rate": self.settings.cases_sim_rate,
            "load_s": self.load_end - self.load_start,
            "drain": self.drain,
            "readings": readings,
            "events": events,
            "lag": self.lag_figures(),
            "views": views,
            "processes": self.process_figures(),
            "kills": self.kills,
            "samples": self.samples,
            "logs": str(self.log_dir),
        }
        for proc in self.procs.values():
            if proc.exits:
                first = proc.exits[0][0] - self.load_start
                codes = sorted({rc for _, rc in proc.exits})
                self.problems.append(
                    f"{proc.name} exited by itself {len(proc.exits)} times (first at"
                    f" {first:.0f} s, exit codes {codes}); see its log"
                )
        report["problems"] = self.problems + failures(report)
        report["ok"] = not failures(report)
        return report

    def lag_figures(self) -> dict[str, Any]:
        out = {}
        for phase in ("load", "drain"):
            points = [s for s in self.samples if s["phase"] == phase]
            consumers: dict[str, int] = {}
            for s in points:
                for name, lag in s["consumers"].items():
                    consumers[name] = max(consumers.get(name, 0), lag)
            out[phase] = {
                "events": max((s["projection_events"] for s in points), default=None),
                "seconds": max((s["projection_s"] for s in points), default=None),
                "consumers": consumers,
            }
        return out

    def process_figures(self) -> list[dict[str, Any]]:
        start = self.load_start + self.args.warmup_s
        out = []
        members: list[Proc | Service] = [*self.procs.values(), *self.services]
        for p in members:
            measured = [r for r in p.rss if start <= r.t <= self.load_end]
            growth = rss_growth(p.rss, start, self.load_end, floor=self.args.rss_floor)
            out.append(
                {
                    "name": p.name,
                    "kind": p.kind,
                    "restarts": p.restarts,
                    "kills": [round(t - self.load_start, 1) for t in p.kills],
                    "exits": [(round(t - self.load_start, 1), rc) for t, rc in p.exits],
                    "rss_start_kib": measured[0].rss_kib if measured else None,
                    "rss_end_kib": measured[-1].rss_kib if measured else None,
                    "rss_max_kib": max((r.rss_kib for r in measured), default=None),
                    "growth": asdict(growth),
                    "note": SERVICE_NOTES.get(p.name, getattr(p, "note", "")),
                    "rss": [(round(r.t - self.load_start, 1), r.pid, r.rss_kib) for r in p.rss],
                }
            )
        return out


def failures(report: dict[str, Any]) -> list[str]:
    """What makes the run fail: anything lost or duplicated, views that differ."""
    out = []
    r = report["readings"]
    if r["lost"] is None:
        out.append("readings: no PUBACK count from the simulator")
    elif r["lost"]:
        out.append(f"readings: {r['lost']:,} PUBACKed messages not stored")
    for what in ("duplicate_rows", "partial_messages", "stored_never_published"):
        if r[what]:
            out.append(f"readings: {what.replace('_', ' ')} {r[what]:,}")
    e = report["events"]
    for channel, c in e["cases"].items():
        for what in ("lost", "duplicates"):
            if c[what]:
                out.append(f"{channel} cases: {what} {c[what]:,}")
    a = e["alarms"]
    for what in ("without_incident", "raised_twice", "orphans", "reference_mismatch"):
        if a[what]:
            out.append(f"alarms: {what.replace('_', ' ')} {a[what]:,}")
    for what in ("duplicate_links", "one_sided_links"):
        if e["brain"][what]:
            out.append(f"urban brain: {what.replace('_', ' ')} {e['brain'][what]:,}")
    for what in ("missing", "duplicates", "unknown"):
        if e["relay"][what]:
            out.append(f"relay: {what} {e['relay'][what]:,}")
    bt = e.get("backtest")
    if bt and not bt["alarms_identical"]:
        out.append("backtest: the stored readings give other alarms than the log holds")
    if not report["views"]["equal"]:
        out.append("views rebuilt from the log differ from the live views")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="cityops-soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        services(stack)
        normal = Settings()
        settings = fresh_settings(
            stack,
            "soak",
            "soak",
            CITYOPS_SIM_RATE=repr(normal.sim_rate * args.rate_factor),
            CITYOPS_CASES_SIM_RATE=repr(normal.cases_sim_rate * args.rate_factor),
            CITYOPS_SIM_SCENARIO=args.scenario,
            CITYOPS_API_PORT=str(free_port()),
        )
        os.environ["CITYOPS_MQTT_SHARE_GROUP"] = settings.kafka_topic_prefix.rstrip(".")
        settings = Settings()
        print(f"seeding {settings.data_dir} ...", file=sys.stderr, flush=True)
        seed(settings)
        soak = Soak(args, settings, log_dir)
        stack.callback(soak.kill_all)
        report = soak.run()
    (log_dir / "report.json").write_text(json.dumps(report, default=str))
    print_report(report)
    if args.json:
        print(json.dumps(report, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
