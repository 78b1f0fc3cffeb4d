"""Simulated citizens filing 12345 / Open311 service cases.

The model (:class:`CitizenModel`) is pure: which reports are filed in an interval of
scenario time is a function of the seed and the interval only. Everyday reports arrive
as a Poisson process over the whole city; a scenario adds its own, as its
``citizen_reports`` say (``simulations.scenarios.NearAlarms``: calls around the sensors
past their alarm threshold, e.g. flooding reports near flooded water-level sensors;
``AtVenue``: calls around a place no sensor watches, e.g. a festival). The adapters
turn a report into an Open311 GeoReport v2 POST (:func:`open311_form`) or a hotline
Kafka message (:func:`hotline_message`), and :class:`CitizenSimulator` sends them in
real time.

Time is cut into one-second slots and each slot draws its reports from a generator
seeded by (seed, slot). So the reports of ``[t0, t1)`` do not depend on how the caller
splits time into ticks, and a report keeps its id however the run is chunked.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import httpx
import numpy as np
import shapely
from kafka.errors import KafkaError
from numpy.typing import NDArray

from core.case.categories import Attribute, Categories, Category, load_categories
from gis.crs import distance_m
from gis.layers import CityLayers
from infra.hotline_schema import Citizen as HotlineCitizen
from infra.hotline_schema import HotlineCase, Location, encode
from infra.kafka import CASES_INBOUND, Topics, make_producer
from infra.settings import Settings
from simulations.city import ensure_city
from simulations.scenarios import (
    AtVenue,
    Fleet,
    NearAlarms,
    ReportSource,
    Scenario,
    Threshold,
    alarm_threshold,
    citizen_reports,
    make_scenario,
)

log = logging.getLogger(__name__)

Channel = Literal["open311", "hotline"]
Cause = Literal["background", "scenario"]
AttributeValue = str | list[str]
FormValue = str | list[str]

SLOT_S = 1.0
OPEN311_PATH = "/open311/v2/requests.json"
HOTLINE_SOURCE = "sim-12345"

# Relative weights of the everyday mix. Parking, noise, rubbish and street lights are
# what residents call about most; broken water mains and missing manhole covers are
# rare. A category missing here (a newer categories file) gets _DEFAULT_WEIGHT.
CATEGORY_WEIGHTS: dict[str, float] = {
    "illegal_parking": 14.0,
    "noise_social": 10.0,
    "illegal_dumping": 8.0,
    "streetlight_out": 8.0,
    "noise_construction": 7.0,
    "road_damage": 7.0,
    "shared_bikes": 7.0,
    "overflowing_bin": 6.0,
    "street_cleaning": 6.0,
    "street_vendor": 6.0,
    "manhole_cover_damaged": 3.0,
    "drain_blocked": 3.0,
    "air_pollution": 3.0,
    "streetlight_damaged": 2.0,
    "illegal_construction": 2.0,
    "traffic_signal_fault": 2.0,
    "fallen_tree": 1.5,
    "manhole_cover_missing": 1.0,
    "flooding": 1.0,
    "hydrant_damaged": 1.0,
    "water_pollution": 1.0,
    "bus_shelter_damaged": 1.0,
    "water_main_burst": 0.5,
}
_DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True, slots=True)
class CitizenContact:
    """Who filed a report, as they give it (Open311 first/last name, phone, email)."""

    first_name: str
    last_name: str
    phone: str
    email: str | None = None

    @property
    def name(self) -> str:
        """The full name, family name first for a Chinese name."""
        if self.last_name.isascii():
            return f"{self.first_name} {self.last_name}"
        return f"{self.last_name}{self.first_name}"


@dataclass(frozen=True, slots=True)
class CaseReport:
    """One service case a citizen files, before it is put on a channel."""

    channel: Channel
    external_id: str
    service_code: str
    description: str
    lon: float
    lat: float
    address: str | None
    attributes: dict[str, AttributeValue]
    contact: CitizenContact | None  # None: an anonymous report
    t: float  # scenario seconds
    cause: Cause = "background"


@dataclass(frozen=True, slots=True)
class CitizenParams:
    """Rates and shares of the citizen model.

    The default 0.2 everyday reports per second (about 17,000 a day) is the order of
    magnitude a megacity's 12345 line takes, and shows the demo map a new case every
    few seconds. A scenario adds its own reports at the rates its ``citizen_reports``
    give, times ``scenario_scale`` (0 switches them off).
    """

    base_rate: float = 0.2  # everyday reports per second, whole city
    scenario_scale: float = 1.0  # multiplies the scenario's own report rates
    open311_share: float = 0.4  # the rest goes over the hotline
    outside_share: float = 0.01  # everyday reports placed just outside the city
    anonymous_share: float = 0.12
    repeat_share: float = 0.3  # reports filed by the pool of repeat callers
    repeat_callers: int = 200
    address_share: float = 0.4  # reports with a problem address as text
    optional_attribute_share: float = 0.5
    chinese_share: float = 0.3  # descriptions with a Chinese phrase

    def __post_init__(self) -> None:
        if self.base_rate < 0 or self.scenario_scale < 0:
            raise ValueError("rates must not be negative")
        shares = (
            self.open311_share,
            self.outside_share,
            self.anonymous_share,
            self.repeat_share,
            self.address_share,
            self.optional_attribute_share,
            self.chinese_share,
        )
        if not all(0.0 <= s <= 1.0 for s in shares):
            raise ValueError("shares must be between 0 and 1")
        if self.anonymous_share + self.repeat_share > 1.0:
            raise ValueError("anonymous_share + repeat_share must not exceed 1")
        if self.repeat_callers < 1:
            raise ValueError("repeat_callers must be at least 1")


@dataclass(frozen=True, slots=True)
class AlarmingSensors:
    """The sensors of one type past their alarm threshold at one instant."""

    device_id: NDArray[np.object_]
    lon: NDArray[np.float64]
    lat: NDArray[np.float64]
    value: NDArray[np.float64]  # the reading of the watched metric
    district_code: NDArray[np.object_]

    def __len__(self) -> int:
        return len(self.device_id)


@dataclass(frozen=True, slots=True)
class _Watched:
    """The sensors of one type a ``NearAlarms`` source watches, and their threshold."""

    fleet: Fleet
    lon: NDArray[np.float64]
    lat: NDArray[np.float64]
    threshold: Threshold


@dataclass(frozen=True, slots=True)
class _Source:
    """A scenario's report source, resolved against the city and the categories."""

    spec: ReportSource
    codes: list[str]  # the spec's categories this categories file knows
    cum: NDArray[np.float64]
    venue: tuple[float, float] | None = None  # AtVenue: the venue's lon, lat


