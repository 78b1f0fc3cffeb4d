"""Scenarios: what every simulated device reads at time ``t`` (seconds since start).

A scenario is a pure function of (seed, device id, t): the same device reads the same
value at the same time whatever else is in the fleet, and whichever process asks. So a
load run split over several simulator processes produces exactly what one would, and
tests can ask for any instant directly.

Values come back vectorised, one float array per metric aligned with the fleet, NaN
where a device does not report that metric (see ``core.sensor.telemetry.SENSOR_TYPES``).

A scenario may also say what citizens report while it runs (``citizen_reports``: calls
around sensors in alarm, or around a place no sensor watches); ``simulations.citizens``
files them. ``simulations.library`` describes every scenario for the demo.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Protocol

import numpy as np
import pandas as pd
import shapely
from numpy.typing import NDArray

from core.sensor.rules import RuleSet, load_rules
from core.sensor.telemetry import SENSOR_TYPES
from gis.shanghai import LANDMARKS
from simulations.city import RIVERSIDE_DISTRICTS

Values = dict[str, NDArray[np.float64]]
# (service-case category code, relative weight) pairs: what citizens call about.
Weights = tuple[tuple[str, float], ...]


@dataclass(frozen=True, eq=False)
class Fleet:
    """The simulated devices, as aligned arrays.

    Examples
    --------
    >>> fleet = Fleet.from_sensors(layers.sensors)  # doctest: +SKIP
    >>> len(fleet)  # doctest: +SKIP
    2000
    """

    device_id: NDArray[np.object_]
    sensor_type: NDArray[np.object_]
    gateway_id: NDArray[np.object_]
    district_code: NDArray[np.object_]
    # Each device's distance to the city's river in metres, where the city's sensors
    # layer gives it (``river_m``: the Shanghai city); None where it does not.
    river_m: NDArray[np.float64] | None = None
    # Each device's WGS-84 (lon, lat), one row per device, where the layer gives them.
    lonlat: NDArray[np.float64] | None = None
    # A stable 64-bit key per device: the seed of its deterministic behaviour.
    keys: NDArray[np.uint64] = field(init=False)

    def __post_init__(self) -> None:
        arrays = (self.device_id, self.sensor_type, self.gateway_id, self.district_code)
        lengths = {len(a) for a in arrays}
        for optional in (self.river_m, self.lonlat):
            if optional is not None:
                lengths.add(len(optional))
        if len(lengths) != 1:
            raise ValueError("fleet arrays must all have the same length")
        unknown = set(self.sensor_type.tolist()) - set(SENSOR_TYPES)
        if unknown:
            raise ValueError(f"unknown sensor type(s) {sorted(unknown)}")
        keys = np.fromiter(
            (
                int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little")
                for d in self.device_id.tolist()
            ),
            dtype=np.uint64,
            count=len(self.device_id),
        )
        object.__setattr__(self, "keys", keys)

    @classmethod
    def from_sensors(cls, sensors: pd.DataFrame) -> Fleet:
        """Build from a sensors layer (``device_id``, ``sensor_type``, ``gateway_id``...,
        and ``river_m`` and point geometries if it has them)."""
        geometry = sensors.get("geometry")
        return cls(
            device_id=sensors.device_id.to_numpy(dtype=object),
            sensor_type=sensors.sensor_type.to_numpy(dtype=object),
            gateway_id=sensors.gateway_id.to_numpy(dtype=object),
            district_code=sensors.district_code.to_numpy(dtype=object),
            river_m=(sensors.river_m.to_numpy(dtype=np.float64) if "river_m" in sensors else None),
            lonlat=None
            if geometry is None
            else np.column_stack([geometry.x.to_numpy(), geometry.y.to_numpy()]),
        )

    def __len__(self) -> int:
        return len(self.device_id)

    def of_type(self, sensor_type: str) -> NDArray[np.bool_]:
        """Mask of the devices of one sensor type."""
        mask: NDArray[np.bool_] = self.sensor_type == sensor_type
        return mask


class Scenario(Protocol):
    """Gives every device's metric values at ``t`` seconds after the scenario starts."""

    def values(self, fleet: Fleet, t: float) -> Values:
        """One array per metric of ``SENSOR_TYPES``, aligned with ``fleet``, NaN where a
        device does not report that metric."""
        ...


