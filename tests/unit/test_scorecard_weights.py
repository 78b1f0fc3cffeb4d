"""Scorecard weights (``projections/scorecard.yaml``) and hotspot windows: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from projections.scorecards import (
    COMPONENTS,
    Weights,
    WeightsError,
    Windows,
    default_weights,
    load_weights,
    parse_weights,
)

GOOD = {
    "closure": 0.25,
    "on_time": 0.3,
    "rework": 0.15,
    "extension": 0.1,
    "satisfaction": 0.2,
}


def doc(**weights: Any) -> dict[str, Any]:
    return {"version": 1, "weights": {**GOOD, **weights}}


def test_packaged_weights() -> None:
    weights = load_weights()
    assert weights == Weights(2, GOOD, {"response": 0.1, "resolution": 0.45, "satisfaction": 0.45})
    assert list(weights.weights) == list(COMPONENTS)
    assert default_weights() == weights


def test_weights_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.yaml"
    path.write_text(
        "version: 3\nweights: {closure: 1, on_time: 0, rework: 0, extension: 0, satisfaction: 0}\n",
        encoding="utf-8",
    )
    assert load_weights(path) == Weights(
        3, {"closure": 1.0, "on_time": 0.0, "rework": 0.0, "extension": 0.0, "satisfaction": 0.0}
    )
    path.write_text("weights: [", encoding="utf-8")
    with pytest.raises(WeightsError, match="not valid YAML"):
        load_weights(path)


def test_weights_may_carry_float_noise() -> None:
    shares = {
        "closure": 0.05,
        "on_time": 0.05,
        "rework": 0.1,
        "extension": 0.7,
        "satisfaction": 0.1,
    }
    assert sum(shares.values()) != 1.0  # 0.9999999999999999
    assert parse_weights({"version": 1, "weights": shares}).weights == shares


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "mapping with version and weights"),
        ([1, 2], "mapping with version and weights"),
        ({"weights": GOOD}, "version must be a positive integer"),
        ({"version": 0, "weights": GOOD}, "version must be a positive integer"),
        ({"version": True, "weights": GOOD}, "version must be a positive integer"),
        ({"version": "1", "weights": GOOD}, "version must be a positive integer"),
        ({"version": 1}, "weights must be a mapping"),
        ({"version": 1, "weights": [0.5, 0.5]}, "weights must be a mapping"),
        (doc(speed=0.0), r"unknown \['speed'\]"),
        (doc(closure=None), "closure must be a number"),
        (doc(on_time="0.3"), "on_time must be a number"),
        (doc(rework=True), "rework must be a number"),
        (doc(extension=-0.1, satisfaction=0.4), "extension must be a finite number >= 0"),
        (doc(extension=float("nan")), "finite number"),
        (doc(extension=float("inf")), "finite number"),
        (doc(closure=0.5), "add up to 1, they add up to 1.25"),
        (doc(closure=0, on_time=0, rework=0, extension=0, satisfaction=0), "add up to 0"),
    ],
)
def test_bad_weights(bad: Any, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        parse_weights(bad)


def test_missing_component() -> None:
    weights = {k: v for k, v in GOOD.items() if k != "rework"}
    with pytest.raises(WeightsError, match=r"missing \['rework'\]"):
        parse_weights({"version": 1, "weights": weights})


@pytest.mark.parametrize(
    ("three_rates", "message"),
    [
        ([0.1, 0.9], "three_rates must be a mapping"),
        ({"response": 0.5, "resolution": 0.5}, r"three_rates must name .* \(missing \['satisf"),
        ({"response": 0.5, "resolution": 0.5, "satisfaction": 0.5}, "three_rates must add up"),
        ({"response": -0.1, "resolution": 0.6, "satisfaction": 0.5}, "finite number >= 0"),
    ],
)
def test_bad_three_rates_weights(three_rates: Any, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        parse_weights({**doc(), "three_rates": three_rates})


def test_three_rates_weights_from_the_file_or_by_default() -> None:
    shares = {"response": 0.2, "resolution": 0.4, "satisfaction": 0.4}
    assert parse_weights({**doc(), "three_rates": shares}).three_rates == shares
    assert parse_weights(doc()).three_rates == {
        "response": 0.1,
        "resolution": 0.45,
        "satisfaction": 0.45,
    }


NOW = datetime(2025, 6, 1, 8, tzinfo=UTC)


def test_hotspot_windows() -> None:
    w = Windows.of(24, NOW, 28)
    assert (w.start, w.end, w.hours, w.count) == (NOW - timedelta(days=1), NOW, 24, 28)
    assert w.history_start == NOW - timedelta(days=29)
    # Only whole windows: 7 days hold two 72-hour windows (the last 24 hours are left out).
    w = Windows.of(72, NOW, 7)
    assert w.count == 2
    assert w.history_start == NOW - timedelta(hours=72 * 3)
    assert Windows.of(168, NOW, 7).count == 1


@pytest.mark.parametrize(
    ("hours", "now", "history_days", "message"),
    [
        (48, NOW, 1, "no whole window of 48 hours"),
        (24, NOW, 0, "no whole window"),
        (0, NOW, 28, "hours must be at least 1"),
        (24, NOW.replace(tzinfo=None), 28, "timezone-aware"),
    ],
)
def test_bad_hotspot_windows(hours: int, now: datetime, history_days: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Windows.of(hours, now, history_days)