class CitizenModel:
    """Which reports citizens file in an interval of scenario time; pure and seeded.

    Everyday reports come from anywhere in the city: a grid cell drawn uniformly, then a
    point in it. The cells are equal-sized and the demo city is dense central Shanghai
    throughout, so this is close to uniform over residents; without a population layer
    any finer weighting would be invented. A small share lands just outside the city,
    which the platform must reject as ``not_our_city``.

    Examples
    --------
    >>> storm = make_scenario("rainstorm", 42)
    >>> model = CitizenModel(layers, load_categories(), storm, seed=42)  # doctest: +SKIP
    >>> [r.service_code for r in model.reports(0.0, 30.0)][:3]  # doctest: +SKIP
    ['illegal_parking', 'noise_social', 'streetlight_out']
    """

    def __init__(
        self,
        layers: CityLayers,
        categories: Categories,
        scenario: Scenario,
        *,
        seed: int = 0,
        params: CitizenParams | None = None,
        thresholds: Mapping[str, Threshold] | None = None,
        id_prefix: str | None = None,
    ) -> None:
        self.categories = categories
        self.scenario = scenario
        self.seed = seed
        self.params = params or CitizenParams()
        # Alarm thresholds per sensor type (default: the packaged core/sensor/rules.yaml).
        self.thresholds = dict(thresholds or {})
        # A run against a platform that keeps its data needs its own prefix, or its
        # reports repeat the external ids of the last run's and count as resubmissions.
        self.id_prefix = f"sim-{seed}" if id_prefix is None else id_prefix
        HotlineCase.model_validate(  # fails early on a prefix the contract refuses
            {"external_id": f"{self.id_prefix}-0-0", "service_code": "x"}
        )
        self._seed_words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF]

        codes = list(categories.by_code)
        weights = np.asarray([CATEGORY_WEIGHTS.get(c, _DEFAULT_WEIGHT) for c in codes])
        self._codes = codes
        self._code_cum = np.cumsum(weights / weights.sum())
        self._cells = np.asarray(layers.grid.geometry.values, dtype=object)
        self._cell_bounds = shapely.bounds(self._cells)
        self._cell_district = layers.grid.district_code.to_numpy(dtype=object)
        self._district_zh = dict(
            zip(
                layers.districts.district_code.tolist(),
                layers.districts.name_zh.tolist(),
                strict=True,
            )
        )
        self._city = shapely.union_all(np.asarray(layers.districts.geometry.values))
        shapely.prepare(self._city)
        west, south, east, north = (float(b) for b in layers.districts.total_bounds)
        self.bounds = (west, south, east, north)
        lon0, lat0 = (west + east) / 2, (south + north) / 2
        self._m_per_deg = (
            distance_m(lon0 - 0.005, lat0, lon0 + 0.005, lat0) / 0.01,
            distance_m(lon0, lat0 - 0.005, lon0, lat0 + 0.005) / 0.01,
        )

        self._watched: dict[str, _Watched] = {}
        self._sources = [self._resolve(spec, layers) for spec in citizen_reports(scenario)]

        pool_rng = self._rng(2, 0)
        self._pool = [_new_contact(pool_rng, 0.4) for _ in range(self.params.repeat_callers)]
        # A few frequent callers file many reports (Zipf-like), as on any real hotline.
        ranks = np.arange(1, self.params.repeat_callers + 1, dtype=np.float64)
        self._pool_cum = np.cumsum(ranks**-0.8 / (ranks**-0.8).sum())
        self._slots: dict[int, list[CaseReport]] = {}

    @property
    def repeat_callers(self) -> list[CitizenContact]:
        """The pool of citizens who file report after report."""
        return list(self._pool)

    def reports(self, t0: float, t1: float) -> list[CaseReport]:
        """The reports filed in ``[t0, t1)`` scenario seconds, in time order."""
        if not 0.0 <= t0 <= t1:
            raise ValueError(f"need 0 <= t0 <= t1, got {t0}, {t1}")
        out: list[CaseReport] = []
        for k in range(math.floor(t0 / SLOT_S), math.ceil(t1 / SLOT_S)):
            out.extend(r for r in self._slot(k) if t0 <= r.t < t1)
        return out

    def alarming(self, sensor_type: str, t: float) -> AlarmingSensors:
        """The sensors of ``sensor_type`` past their alarm threshold at ``t``."""
        watched = self._watch(sensor_type)
        value = np.zeros(0, dtype=np.float64)
        if len(watched.fleet):
            value = self.scenario.values(watched.fleet, t)[watched.threshold.metric]
        idx = np.flatnonzero(watched.threshold.breached(value))
        return AlarmingSensors(
            device_id=watched.fleet.device_id[idx],
            lon=watched.lon[idx],
            lat=watched.lat[idx],
            value=value[idx].astype(np.float64),
            district_code=watched.fleet.district_code[idx],
        )

    def scenario_rate(self, t: float) -> float:
        """The scenario's own reports per second at ``t`` (its sources' rates summed)."""
        return float(sum(self._rate(source, t)[0] for source in self._sources))

    def _rate(self, source: _Source, t: float) -> tuple[float, AlarmingSensors | None]:
        """Reports per second of one source at ``t``, and the alarms it reacts to."""
        spec = source.spec
        if not source.codes:
            return 0.0, None
        if isinstance(spec, NearAlarms):
            alarms = self.alarming(spec.sensor_type, t)
            return self.params.scenario_scale * spec.rate_per_sensor * len(alarms), alarms
        return self.params.scenario_scale * spec.peak_rate * spec.envelope.intensity(t), None

    def _resolve(self, spec: ReportSource, layers: CityLayers) -> _Source:
        codes = [c for c, _ in spec.categories if c in self.categories.by_code]
        weights = np.asarray([w for c, w in spec.categories if c in self.categories.by_code])
        cum = np.cumsum(weights / weights.sum()) if codes else weights
        if isinstance(spec, NearAlarms):
            self._watch(spec.sensor_type, layers)
            return _Source(spec, codes, cum)
        return _Source(spec, codes, cum, venue=spec.place(layers.districts))

    def _watch(self, sensor_type: str, layers: CityLayers | None = None) -> _Watched:
        watched = self._watched.get(sensor_type)
        if watched is None:
            if layers is None:
                raise ValueError(f"no {sensor_type} sensors watched by this model")
            sensors = layers.sensors[layers.sensors.sensor_type == sensor_type]
            threshold = self.thresholds.get(sensor_type) or alarm_threshold(sensor_type)
            watched = _Watched(
                Fleet.from_sensors(sensors),
                sensors.geometry.x.to_numpy(dtype=np.float64),
                sensors.geometry.y.to_numpy(dtype=np.float64),
                threshold,
            )
            self._watched[sensor_type] = watched
        return watched

    # -- one slot ------------------------------------------------------------------------

    def _rng(self, stream: int, k: int) -> np.random.Generator:
        return np.random.default_rng([*self._seed_words, stream, k])

    def _slot(self, k: int) -> list[CaseReport]:
        cached = self._slots.get(k)
        if cached is not None:
            return cached
        t0 = k * SLOT_S
        # Two streams: everyday reports are the same whatever the scenario adds.
        drafts = self._background(self._rng(0, k), t0)
        drafts += self._scenario_reports(self._rng(1, k), t0)
        drafts.sort(key=lambda d: d.t)
        # Ids follow the time order within the slot.
        reports = [
            replace(d, external_id=f"{self.id_prefix}-{k}-{j}") for j, d in enumerate(drafts)
        ]
        # Ticks shorter than a slot ask for the same slot again: keep the last few.
        if len(self._slots) >= 4:
            del self._slots[min(self._slots)]
        self._slots[k] = reports
        return reports

    def _background(self, rng: np.random.Generator, t0: float) -> list[CaseReport]:
        p = self.params
        n = int(rng.poisson(p.base_rate * SLOT_S))
        drafts = []
        for _ in range(n):
            t = t0 + float(rng.random()) * SLOT_S
            category = self.categories.by_code[self._codes[_pick(rng, self._code_cum)]]
            attributes = _attributes(category, rng, p.optional_attribute_share)
            if rng.random() < p.outside_share:
                lon, lat = self._outside_point(rng)
                address = None
            else:
                lon, lat, district = self._point_in_city(rng)
                address = self._address(rng, district)
            drafts.append(self._draft(rng, t, category, attributes, lon, lat, address))
        return drafts

    def _scenario_reports(self, rng: np.random.Generator, t0: float) -> list[CaseReport]:
        drafts: list[CaseReport] = []
        for source in self._sources:  # in a fixed order: one generator serves them all
            rate, alarms = self._rate(source, t0)
            if rate == 0.0:
                continue
            n = int(rng.poisson(rate * SLOT_S))
            if alarms is not None:
                drafts += self._near_alarms(rng, t0, n, source, alarms)
            else:
                drafts += self._at_venue(rng, t0, n, source)
        return [replace(draft, cause="scenario") for draft in drafts]

    def _near_alarms(
        self,
        rng: np.random.Generator,
        t0: float,
        n: int,
        source: _Source,
        alarms: AlarmingSensors,
    ) -> list[CaseReport]:
        spec = source.spec
        assert isinstance(spec, NearAlarms)
        metric = self._watch(spec.sensor_type).threshold.metric
        # Deeper water, thicker haze: more calls. A dark light is just dark.
        if self._watch(spec.sensor_type).threshold.op == ">":
            weights = alarms.value
        else:
            weights = np.ones(len(alarms))
        weight_cum = np.cumsum(weights / weights.sum())
        drafts = []
        for _ in range(n):
            t = t0 + float(rng.random()) * SLOT_S
            i = _pick(rng, weight_cum)
            category = self.categories.by_code[source.codes[_pick(rng, source.cum)]]
            attributes = _attributes(category, rng, self.params.optional_attribute_share)
            _match_reading(category, attributes, metric, float(alarms.value[i]), rng)
            lon, lat = self._near(rng, float(alarms.lon[i]), float(alarms.lat[i]), spec.radius_m)
            address = self._address(rng, str(alarms.district_code[i]))
            drafts.append(
                self._draft(rng, t, category, attributes, lon, lat, address, theme=spec.theme)
            )
        return drafts

    def _at_venue(
        self, rng: np.random.Generator, t0: float, n: int, source: _Source
    ) -> list[CaseReport]:
        spec = source.spec
        assert isinstance(spec, AtVenue)
        assert source.venue is not None
        drafts = []
        for _ in range(n):
            t = t0 + float(rng.random()) * SLOT_S
            category = self.categories.by_code[source.codes[_pick(rng, source.cum)]]
            attributes = _attributes(category, rng, self.params.optional_attribute_share)
            lon, lat = self._near(rng, *source.venue, spec.radius_m)
            address = self._address(rng, spec.district)
            drafts.append(
                self._draft(rng, t, category, attributes, lon, lat, address, theme=spec.theme)
            )
        return drafts

    def _draft(
        self,
        rng: np.random.Generator,
        t: float,
        category: Category,
        attributes: dict[str, AttributeValue],
        lon: float,
        lat: float,
        address: str | None,
        theme: str = "",
    ) -> CaseReport:
        """A report without its id (``external_id`` empty), filled in once the slot is sorted."""
        p = self.params
        return CaseReport(
            t=t,
            channel="open311" if rng.random() < p.open311_share else "hotline",
            external_id="",
            service_code=category.code,
            description=_description(category, attributes, rng, p.chinese_share, theme),
            lon=round(lon, 6),
            lat=round(lat, 6),
            address=address,
            attributes=attributes,
            contact=self._contact(rng),
        )

    def _contact(self, rng: np.random.Generator) -> CitizenContact | None:
        u = rng.random()
        if u < self.params.anonymous_share:
            return None
        if u < self.params.anonymous_share + self.params.repeat_share:
            return self._pool[_pick(rng, self._pool_cum)]
        return _new_contact(rng, 0.3)

    def _point_in_city(self, rng: np.random.Generator) -> tuple[float, float, str]:
        i = int(rng.integers(len(self._cells)))
        west, south, east, north = self._cell_bounds[i]
        # Kept off the cell edges, as the sensors are: one cell beyond rounding doubt.
        u, v = rng.uniform(0.02, 0.98, size=2)
        lon, lat = west + u * (east - west), south + v * (north - south)
        if not shapely.contains_xy(self._cells[i], lon, lat):  # a cell that is no box
            point = shapely.point_on_surface(self._cells[i])
            lon, lat = point.x, point.y
        return float(lon), float(lat), str(self._cell_district[i])

    def _outside_point(self, rng: np.random.Generator) -> tuple[float, float]:
        """A point 300 m to 1.5 km beyond one side of the city's bounding box."""
        west, south, east, north = self.bounds
        off = float(rng.uniform(300.0, 1_500.0))
        along = float(rng.random())
        side = int(rng.integers(4))
        dlon, dlat = off / self._m_per_deg[0], off / self._m_per_deg[1]
        if side == 0:
            return west - dlon, south + along * (north - south)
        if side == 1:
            return east + dlon, south + along * (north - south)
        if side == 2:
            return west + along * (east - west), south - dlat
        return west + along * (east - west), north + dlat

    def _near(
        self, rng: np.random.Generator, lon: float, lat: float, radius_m: tuple[float, float]
    ) -> tuple[float, float]:
        """A point ``radius_m`` (inner, outer) from (lon, lat), inside the city."""
        low, high = radius_m
        # sqrt: uniform over the ring's area, not bunched at its inner edge.
        r = math.sqrt(rng.uniform(low**2, high**2))
        bearing = float(rng.uniform(0.0, 2 * math.pi))
        dx, dy = (
            r * math.cos(bearing) / self._m_per_deg[0],
            r * math.sin(bearing) / self._m_per_deg[1],
        )
        # A sensor near the border: the opposite side of it is in the city.
        for x, y in ((lon + dx, lat + dy), (lon - dx, lat - dy)):
            if shapely.contains_xy(self._city, x, y):
                return x, y
        return lon, lat

    def _address(self, rng: np.random.Generator, district: str) -> str | None:
        if rng.random() >= self.params.address_share:
            return None
        roads = _ROADS.get(district, _ROADS[""])
        road = roads[int(rng.integers(len(roads)))]
        number = int(rng.integers(1, 1_200))
        near = "附近" if rng.random() < 0.5 else ""
        return f"上海市{self._district_zh.get(district, '')}{road}{number}号{near}"


