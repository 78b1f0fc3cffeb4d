"""Scenarios: what every simulated device reads at time ``t`` (seconds since start).

A scenario is a pure function of (seed, device id, t): the same device reads the same
value at the same time whatever else is in the fleet, and whichever process asks. So a
load run split over several simulator processes produces exactly what one would, and
tests can ask for any instant directly.

Values come back vectorised, one float array per metric aligned with the fleet, NaN
where a device does not report that metric (see ``core.telemetry.SENSOR_TYPES``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from core.telemetry import SENSOR_TYPES
from simulations.city import RIVERSIDE_DISTRICTS

Values = dict[str, NDArray[np.float64]]


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
    # A stable 64-bit key per device: the seed of its deterministic behaviour.
    keys: NDArray[np.uint64] = field(init=False)

    def __post_init__(self) -> None:
        lengths = {len(a) for a in (self.device_id, self.sensor_type, self.gateway_id)}
        if len(lengths | {len(self.district_code)}) != 1:
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
        """Build from a sensors layer (``device_id``, ``sensor_type``, ``gateway_id``...)."""
        return cls(
            device_id=sensors.device_id.to_numpy(dtype=object),
            sensor_type=sensors.sensor_type.to_numpy(dtype=object),
            gateway_id=sensors.gateway_id.to_numpy(dtype=object),
            district_code=sensors.district_code.to_numpy(dtype=object),
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
        own = _DeviceDraw(fleet.keys, self.seed, tick=None)
        now = _DeviceDraw(fleet.keys, self.seed, tick=int(np.floor(t)))
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
class Rainstorm:
    """A rainstorm floods streets in some districts, then the water recedes.

    Water levels in ``affected_districts`` rise linearly from ``start_s`` over
    ``ramp_s``, hold for ``hold_s`` and fall back over ``recede_s``. At the peak every
    water-level sensor there reads between 0.7 and 1.08 times ``peak_cm`` (above the
    50 cm alarm at the default 80 cm; the worst places pass 80 cm, critical); the rest
    of the city stays at its baseline.
    """

    affected_districts: Collection[str] = RIVERSIDE_DISTRICTS
    start_s: float = 10.0
    ramp_s: float = 40.0
    peak_cm: float = 80.0
    hold_s: float = 240.0
    recede_s: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.ramp_s, self.recede_s) <= 0 or self.hold_s < 0 or self.peak_cm <= 0:
            raise ValueError("ramp_s, recede_s and peak_cm must be positive, hold_s >= 0")

    @property
    def end_s(self) -> float:
        """When the water is back to its baseline level."""
        return self.start_s + self.ramp_s + self.hold_s + self.recede_s

    def surge(self, t: float) -> float:
        """Storm intensity at ``t``: 0 before and after, 1 at the peak."""
        peak_start = self.start_s + self.ramp_s
        peak_end = peak_start + self.hold_s
        return float(np.interp(t, [self.start_s, peak_start, peak_end, self.end_s], [0, 1, 1, 0]))

    def values(self, fleet: Fleet, t: float) -> Values:
        """Metric values of the fleet at ``t``; see :class:`Scenario`."""
        out = Baseline(self.seed).values(fleet, t)
        surge = self.surge(t)
        if surge == 0.0:
            return out
        flooded = fleet.of_type("water_level") & np.isin(
            fleet.district_code, list(self.affected_districts)
        )
        own = _DeviceDraw(fleet.keys[flooded], self.seed, tick=None)
        now = _DeviceDraw(fleet.keys[flooded], self.seed, tick=int(np.floor(t)))
        flood_level = self.peak_cm * (0.7 + 0.38 * own.uniform(20)) + 1.5 * now.normal(21)
        level = out["water_level"]
        level[flooded] = np.round(
            (1.0 - surge) * level[flooded] + surge * flood_level, _RANGES["water_level"][2]
        )
        return out


ScenarioFactory = Callable[[int], Scenario]

SCENARIOS: dict[str, ScenarioFactory] = {
    "baseline": lambda seed: Baseline(seed=seed),
    "rainstorm": lambda seed: Rainstorm(seed=seed),
}


def make_scenario(name: str, seed: int) -> Scenario:
    """Build a scenario by name (``settings.sim_scenario``).

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


def _splitmix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    # uint64 arithmetic wraps modulo 2**64, which is what the hash needs.
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
