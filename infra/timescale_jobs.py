"""TimescaleDB's policy jobs (compression, retention, aggregate refreshes), run by CityOps.

On PostgreSQL 15.20 every job fails in TimescaleDB 2.28.3's background workers: a job
started there has no active portal, so the extension creates a bare one, and this
PostgreSQL refuses to drop a portal never set up ("cannot drop portal "" while it is
being set up"), which fails the job after its work. ``CALL run_job(id)`` from a session
runs inside that session's portal and works. So ``cityops maintain`` runs each scheduled
job by hand once its schedule interval has passed since this process last ran it
(``CITYOPS_TIMESCALE_JOBS=false`` leaves the jobs to the server).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from infra.settings import Settings

log = logging.getLogger(__name__)

# pg_try_advisory_lock(_JOB_LOCK, job_id): one maintainer runs a job at a time.
_JOB_LOCK = 7202613


@dataclass
class JobRunner:
    """Runs the due TimescaleDB jobs of one database, one ``tick`` at a time."""

    database_url: str
    clock: Callable[[], float] = time.monotonic
    last_run: dict[int, float] = field(default_factory=dict)
    conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.database_url, autocommit=True)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def due(self) -> list[tuple[int, str, str]]:
        """Scheduled jobs whose interval has passed since this runner last ran them, in
        the order they were made (compression, retention, minute then hour refresh):
        ``(job_id, proc_name, relation)``. None without TimescaleDB."""
        conn = self._connection()
        if (
            conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
            is None
        ):
            return []
        rows = conn.execute(
            "SELECT job_id, proc_name, coalesce(hypertable_name, ''),"
            " extract(epoch FROM schedule_interval)::float8"
            " FROM timescaledb_information.jobs"
            " WHERE scheduled AND proc_name <> 'policy_telemetry' ORDER BY job_id"
        ).fetchall()
        now = self.clock()
        return [
            (int(job_id), proc, relation)
            for job_id, proc, relation, every in rows
            if job_id not in self.last_run or now - self.last_run[job_id] >= every
        ]

    def tick(self) -> list[int]:
        """Run every due job; return the ids of those that ran (failed ones included)."""
        ran = []
        for job_id, proc, relation in self.due():
            conn = self._connection()
            locked = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (_JOB_LOCK, job_id)
            ).fetchone()
            if not (locked and locked[0]):
                continue  # another maintainer is running it
            started = time.monotonic()
            try:
                conn.execute("CALL run_job(%s)", (job_id,))
                log.info(
                    "job %d (%s on %s) ran in %.2f s",
                    job_id,
                    proc,
                    relation,
                    time.monotonic() - started,
                )
            except psycopg.Error as exc:
                log.warning("job %d (%s on %s) failed: %s", job_id, proc, relation, exc)
            finally:
                self.last_run[job_id] = self.clock()
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_JOB_LOCK, job_id))
            ran.append(job_id)
        return ran

    def run(self, stop: threading.Event, poll_s: float) -> None:
        log.info("maintainer: running TimescaleDB's jobs when due (every %.0f s a look)", poll_s)
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except psycopg.OperationalError as exc:
                    log.warning("maintainer: database unavailable (%s); retrying", exc)
                    self.close()
                stop.wait(poll_s)
        finally:
            self.close()


def run_maintainer(settings: Settings, stop: threading.Event) -> None:
    """The ``cityops maintain`` worker."""
    if not settings.timescale_jobs:
        log.info("maintainer: CITYOPS_TIMESCALE_JOBS is off; TimescaleDB runs its own jobs")
        return
    JobRunner(settings.database_url).run(stop, settings.timescale_jobs_poll_s)