# -- the adapters ------------------------------------------------------------------------


def open311_form(report: CaseReport) -> dict[str, FormValue]:
    """The Open311 GeoReport v2 POST form of a report (``application/x-www-form-urlencoded``).

    Blank fields are left out. A ``multivaluelist`` attribute is one list under
    ``attribute[<code>][]``, which httpx sends as the key repeated once per value.
    Send it with :func:`open311_headers`.

    Examples
    --------
    >>> report = CaseReport("open311", "sim-1-0-0", "flooding", "Water up to the knee.",
    ...     121.47, 31.23, None, {"water_depth": "knee"}, None, 0.5)
    >>> open311_form(report)  # doctest: +NORMALIZE_WHITESPACE
    {'service_code': 'flooding', 'lat': '31.230000', 'long': '121.470000',
     'description': 'Water up to the knee.', 'attribute[water_depth]': 'knee'}
    """
    form: dict[str, FormValue] = {
        "service_code": report.service_code,
        "lat": f"{report.lat:.6f}",
        "long": f"{report.lon:.6f}",
    }
    if report.address:
        form["address_string"] = report.address
    if report.description:
        form["description"] = report.description
    contact = report.contact
    if contact is not None:
        form["first_name"] = contact.first_name
        form["last_name"] = contact.last_name
        form["phone"] = contact.phone
        if contact.email:
            form["email"] = contact.email
    for code, value in report.attributes.items():
        if isinstance(value, list):
            form[f"attribute[{code}][]"] = list(value)
        else:
            form[f"attribute[{code}]"] = value
    return form


