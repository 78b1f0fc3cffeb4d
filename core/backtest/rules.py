"""Rule backtesting: re-run a version of the sensor rules over stored readings, compare.

Pure logic: the readings, the sensors' types, their alarm state at the window's start
and the alarms the log recorded come in as plain values (``infra.backtest`` loads
them, read-only). The readings go through the monitor's own evaluation
(``core.sensor.rules.evaluate_readings``) and the same raise/escalate/clear decisions as
``core.incident.policy.IncidentPolicy.apply``, in scratch state only.

The unit compared is the alarm episode: a raise (which opens an incident, or re-triggers
the one still open for that sensor and rule), its highest severity, and its clear.

Correlation rules: ``CorrelationReplay`` takes the log's events in order (decoded), applies
them to a ``ScratchCity`` in memory, leaves out the urban brain's own decisions for the
window's triggers and lets the real ``Correlator`` decide instead. The unit compared is
the ``Decision`` (a link, a cluster incident, a sensor check, a confirmation, a merge),
read off the recorded and the replayed events by the same function.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import AggregateCreated

from core.app import CityProcessingEvent
from core.backtest.nearby import ScratchCity
from core.brain.correlation import SYSTEM_BRAIN, CorrelationPolicy, Correlator
from core.case import ServiceCase
from core.errors import DomainError
from core.incident import SEVERITIES, Incident
from core.sensor.rules import DeviceState, Rule, RuleSet, RuleState, evaluate_readings


@dataclass(frozen=True, slots=True)
class StoredReading:
    """One row of the readings table."""

    ts: float
    device_id: str
    metric: str
    value: float


@dataclass(slots=True)
class AlarmEpisode:
    """One alarm of one (sensor, rule): raised, possibly escalated, possibly cleared."""

    device_id: str
    rule_id: str
    rule_version: int
    severity: str  # at the raise
    raised_at: float  # reading time of the raising reading
    value: float
    peak_severity: str
    cleared_at: float | None = None
    # Live episodes only: the incident the raise opened or re-triggered, and which.
    incident_id: str | None = None
    incident_outcome: str | None = None  # "opened" | "retriggered"

    @property
    def key(self) -> tuple[str, str]:
        return self.device_id, self.rule_id

    def overlaps(self, other: AlarmEpisode) -> bool:
        end_a = float("inf") if self.cleared_at is None else self.cleared_at
        end_b = float("inf") if other.cleared_at is None else other.cleared_at
        return self.raised_at <= end_b and other.raised_at <= end_a


# The readings table keeps microseconds; the log keeps the reading time as sent.
SAME_INSTANT_S = 0.001


@dataclass(frozen=True, slots=True)
class EpisodeMatch:
    live: AlarmEpisode
    backtest: AlarmEpisode

    @property
    def time_shift_s(self) -> float:
        shift = self.backtest.raised_at - self.live.raised_at
        return 0.0 if abs(shift) < SAME_INSTANT_S else round(shift, 3)

    @property
    def same_severity(self) -> bool:
        return (
            self.live.severity == self.backtest.severity
            and self.live.peak_severity == self.backtest.peak_severity
        )


@dataclass(slots=True)
class ReplayStats:
    readings: int = 0
    unknown_device_readings: int = 0
    devices: int = 0


def _ts_iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _episode_json(ep: AlarmEpisode) -> dict[str, Any]:
    out = asdict(ep)
    out["raised_at"] = _ts_iso(ep.raised_at)
    out["cleared_at"] = _ts_iso(ep.cleared_at)
    return out


@dataclass(slots=True)
class BacktestReport:
    """What the chosen rules would have done differently in the window (JSON-able)."""

    window_from: str
    window_to: str
    rules_version: int
    live_rules_versions: list[int]
    initial_state: str
    readings: int
    unknown_device_readings: int
    matched: list[EpisodeMatch] = field(default_factory=list)
    severity_differs: list[EpisodeMatch] = field(default_factory=list)
    would_not_have_opened: list[AlarmEpisode] = field(default_factory=list)
    would_have_opened: list[AlarmEpisode] = field(default_factory=list)
    correlation: CorrelationOutcome | None = None

    @property
    def alarms_identical(self) -> bool:
        """The chosen rules raise exactly the live alarms, at the same readings."""
        return (
            not self.severity_differs
            and not self.would_not_have_opened
            and not self.would_have_opened
            and all(m.time_shift_s == 0 for m in self.matched)
        )

    @property
    def identical(self) -> bool:
        """Neither the sensor rules nor the correlation rules would have done otherwise."""
        return self.alarms_identical and (self.correlation is None or self.correlation.identical)

    def to_json(self) -> dict[str, Any]:
        def match(m: EpisodeMatch) -> dict[str, Any]:
            return {
                "live": _episode_json(m.live),
                "backtest": _episode_json(m.backtest),
                "time_shift_s": m.time_shift_s,
            }

        return {
            "window": {"from": self.window_from, "to": self.window_to},
            "rules_version": self.rules_version,
            "live_rules_versions": self.live_rules_versions,
            "initial_state": self.initial_state,
            "readings": self.readings,
            "unknown_device_readings": self.unknown_device_readings,
            "alarms_identical": self.alarms_identical,
            "counts": {
                "matched": len(self.matched),
                "severity_differs": len(self.severity_differs),
                "would_not_have_opened": len(self.would_not_have_opened),
                "would_have_opened": len(self.would_have_opened),
            },
            "matched": [match(m) for m in self.matched],
            "severity_differs": [match(m) for m in self.severity_differs],
            "would_not_have_opened": [_episode_json(e) for e in self.would_not_have_opened],
            "would_have_opened": [_episode_json(e) for e in self.would_have_opened],
            "correlation": None if self.correlation is None else self.correlation.to_json(),
            "identical": self.identical,
        }


# -- sensor rules ---------------------------------------------------------------------------


def _level_for(rule: Rule, severity: str) -> str:
    """The chosen rule's level for a severity recorded under another version."""
    names = [lv.severity for lv in rule.levels]
    if severity in names:
        return severity
    rank = SEVERITIES.index(severity) if severity in SEVERITIES else 0
    below = [n for n in names if SEVERITIES.index(n) <= rank]
    return below[-1] if below else names[0]


