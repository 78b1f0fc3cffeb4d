"""The responsibility catalogue (派单目录): which unit leads a case, where and when.

Versioned reference data (``core/case/catalogue.yaml``). An entry names categories, an
area (the whole city, districts, or a range of grid codes), optionally a daily window in
the city's time zone, the lead unit (主办), the co-handling units (协办) and the legal
basis. A unit code may hold ``{district}``, the district of the case's place
(``{district}-water`` is ``310101-water`` in Huangpu), the way the city's departments
are named.

For a case, the matching entry of the narrowest area wins: a grid range over districts
over the whole city; at the same area, one with a window over one without. Two entries
that could both win for some place and time are refused when the file is read, so a
(category, place, time) has at most one entry. Where none matches, dispatch falls back
to the jurisdiction polygons (``core.case.desk.ServiceDesk``).

Each version is recorded once in the city log (``CatalogueVersion``, by ``cityops
seed``): its entries and their digest, so that a decision's ``catalogue_version`` can
be read back as it was.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson
from eventsourcing.domain import Aggregate

from core.errors import DomainError
from core.refdata import load_yaml

CODE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
DISTRICT = re.compile(r"^\d{6}$")
GRID = re.compile(r"^\d{15}$")
UNIT = re.compile(r"^[A-Za-z0-9{][A-Za-z0-9_.:{}\-]{0,127}$")
MINUTES_A_DAY = 24 * 60


class CatalogueError(ValueError):
    """The catalogue file is malformed, or two of its entries could both win."""


@dataclass(frozen=True, slots=True)
class Area:
    """Where an entry applies: the grid codes of ``grid`` (from, to; inclusive), else
    the ``districts``, else (neither) the whole city."""

    districts: frozenset[str] = frozenset()
    grid: tuple[str, str] | None = None

    @property
    def rank(self) -> int:
        return 3 if self.grid is not None else 2 if self.districts else 1

    def contains(self, grid_code: str | None, district_code: str | None) -> bool:
        if self.grid is not None:
            return grid_code is not None and self.grid[0] <= grid_code <= self.grid[1]
        if self.districts:
            return district_code in self.districts
        return True

    def overlaps(self, other: Area) -> bool:
        """Whether some place is in both (areas of the same rank only)."""
        if self.grid is not None and other.grid is not None:
            return self.grid[0] <= other.grid[1] and other.grid[0] <= self.grid[1]
        if self.districts or other.districts:
            return bool(self.districts & other.districts)
        return True


@dataclass(frozen=True, slots=True)
class Window:
    """A daily window, minutes after local midnight, ``start`` included and ``end`` not;
    it runs over midnight when ``end <= start`` (22:00-06:00)."""

    start: int
    end: int

    def minutes(self) -> set[int]:
        if self.start < self.end:
            return set(range(self.start, self.end))
        return set(range(self.start, MINUTES_A_DAY)) | set(range(self.end))

    def contains(self, at: time) -> bool:
        minute = at.hour * 60 + at.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def overlaps(self, other: Window) -> bool:
        return bool(self.minutes() & other.minutes())

    def __str__(self) -> str:
        def hhmm(m: int) -> str:
            return f"{m // 60:02d}:{m % 60:02d}"

        return f"{hhmm(self.start)}-{hhmm(self.end)}"


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    categories: frozenset[str]
    area: Area
    window: Window | None
    lead: str
    co_handlers: tuple[str, ...]
    basis: str
    # Each co-handler's part of the work, by its unit code as written (may be absent).
    parts: tuple[tuple[str, str], ...] = ()

    @property
    def rank(self) -> tuple[int, int]:
        return (self.area.rank, 0 if self.window is None else 1)

    def to_json(self) -> dict[str, Any]:
        """The entry as the catalogue file writes it (plain JSON)."""
        area: Any = "city"
        if self.area.grid is not None:
            area = {"grid": {"from": self.area.grid[0], "to": self.area.grid[1]}}
        elif self.area.districts:
            area = {"districts": sorted(self.area.districts)}
        return {
            "id": self.id,
            "categories": sorted(self.categories),
            "area": area,
            "hours": None if self.window is None else str(self.window),
            "lead": self.lead,
            "co_handlers": list(self.co_handlers),
            "basis": self.basis,
            **({"parts": dict(self.parts)} if self.parts else {}),
        }

    def applies(
        self, category: str, grid_code: str | None, district_code: str | None, at: time
    ) -> bool:
        return (
            category in self.categories
            and self.area.contains(grid_code, district_code)
            and (self.window is None or self.window.contains(at))
            and (district_code is not None or not self.needs_district)
        )

    @property
    def needs_district(self) -> bool:
        return any("{district}" in u for u in (self.lead, *self.co_handlers))

    def could_tie(self, other: Entry) -> bool:
        """Whether both could win for one (category, place, time)."""
        return (
            self.rank == other.rank
            and bool(self.categories & other.categories)
            and self.area.overlaps(other.area)
            and (self.window is None or other.window is None or self.window.overlaps(other.window))
        )


@dataclass(frozen=True, slots=True)
class Routing:
    """What the catalogue says for one case: its entry and the units it names there."""

    entry: Entry
    lead: str
    co_handlers: tuple[str, ...]
    parts: tuple[str, ...] = ()  # each co-handler's part of the work ("" when not given)

    def decision(self, version: int) -> dict[str, Any]:
        """The dispatch decision's catalogue part (recorded with the assignment)."""
        return {
            "rule": "catalogue",
            "catalogue_version": version,
            "catalogue_entry": self.entry.id,
            "lead": self.lead,
            "co_handlers": list(self.co_handlers),
            "co_handler_parts": {
                u: p for u, p in zip(self.co_handlers, self.parts, strict=True) if p
            },
            "basis": self.entry.basis,
        }