def open311_headers(report: CaseReport) -> dict[str, str]:
    """Per-request headers of the Open311 POST: the report's idempotency key."""
    return {"Idempotency-Key": report.external_id}


def hotline_message(report: CaseReport, received_at: datetime | None = None) -> tuple[bytes, bytes]:
    """Kafka key and value of a report on ``cityops.cases.inbound`` (a ``HotlineCase``).

    ``received_at`` defaults to now (UTC). The value is validated by the contract's
    model before it is serialised, so a bad report fails here, not at the consumer.
    """
    contact = report.contact
    case = HotlineCase(
        external_id=report.external_id,
        source=HOTLINE_SOURCE,
        channel="hotline",
        service_code=report.service_code,
        description=report.description,
        location=Location(lon=report.lon, lat=report.lat),
        address=report.address,
        attributes=dict(report.attributes),
        citizen=None
        if contact is None
        else HotlineCitizen(name=contact.name, phone=contact.phone, email=contact.email),
        received_at=received_at or datetime.now(UTC),
    )
    return encode(case)


class SendFuture(Protocol):
    """What ``KafkaProducer.send`` returns (kafka-python's ``FutureRecordMetadata``)."""

    def add_callback(self, f: Callable[..., Any], *args: Any) -> Any: ...

    def add_errback(self, f: Callable[..., Any], *args: Any) -> Any: ...


