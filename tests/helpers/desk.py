"""The service desk on the in-memory event store, over a fake city and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from core.app import CityApp
from core.case.catalogue import Catalogue
from core.case.categories import load_categories
from core.case.desk import Department, Place, ServiceDesk, SubmitCase
from core.personal import InMemoryKeyStore, PersonalData

# Monday 2 March 2026, 09:30 in Shanghai.
T0 = datetime(2026, 3, 2, 1, 30, tzinfo=UTC)
PEPPER = b"unit-test-pepper-0123456789"

# The fake city: lon 121-122, lat 31-32. Only its west half (lon < 121.5) has
# jurisdiction polygons; the east half has places but no department.
WEST = (121.2, 31.2)
EAST = (121.7, 31.2)
OUTSIDE = (116.4, 39.9)
DEPARTMENT_TYPES = (
    "roads",
    "lighting",
    "water",
    "sanitation",
    "environment",
    "urban_management",
    "traffic",
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class FakeLocator:
    """Implements ``core.case.desk.Locator`` over the fake city above."""

    def place(self, lon: float, lat: float) -> Place | None:
        if not (121.0 <= lon < 122.0 and 31.0 <= lat < 32.0):
            return None
        district = "310101" if lon < 121.5 else "310104"
        return Place(
            grid_code=f"{district}-g{int(lon * 10) % 10}{int(lat * 10) % 10}",
            district_code=district,
        )

    def department_for(self, lon: float, lat: float, department_type: str) -> str | None:
        if self.place(lon, lat) is None or lon >= 121.5:
            return None
        return f"{department_type}-west"

    def departments(self) -> dict[str, Department]:
        deps = {
            f"{t}-west": Department(f"{t}-west", t, f"West {t}", f"西区{t}")
            for t in DEPARTMENT_TYPES
        }
        deps["roads-east"] = Department("roads-east", "roads", "East roads", "东区道路")
        return deps


class FakeNearby:
    """Implements ``core.case.desk.NearbyCases``: returns ``result`` and records calls."""

    def __init__(self, result: list[str] | None = None) -> None:
        self.result = list(result or [])
        self.calls: list[tuple[str, float, float, float, int]] = []

    def open_cases_near(
        self, category: str, lon: float, lat: float, radius_m: float, limit: int
    ) -> list[str]:
        self.calls.append((category, lon, lat, radius_m, limit))
        return list(self.result)


CATEGORIES = load_categories()


def make_desk(
    app: CityApp | None = None,
    clock: Callable[[], datetime] | None = None,
    nearby: FakeNearby | None = None,
    auto_accept: bool = True,
    personal: PersonalData | None = None,
    catalogue: Catalogue | None = None,
    recent: int = 0,
) -> ServiceDesk:
    return ServiceDesk(
        app or CityApp(),
        CATEGORIES,
        FakeLocator(),
        personal or PersonalData(InMemoryKeyStore(), PEPPER),
        nearby=nearby,
        clock=clock or FakeClock(),
        auto_accept=auto_accept,
        catalogue=catalogue,
        recent=recent,
    )


def request(
    external_id: str = "e-1",
    category: str = "road_damage",
    where: tuple[float, float] | None = WEST,
    channel: str = "app",
    description: str = "pothole in front of no. 12",
    **kwargs: Any,
) -> SubmitCase:
    """A citizen's report at ``where`` (a place of the fake city's west half by default)."""
    lon, lat = (None, None) if where is None else where
    return SubmitCase(
        channel=channel,
        external_id=external_id,
        category=category,
        description=description,
        lon=lon,
        lat=lat,
        **kwargs,
    )