def initial_states(
    ruleset: RuleSet, sensor_types: Mapping[str, str], alarms: Mapping[str, Mapping[str, str]]
) -> dict[str, DeviceState]:
    """Device states at the window's start from the alarms active then (device -> rule -> sev).

    Pending repeat counts are not in the log: every rule starts with none.
    """
    states: dict[str, DeviceState] = {}
    for device_id, active in alarms.items():
        kind = sensor_types.get(device_id)
        if kind is None:
            continue
        rules = {r.id: r for r in ruleset.for_type(kind)}
        state = DeviceState()
        for rule_id, severity in active.items():
            if rule_id in rules:
                state.rules[rule_id] = RuleState(severity=_level_for(rules[rule_id], severity))
        states[device_id] = state
    return states


def replay_rules(
    ruleset: RuleSet,
    sensor_types: Mapping[str, str],
    readings: Iterable[StoredReading],
    states: dict[str, DeviceState] | None = None,
    stats: ReplayStats | None = None,
) -> list[AlarmEpisode]:
    """Feed readings (in time order) through the rules; return the alarm episodes raised.

    ``states`` (device -> state at the start, mutated) defaults to every device normal.
    """
    states = {} if states is None else states
    stats = ReplayStats() if stats is None else stats
    episodes: list[AlarmEpisode] = []
    active: dict[tuple[str, str], AlarmEpisode | None] = {}
    for device_id, state in states.items():
        for rule_id, rs in state.rules.items():
            if rs.severity is not None:
                active[(device_id, rule_id)] = None  # active before the window
    for reading in readings:
        stats.readings += 1
        kind = sensor_types.get(reading.device_id)
        if kind is None:
            stats.unknown_device_readings += 1  # the monitor dead-letters these
            continue
        state = states.setdefault(reading.device_id, DeviceState())
        for tr in evaluate_readings(
            ruleset, kind, state, [(reading.metric, reading.value, reading.ts)]
        ):
            key = (reading.device_id, tr.rule_id)
            # The same decisions as IncidentPolicy.apply.
            if tr.kind in ("raised", "severity_changed") and tr.severity is not None:
                if key not in active:
                    ep = AlarmEpisode(
                        reading.device_id,
                        tr.rule_id,
                        ruleset.version,
                        tr.severity,
                        tr.ts,
                        tr.value,
                        tr.severity,
                    )
                    episodes.append(ep)
                    active[key] = ep
                elif (ep_or_none := active[key]) is not None:
                    ep_or_none.peak_severity = _higher(ep_or_none.peak_severity, tr.severity)
            elif tr.kind == "cleared" and key in active:
                ep_or_none = active.pop(key)
                if ep_or_none is not None:
                    ep_or_none.cleared_at = tr.ts
    stats.devices = len(states)
    return episodes