class Producer(Protocol):
    """The part of kafka-python's ``KafkaProducer`` the simulator uses."""

    def send(
        self, topic: str, value: bytes | None = ..., key: bytes | None = ...
    ) -> SendFuture | None: ...

    def flush(self, timeout: float | None = ...) -> Any: ...


@dataclass(frozen=True, slots=True)
class CitizenStats:
    """What one run of the citizen simulator did."""

    generated: int  # reports the model produced during the run
    open311_sent: int  # POSTs the API answered (any final status)
    open311_accepted: int  # answered 2xx
    open311_rejected: int  # answered 4xx or 5xx (not retried)
    hotline_sent: int  # handed to the Kafka producer
    hotline_acked: int  # acknowledged by the broker
    hotline_failed: int  # the producer gave up on them
    dropped: int  # never sent: the channel was down too long, or still queued at the end
    elapsed_s: float

    @property
    def sent(self) -> int:
        """Reports sent on either channel."""
        return self.open311_sent + self.hotline_sent


# What a run counts as it goes: every field of CitizenStats but the time.
_COUNTED = tuple(f.name for f in fields(CitizenStats) if f.name != "elapsed_s")

# Answers worth retrying: the API is starting, overloaded or behind a restarting proxy.
# The Idempotency-Key makes a retry safe.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(slots=True)
class _Outbox:
    """One channel's reports waiting to go, with its back-off state."""

    queue: deque[CaseReport] = field(default_factory=deque)
    backoff_s: float = 0.0
    retry_at: float = -math.inf


class CitizenSimulator:
    """Sends the model's reports in real time: Open311 over HTTP, hotline over Kafka.

    Scenario time is wall-clock seconds since ``scenario_start`` (default: when
    :meth:`run` starts), as for the gateway simulator; starting both together, or
    passing the same ``scenario_start``, lines up the storm the citizens see with the
    one the sensors measure.

    A channel that fails (connection error, or HTTP 429/502/503/504) keeps its reports
    and retries them with exponential back-off up to ``max_backoff_s``; the other
    channel carries on. Beyond ``max_pending`` queued reports the oldest are dropped,
    and whatever is still queued when the run ends is counted as dropped.

    Parameters
    ----------
    model : CitizenModel
        Which reports to file.
    producer : Producer
        A kafka-python producer (the caller owns it; the simulator flushes, never closes).
    base_url, token : str
        The API root (``http://127.0.0.1:8000``) and its bearer token.
    topic : str
        The inbound cases topic, ``Topics.of(settings).cases_inbound``.
    tick_s : float
        How often reports are generated and sent.

    Examples
    --------
    >>> sim = CitizenSimulator(model, make_producer(settings), base_url="http://127.0.0.1:8000",
    ...     token="...", topic=Topics.of(settings).cases_inbound)  # doctest: +SKIP
    >>> sim.run(duration_s=60).sent  # doctest: +SKIP
    14
    """

    def __init__(
        self,
        model: CitizenModel,
        producer: Producer,
        *,
        base_url: str,
        token: str,
        topic: str = CASES_INBOUND,
        tick_s: float = 0.5,
        timeout_s: float = 5.0,
        max_backoff_s: float = 10.0,
        max_pending: int = 10_000,
        scenario_start: float | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if tick_s <= 0 or max_backoff_s <= 0 or max_pending < 1:
            raise ValueError("tick_s, max_backoff_s and max_pending must be positive")
        self.model = model
        self.producer = producer
        self.base_url = base_url
        self.topic = topic
        self.tick_s = tick_s
        self.max_backoff_s = max_backoff_s
        self.max_pending = max_pending
        self.scenario_start = scenario_start
        self._token = token
        self._timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep
        self._transport = transport
        self._lock = threading.Lock()  # producer callbacks run on its I/O thread
        self._reset()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        token: str,
        base_url: str | None = None,
        scenario: str | None = None,
        params: CitizenParams | None = None,
        producer: Producer | None = None,
        **kwargs: Any,
    ) -> CitizenSimulator:
        """A simulator of the settings' city and scenario (seeded like the gateway one)."""
        seed = settings.city_seed
        model = CitizenModel(
            ensure_city(settings),
            load_categories(settings.categories_file),
            make_scenario(scenario or settings.sim_scenario, seed),
            seed=seed,
            params=params,
            # A fresh prefix per start: the platform keeps the last run's cases.
            id_prefix=f"sim-{seed}-{int(time.time())}",
        )
        if producer is None:
            # Block at most 5 s on a broker that is down, then back off and retry.
            producer = make_producer(settings, client_id="cityops-citizens", max_block_ms=5_000)
        return cls(
            model,
            producer,
            base_url=base_url or f"http://{settings.api_host}:{settings.api_port}",
            token=token,
            topic=Topics.of(settings).cases_inbound,
            **kwargs,
        )

    def run(
        self, duration_s: float | None = None, stop_event: threading.Event | None = None
    ) -> CitizenStats:
        """File reports for ``duration_s`` seconds (None: until ``stop_event`` is set)."""
        stop = stop_event or threading.Event()
        sleep = self._sleep or stop.wait
        self._reset()
        started = self._clock()
        scenario_start = started if self.scenario_start is None else self.scenario_start
        done = max(0.0, started - scenario_start)
        end = None if duration_s is None else done + duration_s
        headers = {"Authorization": f"Bearer {self._token}"}
        with httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=self._timeout_s,
            transport=self._transport,
        ) as http:
            while True:
                now = self._clock()
                t = max(0.0, now - scenario_start)
                upto = t if end is None else min(t, end)
                if upto > done:
                    for report in self.model.reports(done, upto):
                        self._enqueue(report)
                    done = upto
                self._deliver(http, now, scenario_start)
                if stop.is_set() or (end is not None and t >= end):
                    break
                sleep(self.tick_s if end is None else min(self.tick_s, end - t))
        try:
            self.producer.flush(timeout=10.0)
        except KafkaError as exc:
            log.warning("flushing hotline messages failed: %s", exc)
        self._count("dropped", sum(len(box.queue) for box in self._outboxes.values()))
        with self._lock:
            stats = CitizenStats(**self._counts, elapsed_s=self._clock() - started)
        if stats.dropped:
            log.warning("citizens: %d reports dropped, never sent", stats.dropped)
        log.info("citizens: %s", stats)
        return stats

    def _reset(self) -> None:
        self._outboxes: dict[Channel, _Outbox] = {"open311": _Outbox(), "hotline": _Outbox()}
        with self._lock:
            self._counts = dict.fromkeys(_COUNTED, 0)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _enqueue(self, report: CaseReport) -> None:
        self._count("generated")
        queue = self._outboxes[report.channel].queue
        queue.append(report)
        if len(queue) > self.max_pending:
            lost = queue.popleft()
            self._count("dropped")
            log.debug("%s queue full: dropped %s", report.channel, lost.external_id)

    def _deliver(self, http: httpx.Client, now: float, scenario_start: float) -> None:
        for channel, box in self._outboxes.items():
            while box.queue and now >= box.retry_at:
                report = box.queue[0]
                if channel == "open311":
                    ok = self._post(http, report)
                else:
                    ok = self._produce(report, scenario_start)
                if ok:
                    box.queue.popleft()
                    if box.backoff_s:
                        log.info("%s channel back, %d reports queued", channel, len(box.queue))
                    box.backoff_s = 0.0
                    continue
                if box.backoff_s == 0.0:
                    log.warning("%s channel down, %d reports queued", channel, len(box.queue))
                box.backoff_s = min(self.max_backoff_s, max(self.tick_s, 2 * box.backoff_s))
                box.retry_at = now + box.backoff_s
                break

    def _post(self, http: httpx.Client, report: CaseReport) -> bool:
        """POST one report; False if it should be retried later."""
        try:
            response = http.post(
                OPEN311_PATH, data=open311_form(report), headers=open311_headers(report)
            )
        except httpx.TransportError as exc:
            log.debug("Open311 %s: %r", report.external_id, exc)
            return False
        if response.status_code in _RETRY_STATUSES:
            log.debug("Open311 %s: HTTP %d, retrying", report.external_id, response.status_code)
            return False
        self._count("open311_sent")
        if response.is_success:
            self._count("open311_accepted")
        else:
            self._count("open311_rejected")
            log.debug(
                "Open311 rejected %s (%s): HTTP %d %s",
                report.external_id,
                report.service_code,
                response.status_code,
                _error_description(response),
            )
        return True

    def _produce(self, report: CaseReport, scenario_start: float) -> bool:
        """Hand one report to the producer; False if it should be retried later."""
        received = datetime.fromtimestamp(scenario_start + report.t, UTC)
        key, value = hotline_message(report, received)
        try:
            future = self.producer.send(self.topic, key=key, value=value)
        except KafkaError as exc:
            log.debug("hotline %s: %r", report.external_id, exc)
            return False
        self._count("hotline_sent")
        if future is not None:
            future.add_callback(self._on_ack)
            future.add_errback(self._on_failure, report.external_id)
        return True

    def _on_ack(self, _metadata: object) -> None:
        self._count("hotline_acked")

    def _on_failure(self, exc: BaseException, external_id: str) -> None:
        log.debug("hotline %s not delivered: %r", external_id, exc)
        self._count("hotline_failed")