@dataclass(frozen=True, slots=True)
class Timeline:
    """When a scenario starts, reaches its full effect and is over (scenario seconds)."""

    start_s: float
    peak_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Envelope:
    """A rise from ``start_s`` over ``ramp_s``, a plateau of ``hold_s``, a fall (``recede_s``)."""

    start_s: float
    ramp_s: float
    hold_s: float
    recede_s: float

    def __post_init__(self) -> None:
        if min(self.ramp_s, self.recede_s) <= 0 or self.hold_s < 0:
            raise ValueError("ramp_s and recede_s must be positive, hold_s >= 0")

    @property
    def timeline(self) -> Timeline:
        """Start, peak and end of the envelope."""
        peak = self.start_s + self.ramp_s
        return Timeline(self.start_s, peak, peak + self.hold_s + self.recede_s)

    def intensity(self, t: float) -> float:
        """0 before and after, 1 on the plateau, linear in between."""
        tl = self.timeline
        hold_end = tl.peak_s + self.hold_s
        return float(np.interp(t, [tl.start_s, tl.peak_s, hold_end, tl.end_s], [0, 1, 1, 0]))


@dataclass(frozen=True, slots=True)
class Threshold:
    """Where the lowest alarm level of a sensor type's rule lies (``core/sensor/rules.yaml``)."""

    metric: str
    op: str  # ">" or "<"
    value: float

    def breached(self, values: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Mask of the values past the threshold; NaN (no reading) never is."""
        with np.errstate(invalid="ignore"):
            hit = values > self.value if self.op == ">" else values < self.value
        return np.asarray(hit & ~np.isnan(values), dtype=bool)


def alarm_threshold(sensor_type: str, rules: RuleSet | None = None) -> Threshold:
    """The alarm threshold of ``sensor_type``'s watched metric (default: packaged rules).

    Examples
    --------
    >>> alarm_threshold("water_level")
    Threshold(metric='water_level', op='>', value=50.0)
    >>> alarm_threshold("streetlight_power")
    Threshold(metric='power', op='<', value=10.0)
    """
    metric = SENSOR_TYPES[sensor_type][0]
    own = [
        r
        for r in (rules or load_rules()).rules
        if r.sensor_type == sensor_type and r.metric == metric
    ]
    if not own:
        raise ValueError(f"the rules have no {metric} threshold for {sensor_type}")
    op = own[0].op
    levels = [level.raise_at for rule in own for level in rule.levels]
    # The alarm starts at the least severe level: the lowest bar for ">", the highest for "<".
    return Threshold(metric, op, min(levels) if op == ">" else max(levels))


@dataclass(frozen=True, slots=True)
class NearAlarms:
    """Citizens call about what they see around sensors in alarm: more alarms, more calls.

    Each sensor of ``sensor_type`` past its alarm threshold adds ``rate_per_sensor``
    reports per second, placed ``radius_m`` (inner, outer) from it.
    """

    sensor_type: str
    categories: Weights
    rate_per_sensor: float
    radius_m: tuple[float, float]
    theme: str = ""  # picks scenario-specific description templates

    def __post_init__(self) -> None:
        _check_source(self.categories, self.rate_per_sensor, self.radius_m)
        if self.sensor_type not in SENSOR_TYPES:
            raise ValueError(f"unknown sensor type {self.sensor_type!r}")


@dataclass(frozen=True, slots=True)
class AtVenue:
    """Citizens call about a crowd at a place no sensor watches.

    The rate follows ``envelope``, ``peak_rate`` reports per second at its plateau,
    placed within ``radius_m`` (inner, outer) of the venue: ``venue`` (lon, lat) in
    ``district``, or, in a city where ``district`` does not hold it (the generated
    one), a point inside ``district`` (see :meth:`place`).
    """

    district: str
    categories: Weights
    peak_rate: float
    radius_m: tuple[float, float]
    envelope: Envelope
    theme: str = ""
    venue: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check_source(self.categories, self.peak_rate, self.radius_m)

    def place(self, districts: pd.DataFrame) -> tuple[float, float]:
        """Where the crowd gathers in a city of these districts (``district_code``,
        ``geometry``): the venue if ``district`` holds it, else a point inside it.

        Raises
        ------
        ValueError
            If the city has no district ``district``.
        """
        rows = districts[districts.district_code == self.district]
        if rows.empty:
            raise ValueError(f"the city has no district {self.district!r} for the venue")
        area = rows.geometry.iloc[0]
        if self.venue is not None and shapely.covers(area, shapely.Point(self.venue)):
            return self.venue
        inside = shapely.point_on_surface(area)
        return float(inside.x), float(inside.y)


ReportSource = NearAlarms | AtVenue


def citizen_reports(scenario: Scenario) -> tuple[ReportSource, ...]:
    """What citizens report because of ``scenario`` (nothing for an ordinary day)."""
    return tuple(getattr(scenario, "citizen_reports", ()))


def _check_source(categories: Weights, rate: float, radius_m: tuple[float, float]) -> None:
    if not categories or any(w <= 0 for _, w in categories):
        raise ValueError("a report source needs categories with positive weights")
    if rate < 0:
        raise ValueError("report rates must not be negative")
    if not 0 <= radius_m[0] <= radius_m[1]:
        raise ValueError("radius_m must be (inner, outer) with 0 <= inner <= outer")


class _Enveloped:
    """A scenario whose effect follows one :class:`Envelope` of its own fields."""

    start_s: float
    ramp_s: float
    hold_s: float
    recede_s: float

    @property
    def envelope(self) -> Envelope:
        """The effect's rise from ``start_s``, plateau and fall."""
        return Envelope(self.start_s, self.ramp_s, self.hold_s, self.recede_s)

    @property
    def timeline(self) -> Timeline:
        """Start, peak and end of the effect."""
        return self.envelope.timeline


class _Calls(NamedTuple):
    """What citizens call about around the sensors of one type in alarm (see NearAlarms)."""

    sensor_type: str
    categories: Weights
    radius_m: tuple[float, float]
    theme: str = ""


class _OverBaseline:
    """A scenario that changes some readings of an ordinary day (:class:`Baseline`).

    Citizens call as ``CALLS`` says, ``report_rate_per_sensor`` calls per second per
    sensor in alarm.
    """

    CALLS: ClassVar[_Calls]
    seed: int
    report_rate_per_sensor: float

    @property
    def citizen_reports(self) -> tuple[ReportSource, ...]:
        """Calls around the sensors in alarm, as ``CALLS`` says."""
        calls = self.CALLS
        return (
            NearAlarms(
                calls.sensor_type,
                calls.categories,
                self.report_rate_per_sensor,
                calls.radius_m,
                theme=calls.theme,
            ),
        )

    def values(self, fleet: Fleet, t: float) -> Values:
        """Metric values of the fleet at ``t``; see :class:`Scenario`."""
        out = Baseline(self.seed).values(fleet, t)
        self._change(fleet, t, out)
        return out

    def _change(self, fleet: Fleet, t: float, out: Values) -> None:
        """Change the ordinary day's readings ``out`` in place."""
        raise NotImplementedError


@dataclass(frozen=True)
class Baseline:
    """An ordinary day: every metric near its normal level with sensor noise.

    Each device has its own normal level (installation, micro-climate) plus reading
    noise; noise is clipped at three standard deviations so a quiet city never trips
    an alarm by chance. Batteries drain slowly from about 95 %.
    """

    seed: int = 0

    def values(self, fleet: Fleet, t: float) -> Values:
        """Metric values of the fleet at ``t``; see :class:`Scenario`."""
        own, now = _draws(fleet.keys, self.seed, t)
        hours = t / 3600.0
        raw = {
            "water_level": 20.0 + 4.5 * own.normal(1) + 1.5 * now.normal(2),
            "pm25": 35.0 + 6.0 * own.normal(3) + 8.0 * now.normal(4),
            "tilt": 1.0 + 0.4 * own.normal(5) + 0.3 * now.normal(6),
            "power": 100.0 + 3.0 * own.normal(7) + 4.0 * now.normal(8),
            "battery": 95.0 + 1.5 * own.normal(9) - (0.2 + 0.2 * own.uniform(10)) * hours,
            "temperature": 18.0 + 2.5 * own.normal(11) + 1.5 * now.normal(12),
        }
        out: Values = {}
        for metric, value in raw.items():
            low, high, decimals = _RANGES[metric]
            out[metric] = np.round(np.clip(value, low, high), decimals).astype(np.float64)
        return _mask_unreported(fleet, out)


@dataclass(frozen=True)
class Rainstorm(_Enveloped, _OverBaseline):
    """A rainstorm floods streets along the river, then the water recedes.

    Where the city gives each site's distance to its river (``Fleet.river_m``: the
    Shanghai city, the Huangpu), the water-level sensors within ``river_m`` of it flood,
    in ``affected_districts`` if given; elsewhere (the generated city, which has no
    river) those in ``affected_districts``, by default its riverside districts.
    Water levels there rise linearly from ``start_s`` over ``ramp_s``, hold for
    ``hold_s`` and fall back over ``recede_s``. At the peak every flooded sensor reads
    between 0.7 and 1.08 times ``peak_cm`` (above the 50 cm alarm at the default 80 cm;
    the worst places pass 80 cm, critical); the rest of the city stays at its baseline.
    """

    affected_districts: Collection[str] | None = None
    river_m: float = 1_500.0
    start_s: float = 10.0
    ramp_s: float = 40.0
    peak_cm: float = 80.0
    hold_s: float = 240.0
    recede_s: float = 120.0
    seed: int = 0
    # Citizens' flooding and blocked-drain calls per second per flooded sensor: with the
    # default 2,000-sensor city about 70 (Shanghai) or 170 (generated) sensors flood,
    # about 0.3 or 0.7 calls a second.
    report_rate_per_sensor: float = 0.004
    # Flooding and blocked-drain calls 50 to 250 m from the flooded sensors.
    CALLS: ClassVar[_Calls] = _Calls(
        "water_level", (("flooding", 0.8), ("drain_blocked", 0.2)), (50.0, 250.0)
    )

    def __post_init__(self) -> None:
        if min(self.ramp_s, self.recede_s) <= 0 or self.hold_s < 0 or self.peak_cm <= 0:
            raise ValueError("ramp_s, recede_s and peak_cm must be positive, hold_s >= 0")
        if self.river_m <= 0:
            raise ValueError("river_m must be positive")

    def flooded(self, fleet: Fleet) -> NDArray[np.bool_]:
        """Mask of the water-level sensors the storm floods."""
        mask: NDArray[np.bool_] = fleet.of_type("water_level")
        districts = self.affected_districts
        if fleet.river_m is not None:
            with np.errstate(invalid="ignore"):  # NaN: a site at no known distance
                mask = mask & (fleet.river_m <= self.river_m)
        elif districts is None:
            districts = RIVERSIDE_DISTRICTS
        if districts is not None:
            mask = mask & np.isin(fleet.district_code, list(districts))
        return mask

    @property
    def end_s(self) -> float:
        """When the water is back to its baseline level."""
        return self.timeline.end_s

    def surge(self, t: float) -> float:
        """Storm intensity at ``t``: 0 before and after, 1 at the peak."""
        return self.envelope.intensity(t)

    def _change(self, fleet: Fleet, t: float, out: Values) -> None:
        surge = self.surge(t)
        if surge == 0.0:
            return
        flooded = self.flooded(fleet)
        own, now = _draws(fleet.keys[flooded], self.seed, t)
        flood_level = self.peak_cm * (0.7 + 0.38 * own.uniform(20)) + 1.5 * now.normal(21)
        level = out["water_level"]
        level[flooded] = np.round(
            (1.0 - surge) * level[flooded] + surge * flood_level, _RANGES["water_level"][2]
        )


@dataclass(frozen=True)
class AirPollution(_OverBaseline):
    """A haze episode: PM2.5 rises district after district, holds, then clears.

    The plume reaches ``affected_districts`` one after the other, ``spread_s`` apart
    (default: the north row, west to east, as a north-westerly wind carries it). In
    each, PM2.5 rises over ``ramp_s``, holds for ``hold_s`` and clears over
    ``recede_s``. At the peak every PM2.5 sensor there reads 0.8 to 1.5 times
    ``peak_ugm3`` (136 to 255 at the default 170: past the 115 alarm, most past 150,
    major, the worst past 250, critical); the rest of the city keeps its baseline.
    """

    affected_districts: tuple[str, ...] = ("310107", "310106", "310109")
    start_s: float = 20.0
    spread_s: float = 45.0
    ramp_s: float = 60.0
    hold_s: float = 300.0
    recede_s: float = 120.0
    peak_ugm3: float = 170.0
    seed: int = 0
    report_rate_per_sensor: float = 0.0015  # air-quality calls per second per alarm
    # Air-quality calls 100 to 800 m from the alarming PM2.5 sensors.
    CALLS: ClassVar[_Calls] = _Calls("pm25", (("air_pollution", 1.0),), (100.0, 800.0), "haze")

    def __post_init__(self) -> None:
        if self.spread_s < 0 or self.peak_ugm3 <= 0:
            raise ValueError("spread_s must be >= 0 and peak_ugm3 positive")
        self.envelope(0)  # validates ramp_s, hold_s, recede_s

    def envelope(self, index: int) -> Envelope:
        """The plume over the ``index``-th affected district."""
        start = self.start_s + index * self.spread_s
        return Envelope(start, self.ramp_s, self.hold_s, self.recede_s)

    @property
    def timeline(self) -> Timeline:
        """First district reached, every district at its peak, the last one clear."""
        first = self.envelope(0).timeline
        last = self.envelope(max(0, len(self.affected_districts) - 1)).timeline
        return Timeline(first.start_s, last.peak_s, last.end_s)

    def _change(self, fleet: Fleet, t: float, out: Values) -> None:
        surge = np.zeros(len(fleet))
        for index, district in enumerate(self.affected_districts):
            surge[fleet.district_code == district] = self.envelope(index).intensity(t)
        hit = fleet.of_type("pm25") & (surge > 0)
        if not hit.any():
            return
        own, now = _draws(fleet.keys[hit], self.seed, t)
        plume = self.peak_ugm3 * (0.8 + 0.7 * own.uniform(30)) + 4.0 * now.normal(31)
        pm25, s = out["pm25"], surge[hit]
        pm25[hit] = np.round((1.0 - s) * pm25[hit] + s * plume, _RANGES["pm25"][2])


@dataclass(frozen=True)
class StreetlightOutage(_Enveloped, _OverBaseline):
    """A feeder fault darkens every street light of one district, then power returns.

    The lights of ``district`` go out one section after another over ``ramp_s`` from
    ``start_s``, stay dark for ``hold_s`` (their meters read 0 to 2 W, the controller's
    standby, below the 10 W alarm) and come back over ``recede_s``.
    """

    district: str = "310107"
    start_s: float = 15.0
    ramp_s: float = 30.0
    hold_s: float = 300.0
    recede_s: float = 30.0
    seed: int = 0
    report_rate_per_sensor: float = 0.003  # street-light calls per second per dark light
    # Street-light-out calls 20 to 90 m from the dark lights.
    CALLS: ClassVar[_Calls] = _Calls(
        "streetlight_power", (("streetlight_out", 1.0),), (20.0, 90.0), "outage"
    )

    def __post_init__(self) -> None:
        _ = self.envelope  # validates; its timeline: first light out, all out, all back

    def _change(self, fleet: Fleet, t: float, out: Values) -> None:
        lights = np.flatnonzero(
            fleet.of_type("streetlight_power") & (fleet.district_code == self.district)
        )
        own = _DeviceDraw(fleet.keys[lights], self.seed, tick=None)
        off_at = self.start_s + self.ramp_s * own.uniform(32)
        on_at = self.start_s + self.ramp_s + self.hold_s + self.recede_s * own.uniform(33)
        dark = lights[(off_at <= t) & (t < on_at)]
        if len(dark):
            now = _DeviceDraw(fleet.keys[dark], self.seed, tick=int(np.floor(t)))
            standby = np.clip(0.8 + 0.4 * now.normal(34), 0.0, None)
            out["power"][dark] = np.round(standby, _RANGES["power"][2])


@dataclass(frozen=True)
class ManholeTheft(_OverBaseline):
    """Manhole covers stolen one by one at scattered places, later replaced.

    Each manhole-tilt sensor is a target with probability ``share`` (so the thefts do
    not depend on which other devices are simulated); a target's cover goes at its own
    instant within ``ramp_s`` of ``start_s`` and is back ``hold_s`` later. While it is
    gone the sensor reads 17 to 88 degrees, past the 15 degree alarm (most past 45,
    critical).
    """

    share: float = 0.015
    start_s: float = 15.0
    ramp_s: float = 300.0
    hold_s: float = 300.0
    seed: int = 0
    report_rate_per_sensor: float = 0.02  # calls per second per missing cover
    # Missing- and damaged-cover calls 5 to 40 m from the tripped sensors.
    CALLS: ClassVar[_Calls] = _Calls(
        "manhole_tilt",
        (("manhole_cover_missing", 0.8), ("manhole_cover_damaged", 0.2)),
        (5.0, 40.0),
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0 or self.ramp_s <= 0 or self.hold_s <= 0:
            raise ValueError("share must be in [0, 1], ramp_s and hold_s positive")

    @property
    def timeline(self) -> Timeline:
        """First theft, last theft, last cover replaced."""
        last = self.start_s + self.ramp_s
        return Timeline(self.start_s, last, last + self.hold_s)

    def targets(self, fleet: Fleet) -> NDArray[np.bool_]:
        """Mask of the manholes whose covers are stolen at some point."""
        own = _DeviceDraw(fleet.keys, self.seed, tick=None)
        mask: NDArray[np.bool_] = fleet.of_type("manhole_tilt") & (own.uniform(40) < self.share)
        return mask

    def stolen_at(self, fleet: Fleet) -> NDArray[np.float64]:
        """When each device's cover is stolen (NaN: never)."""
        own = _DeviceDraw(fleet.keys, self.seed, tick=None)
        at = self.start_s + self.ramp_s * own.uniform(41)
        return np.where(self.targets(fleet), at, np.nan)

    def _change(self, fleet: Fleet, t: float, out: Values) -> None:
        at = self.stolen_at(fleet)
        with np.errstate(invalid="ignore"):
            gone = np.flatnonzero((at <= t) & (t < at + self.hold_s))
        if len(gone):
            own, now = _draws(fleet.keys[gone], self.seed, t)
            tilt = 20.0 + 65.0 * own.uniform(42) + 1.0 * now.normal(43)
            low, high, decimals = _RANGES["tilt"]
            out["tilt"][gone] = np.round(np.clip(tilt, low, high), decimals)


_STADIUM = LANDMARKS["shanghai_stadium"]


@dataclass(frozen=True)
class Festival(_Enveloped):
    """A festival: a crowd gathers at a venue no sensor watches, then disperses.

    The sensors read an ordinary day (the city has no noise or crowd sensors). Citizens
    around the venue call about noise, litter, vendors and parking as the crowd builds
    over ``ramp_s`` from ``start_s``, holds for ``hold_s`` and leaves over ``recede_s``.
    The venue is ``venue`` (lon, lat; by default Shanghai Stadium in Xuhui) where
    ``venue_district`` holds it, else a point inside ``venue_district`` (the generated
    city's Xuhui does not reach the stadium).
    """

    venue_district: str = "310104"
    venue: tuple[float, float] | None = (_STADIUM.lon, _STADIUM.lat)
    start_s: float = 30.0
    ramp_s: float = 120.0
    hold_s: float = 360.0
    recede_s: float = 120.0
    seed: int = 0
    report_rate: float = 0.15  # crowd calls per second at the height of the festival
    radius_m: float = 400.0

    def __post_init__(self) -> None:
        if self.radius_m <= 0:
            raise ValueError("radius_m must be positive")
        _ = self.envelope  # validates; its timeline: gates open, full crowd, everyone gone

    @property
    def citizen_reports(self) -> tuple[ReportSource, ...]:
        """Noise, litter, vending, parking and bike calls within ``radius_m`` of the venue."""
        return (
            AtVenue(
                self.venue_district,
                FESTIVAL_CATEGORY_WEIGHTS,
                self.report_rate,
                (0.0, self.radius_m),
                self.envelope,
                theme="festival",
                venue=self.venue,
            ),
        )

    def values(self, fleet: Fleet, t: float) -> Values:
        """Metric values of the fleet at ``t``: an ordinary day's."""
        return Baseline(self.seed).values(fleet, t)


# What residents around a festival call about.
FESTIVAL_CATEGORY_WEIGHTS: Weights = (
    ("noise_social", 0.35),
    ("overflowing_bin", 0.2),
    ("street_vendor", 0.15),
    ("illegal_parking", 0.15),
    ("shared_bikes", 0.1),
    ("street_cleaning", 0.05),
)


ScenarioFactory = Callable[[int], Scenario]

SCENARIOS: dict[str, ScenarioFactory] = {
    "baseline": lambda seed: Baseline(seed=seed),
    "rainstorm": lambda seed: Rainstorm(seed=seed),
    "air_pollution": lambda seed: AirPollution(seed=seed),
    "streetlight_outage": lambda seed: StreetlightOutage(seed=seed),
    "manhole_theft": lambda seed: ManholeTheft(seed=seed),
    "festival": lambda seed: Festival(seed=seed),
}


def make_scenario(name: str, seed: int) -> Scenario:
    """Build a scenario by name (``settings.sim_scenario``; see ``simulations.library``).

    Examples
    --------
    >>> storm = make_scenario("rainstorm", 42)
    >>> type(storm).__name__, storm.surge(0.0), storm.surge(100.0)
    ('Rainstorm', 0.0, 1.0)
    """
    try:
        factory = SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}"
        ) from None
    return factory(seed)


