"""Sensor rules: thresholds with hysteresis, repeat and duration conditions, silence.

Pure functions over plain state, so that the monitor can evaluate, discard on a failed
commit, and retry; and so that a later backtest can re-run a rule version on old data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.refdata import load_yaml

SEVERITIES: tuple[str, ...] = ("warning", "minor", "major", "critical")

# The department type responsible for each sensor type's alarms.
DEPARTMENT_TYPE: dict[str, str] = {
    "water_level": "water",
    "pm25": "environment",
    "manhole_tilt": "roads",
    "streetlight_power": "lighting",
}


class RulesError(ValueError):
    """The rules file is malformed."""


@dataclass(frozen=True, slots=True)
class Level:
    """One severity of a rule: raised when a reading crosses ``raise_at``, cleared when it
    crosses back past ``clear_at`` (the gap keeps a reading near the line from flapping)."""

    severity: str
    raise_at: float
    clear_at: float


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    sensor_type: str  # "*" for every type
    metric: str
    op: Literal[">", "<"]
    levels: tuple[Level, ...]  # lowest severity first
    repeat: int
    for_seconds: float
    category: str
    title: str
    title_zh: str

    def breaches(self, value: float, level: Level) -> bool:
        return value > level.raise_at if self.op == ">" else value < level.raise_at

    def clears(self, value: float, level: Level) -> bool:
        return value < level.clear_at if self.op == ">" else value > level.clear_at

    def applies_to(self, sensor_type: str) -> bool:
        return self.sensor_type in ("*", sensor_type)


@dataclass(frozen=True, slots=True)
class SilencePolicy:
    after_s: dict[str, float]
    category: str
    severity: str
    title: str
    title_zh: str


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: int
    rules: tuple[Rule, ...]
    silence: SilencePolicy
    # for_type's answers: the monitor asks once per message.
    _by_type: dict[str, tuple[Rule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def for_type(self, sensor_type: str) -> tuple[Rule, ...]:
        found = self._by_type.get(sensor_type)
        if found is None:
            found = self._by_type[sensor_type] = tuple(
                r for r in self.rules if r.applies_to(sensor_type)
            )
        return found

    def by_id(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


def load_rules(path: Path | None = None) -> RuleSet:
    """Load and validate a rules file (default: the packaged ``core/sensor/rules.yaml``)."""
    return parse_rules(load_yaml("core.sensor", "rules.yaml", path))


def parse_rules(doc: Any) -> RuleSet:
    try:
        rules = []
        for raw in doc["rules"]:
            op = raw["op"]
            if op not in (">", "<"):
                raise RulesError(f"rule {raw['id']}: op must be '>' or '<', not {op!r}")
            levels = tuple(
                Level(str(lv["severity"]), float(lv["raise"]), float(lv["clear"]))
                for lv in raw["levels"]
            )
            for lv in levels:
                if lv.severity not in SEVERITIES:
                    raise RulesError(f"rule {raw['id']}: unknown severity {lv.severity!r}")
                # Hysteresis must point away from the breach, or an alarm would flap.
                if (op == ">" and lv.clear_at > lv.raise_at) or (
                    op == "<" and lv.clear_at < lv.raise_at
                ):
                    raise RulesError(f"rule {raw['id']}: clear must lie on the safe side")
            rules.append(
                Rule(
                    id=str(raw["id"]),
                    sensor_type=str(raw["sensor_type"]),
                    metric=str(raw["metric"]),
                    op=op,
                    levels=levels,
                    repeat=max(1, int(raw.get("repeat", 1))),
                    for_seconds=float(raw.get("for_seconds", 0)),
                    category=str(raw["category"]),
                    title=str(raw["title"]),
                    title_zh=str(raw.get("title_zh", raw["title"])),
                )
            )
        si = doc["silence_incident"]
        silence = SilencePolicy(
            after_s={k: float(v) for k, v in doc["silence"].items()},
            category=str(si["category"]),
            severity=str(si["severity"]),
            title=str(si["title"]),
            title_zh=str(si.get("title_zh", si["title"])),
        )
        return RuleSet(version=int(doc["version"]), rules=tuple(rules), silence=silence)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, RulesError):
            raise
        raise RulesError(f"malformed rules file: {exc!r}") from exc


@dataclass(slots=True)
class RuleState:
    """Where one (sensor, rule) pair stands; persisted by the monitor with its position."""

    severity: str | None = None  # None: not in alarm
    count: int = 0  # consecutive breaching readings while not in alarm
    since: float | None = None  # time of the first of those readings

    def to_json(self) -> list[Any]:
        return [self.severity, self.count, self.since]

    @classmethod
    def from_json(cls, raw: list[Any]) -> RuleState:
        return cls(raw[0], int(raw[1]), raw[2])


@dataclass(frozen=True, slots=True)
class Transition:
    """A meaningful change: what becomes a domain event."""

    kind: Literal["raised", "severity_changed", "cleared"]
    rule_id: str
    severity: str | None
    metric: str
    value: float
    ts: float


def _highest_breached(rule: Rule, value: float) -> Level | None:
    hit = None
    for level in rule.levels:
        if rule.breaches(value, level):
            hit = level
    return hit


def evaluate(rule: Rule, state: RuleState, value: float, ts: float) -> Transition | None:
    """Apply one reading to one rule; mutate ``state``; return the transition, if any."""
    top = _highest_breached(rule, value)
    if state.severity is None:
        if top is None:
            state.count, state.since = 0, None
            return None
        state.count += 1
        if state.since is None:
            state.since = ts
        if state.count >= rule.repeat and ts - state.since >= rule.for_seconds:
            state.severity = top.severity
            state.count, state.since = 0, None
            return Transition("raised", rule.id, top.severity, rule.metric, value, ts)
        return None

    if rule.clears(value, rule.levels[0]):
        state.severity = None
        state.count, state.since = 0, None
        return Transition("cleared", rule.id, None, rule.metric, value, ts)

    current = next(lv for lv in rule.levels if lv.severity == state.severity)
    current_rank = rule.levels.index(current)
    if top is not None and rule.levels.index(top) > current_rank:
        state.severity = top.severity
        return Transition("severity_changed", rule.id, top.severity, rule.metric, value, ts)
    # Step down only past the current level's clear threshold (hysteresis per level).
    if current_rank > 0 and rule.clears(value, current):
        lower = top if top is not None else rule.levels[0]
        # Never above the level just left.
        if rule.levels.index(lower) >= current_rank:
            lower = rule.levels[current_rank - 1]
        state.severity = lower.severity
        return Transition("severity_changed", rule.id, lower.severity, rule.metric, value, ts)
    return None


@dataclass(slots=True)
class DeviceState:
    """The monitor's working state for one device."""

    rules: dict[str, RuleState] = field(default_factory=dict)
    last_seen: float | None = None  # receive time of the latest message
    silent: bool = False
    # Newest reading time applied per metric: a redelivered or late reading is not
    # counted again towards a repeat condition.
    latest: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": {k: v.to_json() for k, v in self.rules.items()},
            "last_seen": self.last_seen,
            "silent": self.silent,
            "latest": self.latest,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DeviceState:
        return cls(
            rules={k: RuleState.from_json(v) for k, v in raw.get("rules", {}).items()},
            last_seen=raw.get("last_seen"),
            silent=bool(raw.get("silent", False)),
            latest=dict(raw.get("latest", {})),
        )


def evaluate_readings(
    ruleset: RuleSet,
    sensor_type: str,
    state: DeviceState,
    readings: list[tuple[str, float, float]],
) -> list[Transition]:
    """Apply (metric, value, ts) readings in time order to every rule of the sensor type.

    Readings not newer than the last one applied for their metric are ignored.
    """
    out: list[Transition] = []
    rules = ruleset.for_type(sensor_type)
    for metric, value, ts in sorted(readings, key=lambda r: r[2]):
        newest = state.latest.get(metric)
        if newest is not None and ts <= newest:
            continue
        state.latest[metric] = ts
        for rule in rules:
            if rule.metric != metric:
                continue
            rs = state.rules.setdefault(rule.id, RuleState())
            tr = evaluate(rule, rs, value, ts)
            if tr is not None:
                out.append(tr)
    return out


def is_silent(ruleset: RuleSet, sensor_type: str, state: DeviceState, now: float) -> bool:
    """True when the device has said nothing for longer than its type allows."""
    after = ruleset.silence.after_s.get(sensor_type)
    return (
        after is not None
        and state.last_seen is not None
        and not state.silent
        and now - state.last_seen > after
    )