def _higher(a: str, b: str) -> str:
    return a if SEVERITIES.index(a) >= SEVERITIES.index(b) else b


def compare_episodes(
    live: list[AlarmEpisode], backtest: list[AlarmEpisode]
) -> tuple[list[EpisodeMatch], list[EpisodeMatch], list[AlarmEpisode], list[AlarmEpisode]]:
    """Pair live and backtest episodes per (sensor, rule).

    Same raise time first; then, in time order, episodes whose alarm periods overlap
    (a changed threshold raises earlier or later: the same alarm, shifted).
    Returns (matched, severity_differs, would_not_have_opened, would_have_opened).
    """
    by_key: dict[tuple[str, str], tuple[list[AlarmEpisode], list[AlarmEpisode]]] = defaultdict(
        lambda: ([], [])
    )
    for ep in live:
        by_key[ep.key][0].append(ep)
    for ep in backtest:
        by_key[ep.key][1].append(ep)
    pairs: list[EpisodeMatch] = []
    missing: list[AlarmEpisode] = []
    extra: list[AlarmEpisode] = []
    for key in sorted(by_key):
        lives = sorted(by_key[key][0], key=lambda e: e.raised_at)
        tests = sorted(by_key[key][1], key=lambda e: e.raised_at)
        for exact in (True, False):
            for lv in list(lives):
                for bt in tests:
                    at_once = abs(lv.raised_at - bt.raised_at) < SAME_INSTANT_S
                    if at_once if exact else lv.overlaps(bt):
                        pairs.append(EpisodeMatch(lv, bt))
                        lives.remove(lv)
                        tests.remove(bt)
                        break
        missing.extend(lives)
        extra.extend(tests)
    pairs.sort(key=lambda m: (m.live.raised_at, m.live.key))
    missing.sort(key=lambda e: (e.raised_at, e.key))
    extra.sort(key=lambda e: (e.raised_at, e.key))
    same = [m for m in pairs if m.same_severity]
    differs = [m for m in pairs if not m.same_severity]
    return same, differs, missing, extra


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """A recorded Sensor alarm event, decoded: what the live monitor did."""

    kind: str  # "raised" | "severity_changed" | "cleared"
    device_id: str
    rule_id: str
    rule_version: int
    severity: str | None
    value: float
    reading_ts: float
    incident_id: str | None = None


def live_episodes(
    events: Iterable[AlarmEvent], start: float, end: float, opened: set[str]
) -> tuple[list[AlarmEpisode], dict[str, dict[str, str]]]:
    """Episodes raised in [start, end) from the log's alarm events (in log order), and the
    alarms active at ``start`` (device -> rule -> severity). ``opened``: incident ids whose
    Opened event is in the log (a raise onto another incident re-triggered it)."""
    at_start: dict[str, dict[str, str]] = defaultdict(dict)
    current: dict[tuple[str, str], AlarmEpisode] = {}
    episodes: list[AlarmEpisode] = []
    for ev in events:
        key = (ev.device_id, ev.rule_id)
        if ev.reading_ts < start:
            if ev.kind == "cleared":
                at_start[ev.device_id].pop(ev.rule_id, None)
            elif ev.severity is not None:
                at_start[ev.device_id][ev.rule_id] = ev.severity
            continue
        if ev.reading_ts >= end:
            continue
        if ev.kind == "raised" and ev.severity is not None:
            ep = AlarmEpisode(
                ev.device_id,
                ev.rule_id,
                ev.rule_version,
                ev.severity,
                ev.reading_ts,
                ev.value,
                ev.severity,
                incident_id=ev.incident_id,
                incident_outcome="opened" if ev.incident_id in opened else "retriggered",
            )
            episodes.append(ep)
            current[key] = ep
        elif ev.kind == "severity_changed" and ev.severity is not None and key in current:
            current[key].peak_severity = _higher(current[key].peak_severity, ev.severity)
        elif ev.kind == "cleared" and key in current:
            current.pop(key).cleared_at = ev.reading_ts
    return episodes, {d: r for d, r in at_start.items() if r}