def device_readings(fleet: Fleet, values: Values) -> dict[str, dict[str, float]]:
    """Per-device view of ``values``: device id -> {metric: value} for its metrics.

    Examples
    --------
    >>> device_readings(fleet, Baseline(1).values(fleet, 0.0))["wl-000001"]  # doctest: +SKIP
    {'water_level': 21.3, 'battery': 95.8, 'temperature': 17.1}
    """
    return {
        device: {m: float(values[m][i]) for m in SENSOR_TYPES[stype]}
        for i, (device, stype) in enumerate(
            zip(fleet.device_id.tolist(), fleet.sensor_type.tolist(), strict=True)
        )
    }


# metric -> (physical minimum, maximum, decimals the device reports)
_RANGES: dict[str, tuple[float, float, int]] = {
    "water_level": (0.0, np.inf, 1),
    "pm25": (0.0, np.inf, 1),
    "tilt": (0.0, 90.0, 2),
    "power": (0.0, np.inf, 1),
    "battery": (0.0, 100.0, 1),
    "temperature": (-40.0, 85.0, 1),
}


def _mask_unreported(fleet: Fleet, values: Values) -> Values:
    for metric, value in values.items():
        reported = np.zeros(len(fleet), dtype=bool)
        for stype, metrics in SENSOR_TYPES.items():
            if metric in metrics:
                reported |= fleet.of_type(stype)
        value[~reported] = np.nan
    return values