def _pick(rng: np.random.Generator, cumulative: NDArray[np.float64]) -> int:
    """An index drawn with the probabilities whose running sum is ``cumulative``."""
    # rng.choice(p=...) re-checks the probabilities on every call: ten times slower.
    return min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(cumulative) - 1)


def _error_description(response: httpx.Response) -> str:
    """The description of an Open311 error answer, or the start of the body."""
    try:
        body = response.json()
        return "; ".join(f"{e.get('code')}: {e.get('description')}" for e in body)
    except (ValueError, TypeError, AttributeError):
        return response.text[:200]


# -- report content ----------------------------------------------------------------------


def _attributes(
    category: Category, rng: np.random.Generator, optional_share: float
) -> dict[str, AttributeValue]:
    """Valid attribute values: every required one, each optional one now and then."""
    out: dict[str, AttributeValue] = {}
    for attr in category.attributes:
        if attr.required or rng.random() < optional_share:
            out[attr.code] = _attribute_value(attr, rng)
    return out


def _attribute_value(attr: Attribute, rng: np.random.Generator) -> AttributeValue:
    keys = [k for k, _ in attr.values]
    if attr.datatype == "singlevaluelist":
        return keys[int(rng.integers(len(keys)))]
    if attr.datatype == "multivaluelist":
        n = int(rng.integers(1, len(keys) + 1))
        picked = rng.choice(len(keys), size=n, replace=False)
        return [keys[i] for i in sorted(picked.tolist())]
    if attr.datatype == "number":
        return str(int(rng.integers(1, 100)))
    if attr.datatype == "datetime":
        # Some time in the last two days before a fixed day: deterministic, plausible.
        when = _DATETIME_ANCHOR.timestamp() - float(rng.uniform(0.0, 2 * 86_400.0))
        return datetime.fromtimestamp(int(when), UTC).isoformat()
    if attr.code == "pole_number":
        return f"LD-{int(rng.integers(1, 10_000)):04d}"
    return "see description"