@dataclass(frozen=True, slots=True)
class Catalogue:
    version: int
    entries: tuple[Entry, ...]

    def winners(
        self, category: str, grid_code: str | None, district_code: str | None, at: time
    ) -> list[Entry]:
        """The matching entries of the narrowest rank (one at most in a valid file)."""
        found = [e for e in self.entries if e.applies(category, grid_code, district_code, at)]
        if not found:
            return []
        best = max(e.rank for e in found)
        return [e for e in found if e.rank == best]

    def route(
        self, category: str, grid_code: str | None, district_code: str | None, at: time
    ) -> Routing | None:
        """The entry for a case of ``category`` at that place and local time, if any."""
        winners = self.winners(category, grid_code, district_code, at)
        if not winners:
            return None
        (entry,) = winners
        fill = {"district": district_code or ""}
        parts = dict(entry.parts)
        return Routing(
            entry,
            entry.lead.format_map(fill),
            tuple(u.format_map(fill) for u in entry.co_handlers),
            tuple(parts.get(u, "") for u in entry.co_handlers),
        )

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.entries]

    @property
    def digest(self) -> str:
        """SHA-256 of the entries as canonical JSON: the same for the same content."""
        body = orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(body).hexdigest()

    def units(self, districts: Iterable[str]) -> set[str]:
        """Every unit code the catalogue can name in a city of these districts."""
        out: set[str] = set()
        for entry in self.entries:
            scope = entry.area.districts or set(districts)
            if entry.area.grid is not None:
                scope = {entry.area.grid[0][:6]}
            for district in scope:
                out.update(u.format(district=district) for u in (entry.lead, *entry.co_handlers))
        return out


def catalogue_version_id(version: int) -> UUID:
    return uuid5(NAMESPACE_URL, f"cityops:dispatch-catalogue:{version}")


class CatalogueVersionConflictError(DomainError):
    """This catalogue version is recorded already, with other entries."""


@dataclass
class CatalogueVersion(Aggregate, created_event_name="Published"):
    """One published version of the responsibility catalogue (reference data: never
    changed once recorded; a new content is a new version). Its fields are its one
    event's, ``Published``."""

    catalogue_version: int
    digest: str
    entries: list[dict[str, Any]]
    actor: str
    correlation_id: str

    @staticmethod
    def create_id(catalogue_version: int, **_: object) -> UUID:
        return catalogue_version_id(catalogue_version)


def load_catalogue(path: Path | None = None, categories: Iterable[str] | None = None) -> Catalogue:
    """Load and check a catalogue (default: the packaged ``core/case/catalogue.yaml``);
    ``categories``: the known category codes."""
    doc = load_yaml("core.case", "catalogue.yaml", path, invalid=(CatalogueError, "not YAML"))
    return parse_catalogue(doc, categories)


def _clock_time(raw: object, where: str) -> int:
    text = str(raw)
    match = re.fullmatch(r"(\d{2}):(\d{2})", text)
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise CatalogueError(f"{where}: {text!r} is not a time HH:MM")
    return int(match[1]) * 60 + int(match[2])


def _window(raw: object, where: str) -> Window | None:
    if raw is None:
        return None
    start, sep, end = str(raw).partition("-")
    if not sep:
        raise CatalogueError(f"{where}: hours must read HH:MM-HH:MM, not {raw!r}")
    window = Window(_clock_time(start, where), _clock_time(end, where))
    if window.start == window.end:
        raise CatalogueError(f"{where}: hours {raw!r} is empty (leave it out for all day)")
    return window