# -- correlation rules ----------------------------------------------------------------------

DECISION_KINDS = ("link", "cluster", "sensor_check", "confirmation", "merge")


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision of the correlation policy, recorded by the brain or replayed.

    ``subject``: the case (link, sensor_check) or the incident (cluster, confirmation,
    merge). ``outcome``: the incident linked or merged into, the check's result, the
    cluster's or the confirmed severity.
    """

    kind: str
    subject: str
    outcome: str
    rule_id: str | None = None
    rule_version: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.subject, self.outcome


def decisions_of(events: Iterable[Any]) -> list[Decision]:
    """The correlation decisions among these domain events (a case's LinkedToIncident
    mirrors its incident's CaseLinked and is not counted twice)."""
    out = []
    for e in events:
        subject = str(e.originator_id)
        if isinstance(e, Incident.CaseLinked):  # type: ignore[attr-defined]
            out.append(Decision("link", e.case_id, subject, e.rule_id, e.rule_version))
        elif isinstance(e, Incident.Opened) and e.kind == "citizen_reports":  # type: ignore[attr-defined]
            out.append(Decision("cluster", subject, e.severity, e.rule_id, e.rule_version))
        elif isinstance(e, ServiceCase.SensorsChecked):  # type: ignore[attr-defined]
            out.append(Decision("sensor_check", subject, e.result, e.rule_id, e.rule_version))
        elif isinstance(e, Incident.ConfirmedByReports):  # type: ignore[attr-defined]
            out.append(Decision("confirmation", subject, e.severity, None, e.rule_version))
        elif isinstance(e, Incident.MergedInto):  # type: ignore[attr-defined]
            out.append(Decision("merge", subject, e.target_id))
    return out


@dataclass(slots=True)
class DecisionDiff:
    same: list[Decision] = field(default_factory=list)
    missing: list[Decision] = field(default_factory=list)  # recorded, not replayed
    extra: list[Decision] = field(default_factory=list)  # replayed, not recorded

    @property
    def identical(self) -> bool:
        return not self.missing and not self.extra


def compare_decisions(
    recorded: Iterable[Decision], replayed: Iterable[Decision]
) -> dict[str, DecisionDiff]:
    """Per kind: same, missing (recorded only) and extra (replayed only), by
    (kind, subject, outcome); rule versions may differ."""
    rec = {d.key: d for d in recorded}
    rep = {d.key: d for d in replayed}
    diffs = {kind: DecisionDiff() for kind in DECISION_KINDS}
    for key in sorted(rec.keys() | rep.keys()):
        diff = diffs[key[0]]
        if key in rec and key in rep:
            diff.same.append(rec[key])
        elif key in rec:
            diff.missing.append(rec[key])
        else:
            diff.extra.append(rep[key])
    return diffs


@dataclass(slots=True)
class CorrelationOutcome:
    """The correlation half of the report."""

    version: int
    live_versions: list[int]
    triggers: int  # cases accepted and incidents opened in the window, replayed
    diffs: dict[str, DecisionDiff]
    # Recorded events the scratch state refused (their aggregate took another turn), and
    # the Correlator's refusals: the replay goes on past both.
    not_applied: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(d.identical for d in self.diffs.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "live_versions": self.live_versions,
            "triggers": self.triggers,
            "identical": self.identical,
            "events_not_applied": self.not_applied,
            "errors": self.errors,
            "counts": {
                kind: {"same": len(d.same), "missing": len(d.missing), "extra": len(d.extra)}
                for kind, d in self.diffs.items()
            },
            **{
                kind: {
                    "missing": [asdict(x) for x in d.missing],
                    "extra": [asdict(x) for x in d.extra],
                    "same": [asdict(x) for x in d.same],
                }
                for kind, d in self.diffs.items()
            },
        }


def brain_trigger(event: Any) -> int | None:
    """For an event the urban brain recorded: the log position of the event it decided on
    (its correlation id is ``brain:<position>``); None for anyone else's event."""
    if getattr(event, "actor", None) != SYSTEM_BRAIN:
        return None
    prefix, _, position = str(getattr(event, "correlation_id", "")).partition(":")
    return int(position) if prefix == "brain" and position.isdigit() else None


class CorrelationReplay:
    """The correlation policy re-run over log positions [start, end], in scratch state.

    Feed every event of the log up to ``end`` in log order (and the brain's events after
    it). Before ``start`` everything applies as recorded: the scratch state at the window's
    start is the live one. From ``start`` on, the brain's decisions on the window's
    triggers are set aside as the recorded ones, and the ``Correlator`` decides on each
    trigger (a case accepted, an incident opened) as the brain does.
    """

    def __init__(
        self,
        policy: CorrelationPolicy,
        alarm_categories: dict[str, str],
        distance_m: Callable[[float, float, float, float], float],
        start: int,
        end: int,
    ) -> None:
        self.city = ScratchCity(distance_m)
        self.policy = policy
        self.correlator = Correlator(
            policy,
            self.city,
            get=self.city.get,
            exists=self.city.exists,
            alarm_categories=alarm_categories,
            distance_m=distance_m,
        )
        self.start, self.end = start, end
        self.recorded: list[Decision] = []
        self.replayed: list[Decision] = []
        self.triggers = 0
        self.not_applied = 0
        self.errors: list[str] = []

    def feed(self, position: int, event: Any) -> None:
        trigger = brain_trigger(event)
        if trigger is not None and trigger >= self.start:
            if trigger <= self.end:
                self.recorded.extend(decisions_of([event]))
            return
        if position > self.end:
            return
        if not self._apply(event):
            self.not_applied += 1
        if position >= self.start and isinstance(
            event,
            (ServiceCase.CaseAccepted, Incident.Opened),  # type: ignore[attr-defined]
        ):
            self._correlate(position, event)

    def _apply(self, event: Any) -> bool:
        """Apply a recorded event to the scratch state; False if it does not fit there."""
        current = self.city.find(event.originator_id)
        try:
            if isinstance(event, AggregateCreated):
                if current is not None:
                    return False
                self.city.hold(event.mutate(None))
                return True
            if current is None:
                return False
            # The scratch aggregate's own history differs from the log's (the brain's
            # events left out, the Correlator's added): take the log's numbering.
            current.version = event.originator_version - 1
            event.mutate(current)
        except DomainError:
            return False
        return True

    def _correlate(self, position: int, event: Any) -> None:
        self.triggers += 1
        pe: ProcessingEvent[UUID] = CityProcessingEvent()
        correlation_id = f"brain:{position}"  # as the live brain names its decisions
        try:
            if isinstance(event, ServiceCase.CaseAccepted):  # type: ignore[attr-defined]
                self.correlator.case_accepted(event.originator_id, correlation_id, pe)
            else:
                self.correlator.incident_opened(event.originator_id, correlation_id, pe)
        except DomainError as exc:
            self.errors.append(f"at {position}: {exc}")
        for aggregate in pe.aggregates.values():
            self.city.hold(aggregate)
        self.replayed.extend(decisions_of(pe.events))

    def outcome(self) -> CorrelationOutcome:
        return CorrelationOutcome(
            version=self.policy.version,
            live_versions=sorted({d.rule_version for d in self.recorded if d.rule_version}),
            triggers=self.triggers,
            diffs=compare_decisions(self.recorded, self.replayed),
            not_applied=self.not_applied,
            errors=self.errors,
        )
