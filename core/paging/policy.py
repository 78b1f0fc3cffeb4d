"""The paging policy: who is paged when, over which channels, as versioned data.

``core/paging/policy.yaml`` (or the file ``CITYOPS_PAGING_POLICY_FILE`` names) holds:

- ``triggers``: for each kind of neglect (``TRIGGERS``) whether it is critical and the
  levels it climbs, street (街镇) -> district (区) -> city (市), each with the minutes after
  the trigger's start at which that level is paged;
- ``people``: the on-call directory. A person's id is how the API names the caller
  (``api.auth.Principal.actor``, ``dispatcher:alice``); ``covers`` lists the levels and
  areas they are on call for (a street's 9-digit code, a district's 6-digit code, the
  city); ``addresses`` gives one address per channel; ``channels`` the channels they
  want (in-app is always on: the page events themselves); ``quiet_hours`` in city time
  (``Asia/Shanghai``) during which only critical pages leave by email, webhook or SMS,
  the others wait until the quiet hours end (in-app pages are recorded at once);
  ``max_pages`` per ``per_minutes``: the rate cap on those outside channels (a page over
  the cap waits, like one in quiet hours).

The policy is validated on load; an error names the place in the file and what is
wrong. Every escalation records the policy version it was opened under.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.refdata import load_yaml

CITY_TIME = ZoneInfo("Asia/Shanghai")
TRIGGERS = ("critical_alarm", "incident_overdue", "case_overdue", "dispute_unarbitrated")
Trigger = Literal["critical_alarm", "incident_overdue", "case_overdue", "dispute_unarbitrated"]
LEVELS = ("street", "district", "city")
Level = Literal["street", "district", "city"]
CHANNELS = ("in_app", "email", "webhook", "sms")
ChannelName = Literal["in_app", "email", "webhook", "sms"]
# Digits of a grid code (gis/grid.py) that name the area of each level: the district's
# 6-digit code, then its 3-digit street (街镇); the city has no code.
AREA_DIGITS: dict[str, int] = {"street": 9, "district": 6, "city": 0}


class PagingPolicyError(ValueError):
    """The paging policy file is malformed."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LevelStep(_Frozen):
    """One level of a trigger's escalation and when it is paged."""

    level: Level
    after_minutes: float = Field(ge=0, le=7 * 24 * 60)

    @property
    def after(self) -> timedelta:
        return timedelta(minutes=self.after_minutes)


class TriggerPolicy(_Frozen):
    critical: bool = False
    levels: tuple[LevelStep, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _climbs(self) -> TriggerPolicy:
        order = [LEVELS.index(s.level) for s in self.levels]
        if order != sorted(set(order)):
            raise ValueError("levels must climb street -> district -> city, each once")
        delays = [s.after_minutes for s in self.levels]
        if delays != sorted(delays):
            raise ValueError("a higher level cannot be paged before a lower one")
        return self


class Cover(_Frozen):
    """A level and area a person is on call for (``area`` empty for the city)."""

    level: Level
    area: str = ""

    @model_validator(mode="after")
    def _area(self) -> Cover:
        digits = AREA_DIGITS[self.level]
        if self.level == "city":
            if self.area:
                raise ValueError("the city level covers the whole city: no area")
        elif len(self.area) != digits or not self.area.isdigit():
            raise ValueError(f"a {self.level} area is its {digits}-digit code, not {self.area!r}")
        return self


class QuietHours(_Frozen):
    """A daily span in city time; ``start`` after ``end`` spans midnight."""

    start: time
    end: time

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(CITY_TIME).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


class Person(_Frozen):
    id: str = Field(pattern=r"^[a-z]+:[^\s:]+$")
    name: str = ""
    covers: tuple[Cover, ...] = Field(min_length=1)
    addresses: dict[ChannelName, str] = Field(default_factory=dict)
    channels: tuple[ChannelName, ...] = ("in_app",)
    quiet_hours: QuietHours | None = None
    max_pages: int = Field(default=20, ge=1)
    per_minutes: float = Field(default=60, gt=0, le=24 * 60)

    @field_validator("channels")
    @classmethod
    def _always_in_app(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return value if "in_app" in value else ("in_app", *value)

    @model_validator(mode="after")
    def _reachable(self) -> Person:
        missing = [c for c in self.channels if c != "in_app" and not self.addresses.get(c)]
        if missing:
            raise ValueError(f"{self.id} wants {', '.join(missing)} but has no address for it")
        return self

    @property
    def window(self) -> timedelta:
        return timedelta(minutes=self.per_minutes)

    def covers_area(self, level: str, grid_code: str | None, district_code: str | None) -> bool:
        """On call at ``level`` for the place of that grid cell (or that district)."""
        for cover in self.covers:
            if cover.level != level:
                continue
            if level == "city":
                return True
            code = grid_code or (district_code if level == "district" else None)
            if code and code[: AREA_DIGITS[level]] == cover.area:
                return True
        return False


class PagingPolicy(_Frozen):
    version: int = Field(ge=1)
    triggers: dict[Trigger, TriggerPolicy]
    people: tuple[Person, ...]
    # Failed deliveries of one page are tried again this many times, then given up.
    max_attempts: int = Field(default=8, ge=1, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> PagingPolicy:
        ids = [p.id for p in self.people]
        if len(set(ids)) != len(ids):
            raise ValueError("person ids must be unique")
        return self

    def trigger(self, name: str) -> TriggerPolicy | None:
        return self.triggers.get(name)  # type: ignore[call-overload]

    def on_call(self, level: str, grid_code: str | None, district_code: str | None) -> list[Person]:
        """The people on call at ``level`` for that place, in file order."""
        return [p for p in self.people if p.covers_area(level, grid_code, district_code)]

    def person(self, person_id: str) -> Person | None:
        return next((p for p in self.people if p.id == person_id), None)


def load_paging_policy(path: Path | None = None) -> PagingPolicy:
    """Load and validate a policy file (default: the packaged ``core/paging/policy.yaml``)."""
    try:
        raw = load_yaml(
            "core.paging",
            "policy.yaml",
            path,
            invalid=(PagingPolicyError, "paging policy is not YAML"),
        )
    except OSError as exc:
        raise PagingPolicyError(f"paging policy {path}: cannot be read ({exc.strerror})") from None
    try:
        return PagingPolicy.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "policy"
        raise PagingPolicyError(f"paging policy: {where}: {first['msg']}") from None