def _area(raw: Any, where: str) -> Area:
    if raw in (None, "city"):
        return Area()
    if not isinstance(raw, dict) or set(raw) - {"districts", "grid"} or len(raw) != 1:
        raise CatalogueError(f"{where}: area is 'city', {{districts: [...]}} or {{grid: ...}}")
    if "districts" in raw:
        if not isinstance(raw["districts"], list):
            raise CatalogueError(f"{where}: districts is a list of 6-digit codes")
        districts = frozenset(str(d) for d in raw["districts"])
        bad = sorted(d for d in districts if not DISTRICT.match(d))
        if not districts or bad:
            raise CatalogueError(f"{where}: districts must be 6-digit codes, not {bad or '[]'}")
        return Area(districts=districts)
    grid = raw["grid"]
    if not isinstance(grid, dict):
        raise CatalogueError(f"{where}: grid is {{from: <code>, to: <code>}}")
    low, high = str(grid.get("from", "")), str(grid.get("to", ""))
    if not (GRID.match(low) and GRID.match(high)) or low > high:
        raise CatalogueError(f"{where}: grid from/to must be 15-digit codes, from <= to")
    if low[:6] != high[:6]:
        raise CatalogueError(f"{where}: a grid range stays inside one district")
    return Area(grid=(low, high))


def _unit(raw: object, where: str) -> str:
    unit = str(raw)
    fields = {f for _, f, _, _ in string.Formatter().parse(unit) if f is not None}
    if not UNIT.match(unit) or fields - {"district"}:
        raise CatalogueError(f"{where}: {unit!r} is not a unit code (it may hold {{district}})")
    return unit


def _entry(raw: dict[str, Any], known: set[str] | None) -> Entry:
    entry_id = str(raw.get("id", ""))
    if not CODE.match(entry_id):
        raise CatalogueError(f"entry {entry_id!r}: id must match {CODE.pattern}")
    where = f"entry {entry_id}"
    categories = frozenset(str(c) for c in raw.get("categories") or ())
    if not categories:
        raise CatalogueError(f"{where}: names no category")
    if known is not None and categories - known:
        raise CatalogueError(f"{where}: unknown categories {sorted(categories - known)}")
    lead = _unit(raw.get("lead", ""), where)
    co = tuple(_unit(u, where) for u in raw.get("co_handlers") or ())
    if lead in co or len(set(co)) != len(co):
        raise CatalogueError(f"{where}: a unit is named twice among lead and co-handlers")
    basis = str(raw.get("basis") or "").strip()
    if not basis:
        raise CatalogueError(f"{where}: gives no legal basis")
    parts = raw.get("parts") or {}
    if not isinstance(parts, dict) or not all(
        isinstance(v, str) and v.strip() for v in parts.values()
    ):
        raise CatalogueError(f"{where}: parts maps a co-handler to the text of its part")
    strays = sorted(set(map(str, parts)) - set(co))
    if strays:
        raise CatalogueError(f"{where}: parts names {strays[0]!r}, not one of its co-handlers")
    return Entry(
        entry_id,
        categories,
        _area(raw.get("area"), where),
        _window(raw.get("hours"), where),
        lead,
        co,
        basis,
        tuple((u, str(parts[u]).strip()) for u in co if u in parts),
    )


def parse_catalogue(doc: Any, categories: Iterable[str] | None = None) -> Catalogue:
    """Check a catalogue document; ``categories``: the known category codes."""
    if not isinstance(doc, dict):
        raise CatalogueError("the catalogue is a mapping with version and entries")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise CatalogueError(f"version must be a positive integer, not {version!r}")
    known = None if categories is None else set(categories)
    raw_entries = doc.get("entries") or []
    if not isinstance(raw_entries, list) or not all(isinstance(e, dict) for e in raw_entries):
        raise CatalogueError("entries is a list of mappings (id, categories, area, ...)")
    entries = tuple(_entry(raw, known) for raw in raw_entries)
    ids = [e.id for e in entries]
    twice = sorted(i for i in ids if ids.count(i) > 1)
    if twice:
        raise CatalogueError(f"entry id {twice[0]} is used twice")
    for i, a in enumerate(entries):
        for b in entries[i + 1 :]:
            if a.could_tie(b):
                raise CatalogueError(
                    f"entries {a.id} and {b.id} could both route a case of "
                    f"{sorted(a.categories & b.categories)[0]}: narrow one's area or hours"
                )
    return Catalogue(version, entries)