def _match_reading(
    category: Category,
    attributes: dict[str, AttributeValue],
    metric: str,
    value: float,
    rng: np.random.Generator,
) -> None:
    """Make a report's attributes agree with what the nearby sensor measures.

    So far one case: a flooding report's depth and the water level. Sensors sit at low
    points (underpasses, drains), so the street around reads less than the sensor; and
    citizens' guesses vary.
    """
    if metric != "water_level":
        return
    level_cm = value
    known = {a.code: {k for k, _ in a.values} for a in category.attributes}
    guess = level_cm + float(rng.normal(0.0, 10.0))
    depth = "ankle" if guess < 60.0 else "knee" if guess < 80.0 else "above_knee"
    if depth in known.get("water_depth", set()):
        attributes["water_depth"] = depth
    if "blocking_traffic" in attributes and {"yes", "no"} <= known["blocking_traffic"]:
        attributes["blocking_traffic"] = "no" if depth == "ankle" else "yes"


def _description(
    category: Category,
    attributes: Mapping[str, AttributeValue],
    rng: np.random.Generator,
    chinese_share: float,
    theme: str = "",
) -> str:
    templates = _THEMED_DESCRIPTIONS.get((theme, category.code)) or _DESCRIPTIONS.get(
        category.code, (f"{category.name_en} {{place}}.",)
    )
    depth = "ankle-deep"
    if isinstance(attributes.get("water_depth"), str):
        names = {k: n for a in category.attributes for k, n in a.values if a.code == "water_depth"}
        depth = names.get(str(attributes["water_depth"]), depth)
    text = templates[int(rng.integers(len(templates)))].format(
        place=_PLACES[int(rng.integers(len(_PLACES)))], depth=depth
    )
    if rng.random() < chinese_share:
        text += f" {_CHINESE.get(category.code, category.name_zh)}，请尽快处理。"
    return text


def _new_contact(rng: np.random.Generator, email_share: float) -> CitizenContact:
    if rng.random() < 0.03:
        first, last = _FOREIGN_NAMES[int(rng.integers(len(_FOREIGN_NAMES)))]
        first_py, last_py = first.lower(), last.lower()
    else:
        last, last_py = _SURNAMES[int(rng.integers(len(_SURNAMES)))]
        first, first_py = _GIVEN_NAMES[int(rng.integers(len(_GIVEN_NAMES)))]
    prefix = _MOBILE_PREFIXES[int(rng.integers(len(_MOBILE_PREFIXES)))]
    phone = f"{prefix}{int(rng.integers(0, 10**8)):08d}"
    email = None
    if rng.random() < email_share:
        domain = _EMAIL_DOMAINS[int(rng.integers(len(_EMAIL_DOMAINS)))]
        if domain == "qq.com":
            email = f"{int(rng.integers(10**7, 10**10))}@qq.com"
        else:
            email = f"{first_py}.{last_py}{int(rng.integers(1, 100))}@{domain}"
    return CitizenContact(first_name=first, last_name=last, phone=phone, email=email)


_DATETIME_ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)

_PLACES: tuple[str, ...] = (
    "near the metro exit",
    "outside the primary school",
    "at the bus stop",
    "in front of the supermarket",
    "at the lane entrance",
    "by the residential compound gate",
    "next to the wet market",
    "opposite the hospital",
    "under the overpass",
    "at the crossroads",
)

_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "road_damage": (
        "Large pothole in the road {place}, cyclists swerve around it.",
        "Road surface cracked and sunken {place}.",
        "Asphalt broken up {place} since the roadworks.",
    ),
    "manhole_cover_missing": (
        "Manhole cover missing {place}, an open hole in the pavement.",
        "Someone took the manhole cover {place}; very dangerous at night.",
    ),
    "manhole_cover_damaged": (
        "Manhole cover {place} is cracked and bangs every time a car passes.",
        "Broken manhole cover {place}, it tips when stepped on.",
    ),
    "streetlight_out": (
        "Street light {place} has been out for three nights.",
        "Several street lights dark {place}, the lane is pitch black.",
    ),
    "streetlight_damaged": (
        "Light pole {place} is leaning after a truck hit it.",
        "Lamp post {place} has an open panel with wires showing.",
    ),
    "flooding": (
        "Water {depth} across the road {place}, cars are stalling.",
        "Street flooded {place}, water {depth}; pedestrians cannot get through.",
        "The road {place} is under water, {depth}, and it is not draining.",
    ),
    "water_main_burst": (
        "Water gushing out of the ground {place}, looks like a burst pipe.",
        "Burst water main {place}: the road is covered in water and our taps are dry.",
    ),
    "drain_blocked": (
        "Storm drain {place} is blocked with leaves and rubbish, water is not draining.",
        "Drain grate {place} clogged, the puddle keeps growing.",
    ),
    "hydrant_damaged": (
        "Fire hydrant {place} is leaking.",
        "Hydrant {place} knocked over by a car.",
    ),
    "illegal_dumping": (
        "Someone dumped a pile of rubbish {place}.",
        "Construction waste left on the pavement {place}.",
        "Old sofa and mattresses dumped {place}.",
    ),
    "overflowing_bin": (
        "Litter bin {place} is overflowing, rubbish all over the ground.",
        "Bins {place} not emptied for two days, they smell.",
    ),
    "street_cleaning": (
        "Pavement {place} is very dirty, nobody has swept it.",
        "Mud and litter all over the street {place}.",
    ),
    "fallen_tree": (
        "A large branch has fallen {place} and blocks the pavement.",
        "Tree fell over {place}, partly blocking the road.",
    ),
    "noise_construction": (
        "Building site {place} still working after 10 pm, very loud.",
        "Pile driving {place} late at night, nobody can sleep.",
    ),
    "air_pollution": (
        "Thick smoke from someone burning rubbish {place}.",
        "Dust blowing from the building site {place}, the soil is not covered.",
    ),
    "water_pollution": (
        "The canal {place} smells and the water is black.",
        "Oil film on the creek {place}, dead fish floating.",
    ),
    "noise_social": (
        "Square dancing music {place} far too loud every evening.",
        "Neighbours {place} playing loud music late at night.",
        "Shop {place} blasting a loudspeaker all day.",
    ),
    "street_vendor": (
        "Street vendors blocking the pavement {place}.",
        "Food stalls take over the road {place} every evening.",
    ),
    "illegal_construction": (
        "Residents building an extension on the roof {place}.",
        "Illegal shed built {place}, it blocks the fire lane.",
    ),
    "shared_bikes": (
        "Shared bikes piled up {place}, blocking the pavement.",
        "Dozens of shared bikes dumped {place}.",
    ),
    "illegal_parking": (
        "Car parked on the pavement {place}.",
        "Cars parked in the bus lane {place}.",
        "A van is blocking the fire lane {place}.",
    ),
    "traffic_signal_fault": (
        "Traffic lights {place} are not working.",
        "Signal stuck on red {place}, drivers are running it.",
    ),
    "bus_shelter_damaged": (
        "Bus shelter glass smashed {place}.",
        "Bus stop sign bent {place} and the shelter roof leaks.",
    ),
}