class _DeviceDraw:
    """Counter-based random numbers: a pure function of (device key, seed, tick, salt).

    A splitmix64 hash instead of a stateful generator, so a value never depends on
    which devices, times or metrics were drawn before it.
    """

    def __init__(self, keys: NDArray[np.uint64], seed: int, tick: int | None) -> None:
        base = _splitmix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        if tick is not None:
            base = _splitmix(base ^ np.uint64(tick & 0xFFFFFFFFFFFFFFFF))
        self._keys = keys ^ base

    def uniform(self, salt: int) -> NDArray[np.float64]:
        """Uniform in [0, 1)."""
        return self._unit(salt, lane=0)

    def normal(self, salt: int) -> NDArray[np.float64]:
        """Standard normal (Box-Muller), clipped to +-3."""
        u1 = 1.0 - self._unit(salt, lane=1)  # in (0, 1], safe for log
        u2 = self._unit(salt, lane=2)
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        return np.clip(z, -3.0, 3.0)

    def _unit(self, salt: int, lane: int) -> NDArray[np.float64]:
        # Lanes keep uniform(s) and the two halves of normal(s) independent of each other.
        stream = _splitmix(np.asarray([salt * 4 + lane], dtype=np.uint64))
        bits = _splitmix(self._keys ^ stream)
        return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _draws(keys: NDArray[np.uint64], seed: int, t: float) -> tuple[_DeviceDraw, _DeviceDraw]:
    """The devices' own draws (fixed for the run) and those of the second ``t`` falls in."""
    return _DeviceDraw(keys, seed, tick=None), _DeviceDraw(keys, seed, tick=int(np.floor(t)))


def _splitmix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    # uint64 arithmetic wraps modulo 2**64, which is what the hash needs.
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