# What people say when a scenario is behind the call: (theme, category) -> templates.
_THEMED_DESCRIPTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("haze", "air_pollution"): (
        "The air {place} is thick with haze and smells of smoke; my child is coughing.",
        "Visibility is terrible {place}, the air stings the eyes. Is something burning?",
        "Heavy smog {place} since this morning, the air quality app shows purple.",
    ),
    ("outage", "streetlight_out"): (
        "All the street lights {place} went out at once, the whole street is dark.",
        "No street lights {place} or in the next streets, looks like a power cut.",
    ),
    ("festival", "noise_social"): (
        "The festival stage {place} is deafening, the music has not stopped for hours.",
        "Loudspeakers from the festival {place}, we cannot hear our own TV.",
    ),
    ("festival", "overflowing_bin"): (
        "Bins {place} overflowing with festival rubbish, cups everywhere.",
    ),
    ("festival", "street_vendor"): (
        "Snack stalls for the festival crowd take over the pavement {place}.",
    ),
    ("festival", "illegal_parking"): (
        "Festival visitors' cars parked on the pavement and in the fire lane {place}.",
    ),
    ("festival", "shared_bikes"): (
        "Hundreds of shared bikes dumped {place} by the festival crowd.",
    ),
    ("festival", "street_cleaning"): ("Litter from the festival all over the street {place}.",),
}

_CHINESE: dict[str, str] = {
    "road_damage": "路面坑洼",
    "manhole_cover_missing": "井盖丢了",
    "manhole_cover_damaged": "井盖松动",
    "streetlight_out": "路灯不亮",
    "streetlight_damaged": "灯杆歪了",
    "flooding": "路面积水严重",
    "water_main_burst": "水管爆了",
    "drain_blocked": "雨水井堵了",
    "hydrant_damaged": "消防栓漏水",
    "illegal_dumping": "有人乱倒垃圾",
    "overflowing_bin": "垃圾桶满了",
    "street_cleaning": "路面很脏",
    "fallen_tree": "大树倒了",
    "noise_construction": "半夜施工太吵",
    "air_pollution": "有人焚烧垃圾",
    "water_pollution": "河水发黑发臭",
    "noise_social": "噪音扰民",
    "street_vendor": "占道经营",
    "illegal_construction": "违章搭建",
    "shared_bikes": "共享单车乱停",
    "illegal_parking": "违章停车",
    "traffic_signal_fault": "红绿灯坏了",
    "bus_shelter_damaged": "候车亭坏了",
}

# Real road names of each district ("" for a district the table does not know).
_ROADS: dict[str, tuple[str, ...]] = {
    "310107": ("长寿路", "武宁路", "曹杨路", "真北路", "中山北路"),
    "310106": ("南京西路", "延安中路", "共和新路", "北京西路", "江宁路"),
    "310109": ("四川北路", "大连路", "海宁路", "曲阳路", "东江湾路"),
    "310105": ("延安西路", "愚园路", "虹桥路", "天山路", "中山西路"),
    "310104": ("衡山路", "漕溪北路", "肇嘉浜路", "宜山路", "龙华中路"),
    "310101": ("南京东路", "西藏中路", "中山东一路", "淮海中路", "河南中路"),
    "": ("人民路", "中山路", "解放路", "建设路"),
}

_SURNAMES: tuple[tuple[str, str], ...] = (
    ("王", "wang"),
    ("李", "li"),
    ("张", "zhang"),
    ("刘", "liu"),
    ("陈", "chen"),
    ("杨", "yang"),
    ("黄", "huang"),
    ("赵", "zhao"),
    ("吴", "wu"),
    ("周", "zhou"),
    ("徐", "xu"),
    ("孙", "sun"),
    ("朱", "zhu"),
    ("沈", "shen"),
    ("顾", "gu"),
    ("陆", "lu"),
)
_GIVEN_NAMES: tuple[tuple[str, str], ...] = (
    ("伟", "wei"),
    ("芳", "fang"),
    ("娜", "na"),
    ("敏", "min"),
    ("静", "jing"),
    ("丽", "li"),
    ("强", "qiang"),
    ("磊", "lei"),
    ("军", "jun"),
    ("勇", "yong"),
    ("艳", "yan"),
    ("杰", "jie"),
    ("涛", "tao"),
    ("明", "ming"),
    ("秀英", "xiuying"),
    ("建华", "jianhua"),
    ("志强", "zhiqiang"),
    ("海燕", "haiyan"),
    ("晓东", "xiaodong"),
    ("佳怡", "jiayi"),
    ("子轩", "zixuan"),
)
_FOREIGN_NAMES: tuple[tuple[str, str], ...] = (
    ("Emma", "Schmidt"),
    ("James", "Taylor"),
    ("Yuki", "Tanaka"),
    ("Lucas", "Martin"),
)
_MOBILE_PREFIXES: tuple[str, ...] = (
    *(f"13{d}" for d in range(10)),
    "150",
    "151",
    "152",
    "155",
    "156",
    "158",
    "159",
    "177",
    "180",
    "181",
    "186",
    "187",
    "188",
    "189",
    "199",
)
_EMAIL_DOMAINS: tuple[str, ...] = ("163.com", "126.com", "qq.com", "sina.com", "outlook.com")
