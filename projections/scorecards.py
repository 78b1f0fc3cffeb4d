"""Scorecards (考核) and hotspots over the ``service_cases`` and ``map_incidents`` read models.

Work items of a period are the service cases submitted in ``[start, end)`` that were not
rejected (cancelled ones count: the work was taken on) plus the incidents opened in it.
Per unit (grid cell, district or department; items without one are not in that level):

- closure rate 结案率: closed items / items. A case is closed when its status is
  ``resolved`` or ``closed``, an incident when its status is ``closed``;
- on-time closure rate 按期结案率: closed items done by their current ``due_at`` (moved by
  approved extensions) / closed items with a ``due_at``. Done means ``resolved_at`` for
  a case; for an incident ``resolved_at`` (the department's resolution, before 核查
  verification), or ``closed_at`` when it was closed without one;
- rework rate 返工率: closed items reworked (cases reopened after a bad rating,
  ``revisits > 0``; incidents re-dispatched after a failed verification, ``reworks > 0``)
  / closed items;
- extension rate 延期率: cases with an approved extension / cases;
- hours to close, mean and median over closed items: submitted -> ``resolved_at`` for a
  case, opened -> ``closed_at`` for an incident;
- satisfaction over rated cases: mean rating, and the share of bad ratings (<= 2);
- a composite score 0-100 weighted by ``projections/scorecard.yaml`` (read it for the
  components); a component without data is left out and the weights renormalised;
- the three rates of 接诉即办 (三率), over cases only:
  - response rate 响应率: cases whose first contact with the citizen (``first_contact_at``)
    came by their ``respond_by`` / cases with a ``respond_by`` that were contacted or whose
    ``respond_by`` has passed (as of now);
  - resolution rate 解决率: cases the citizen said were solved / rated cases the citizen
    answered that question for (``solved`` not NULL);
  - satisfaction rate 满意率: ratings of 4 or 5 / rated cases;
  - the 接诉即办 index 0-100: the three weighted by the file's ``three_rates``, a rate
    without data left out and the weights renormalised.

Time with a unit that was wrongly assigned (an upheld dispute) is not counted against
anyone: the case is counted for the unit it moved to, whose deadline and hours to close
run from the reassignment (``responsible_since``).

A rate whose denominator is 0 is ``None``. Rates are rounded to 4 decimals, hours to 2,
the score to 2. Everything is computed in one SQL statement per call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from psycopg import sql
from psycopg_pool import ConnectionPool

from core.refdata import load_yaml
from projections.queries import BBox, dict_rows

Level = Literal["grid", "district", "department"]
LEVEL_COLUMNS: dict[str, str] = {
    "grid": "grid_code",
    "district": "district_code",
    "department": "department_code",
}
# The composite's components as SQL over the per-unit rates, each a share in [0, 1] where
# higher is better; NULL when the unit has no data for it.
COMPONENTS: dict[str, str] = {
    "closure": "closure_rate",
    "on_time": "on_time_rate",
    "rework": "1 - rework_rate",
    "extension": "1 - extension_rate",
    "satisfaction": "(mean_rating - 1) / 4",
}
# The three rates (三率) as SQL over the per-unit rates, and the index over them.
THREE_RATES: dict[str, str] = {
    "response": "response_rate",
    "resolution": "resolution_rate",
    "satisfaction": "satisfaction_rate",
}
DEFAULT_THREE_RATES: Mapping[str, float] = {
    "response": 0.1,
    "resolution": 0.45,
    "satisfaction": 0.45,
}
# Hotspots: the smallest spread a cell's history is given. Case counts are at least as
# noisy as a Poisson count (sqrt(mean)); 1.0 keeps a cell with an empty or perfectly
# flat history from scoring infinitely high on a handful of cases.
MIN_SPREAD = 1.0


class WeightsError(ValueError):
    """The scorecard weights file is malformed."""


@dataclass(frozen=True, slots=True)
class Weights:
    """Weights of the composite score, one per component of ``COMPONENTS``."""

    version: int
    weights: Mapping[str, float]
    three_rates: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THREE_RATES))


def parse_weights(doc: Any) -> Weights:
    """Validate a weights document: every component once, each >= 0, adding up to 1."""
    if not isinstance(doc, dict):
        raise WeightsError("the weights file must be a mapping with version and weights")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WeightsError(f"version must be a positive integer, not {version!r}")
    raw = doc.get("weights")
    if not isinstance(raw, dict):
        raise WeightsError("weights must be a mapping of component to weight")
    weights = _shares(raw, COMPONENTS, "weights")
    three = doc.get("three_rates")
    if three is None:
        return Weights(version, weights)
    if not isinstance(three, dict):
        raise WeightsError("three_rates must be a mapping of rate to weight")
    return Weights(version, weights, _shares(three, THREE_RATES, "three_rates"))


def _shares(raw: dict[str, Any], names: Mapping[str, str], what: str) -> dict[str, float]:
    """Weights naming each of ``names`` once, each >= 0, adding up to 1."""
    missing = sorted(set(names) - set(raw))
    unknown = sorted(set(raw) - set(names))
    if missing or unknown:
        raise WeightsError(
            f"{what} must name each of {sorted(names)} once (missing {missing}, unknown {unknown})"
        )
    weights: dict[str, float] = {}
    for name in names:
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WeightsError(f"weight of {name} must be a number, not {value!r}")
        if not math.isfinite(value) or value < 0:
            raise WeightsError(f"weight of {name} must be a finite number >= 0, not {value}")
        weights[name] = float(value)
    total = sum(weights.values())
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise WeightsError(f"{what} must add up to 1, they add up to {total:g}")
    return weights


def load_weights(path: Path | None = None) -> Weights:
    """Load and validate a weights file (default: the packaged ``scorecard.yaml``)."""
    doc = load_yaml(
        "projections",
        "scorecard.yaml",
        path,
        invalid=(WeightsError, "the weights file is not valid YAML"),
    )
    return parse_weights(doc)


@functools.cache
def default_weights() -> Weights:
    """The packaged weights, read once per process."""
    return load_weights()


@dataclass(frozen=True, slots=True)
class Windows:
    """The hotspot window ``[start, end)`` and the ``count`` windows of history before it."""

    start: datetime
    end: datetime
    hours: int
    count: int
    history_start: datetime

    @classmethod
    def of(cls, hours: int, now: datetime, history_days: int) -> Windows:
        """The last ``hours`` before ``now``, and as many whole windows as fit in the history."""
        if hours < 1:
            raise ValueError("hours must be at least 1")
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        count = history_days * 24 // hours
        if count < 1:
            raise ValueError(
                f"history_days={history_days} holds no whole window of {hours} hours:"
                " the history must be at least as long as the window"
            )
        start = now - timedelta(hours=hours)
        return cls(start, now, hours, count, start - timedelta(hours=hours * count))


def _filters(
    district_code: str | None, department_code: str | None, bbox: BBox | None
) -> sql.Composable:
    """``AND ...`` conditions on the columns both read models share (named parameters)."""
    parts: list[sql.Composable] = []
    if district_code is not None:
        parts.append(sql.SQL("district_code = %(district_code)s"))
    if department_code is not None:
        parts.append(sql.SQL("department_code = %(department_code)s"))
    if bbox is not None:
        parts.append(
            sql.SQL("lon BETWEEN %(west)s AND %(east)s AND lat BETWEEN %(south)s AND %(north)s")
        )
    return sql.Composed([sql.SQL(" AND ") + p for p in parts])


def _filter_params(
    district_code: str | None, department_code: str | None, bbox: BBox | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"district_code": district_code, "department_code": department_code}
    if bbox is not None:
        params.update(west=bbox.west, south=bbox.south, east=bbox.east, north=bbox.north)
    return params


def weighted_score(weights: Mapping[str, float], components: Mapping[str, str]) -> sql.Composable:
    """100 x the weighted mean of the components present (weights renormalised)."""
    terms = [(sql.SQL(expr), sql.Literal(weights[name])) for name, expr in components.items()]
    numerator = sql.SQL(" + ").join(
        sql.SQL("coalesce({} * ({}), 0)").format(w, expr) for expr, w in terms
    )
    denominator = sql.SQL(" + ").join(
        sql.SQL("CASE WHEN ({}) IS NULL THEN 0 ELSE {} END").format(expr, w) for expr, w in terms
    )
    return sql.SQL("100 * ({}) / nullif({}, 0)").format(numerator, denominator)


# Each item is narrowed to what the figures need before the (sorted) grouping: a
# year of a city's work is a few hundred thousand rows. date_part, not extract: extract
# returns numeric since PostgreSQL 14, several times slower to compute on.
SCORECARDS = """
WITH items AS (
    SELECT {unit} AS unit_code, district_code, true AS is_case,
           status IN ('resolved', 'closed') AS closed,
           date_part('epoch', resolved_at - coalesce(responsible_since, submitted_at)) / 3600
               AS hours,
           resolved_at <= due_at AS on_time,
           revisits > 0 AS reworked, extensions > 0 AS extended, rating,
           -- NULL: no first contact due yet (not assigned, or not yet due and not made)
           CASE WHEN first_contact_at IS NOT NULL OR respond_by <= now()
                THEN coalesce(first_contact_at <= respond_by, false) END AS responded,
           solved
    FROM service_cases
    WHERE submitted_at >= %(start)s AND submitted_at < %(end)s AND status <> 'rejected'
          AND {unit} IS NOT NULL{filters}
    UNION ALL
    SELECT {unit}, district_code, false,
           status = 'closed',
           date_part('epoch', closed_at - opened_at) / 3600,
           coalesce(resolved_at, closed_at) <= due_at,
           reworks > 0, NULL, NULL, NULL::boolean, NULL::boolean
    FROM map_incidents
    WHERE opened_at >= %(start)s AND opened_at < %(end)s
          AND {unit} IS NOT NULL{filters}
),
units AS (
    SELECT unit_code,
           min(district_code) AS district_code,
           count(*) FILTER (WHERE is_case) AS cases,
           count(*) FILTER (WHERE NOT is_case) AS incidents,
           count(*) AS volume,
           count(*) FILTER (WHERE closed) AS closed,
           -- on_time is NULL without a due time or a done time
           count(on_time) FILTER (WHERE closed) AS closed_with_due,
           count(*) FILTER (WHERE closed AND on_time) AS closed_on_time,
           count(*) FILTER (WHERE closed AND reworked) AS reworked,
           count(*) FILTER (WHERE extended) AS extended,
           avg(hours) FILTER (WHERE closed) AS mean_hours,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY hours) FILTER (WHERE closed)
               AS median_hours,
           count(rating) AS rated,
           avg(rating)::float8 AS mean_rating,
           count(*) FILTER (WHERE rating <= 2) AS bad_ratings,
           count(responded) AS response_due,
           count(*) FILTER (WHERE responded) AS responded_on_time,
           count(solved) AS solved_asked,
           count(*) FILTER (WHERE solved) AS solved,
           count(*) FILTER (WHERE rating >= 4) AS satisfied
    FROM items
    GROUP BY unit_code
),
rates AS (
    SELECT *,
           closed::float8 / nullif(volume, 0) AS closure_rate,
           closed_on_time::float8 / nullif(closed_with_due, 0) AS on_time_rate,
           reworked::float8 / nullif(closed, 0) AS rework_rate,
           extended::float8 / nullif(cases, 0) AS extension_rate,
           bad_ratings::float8 / nullif(rated, 0) AS bad_rating_share,
           responded_on_time::float8 / nullif(response_due, 0) AS response_rate,
           solved::float8 / nullif(solved_asked, 0) AS resolution_rate,
           satisfied::float8 / nullif(rated, 0) AS satisfaction_rate
    FROM units
),
scored AS (
    SELECT *, {score} AS score, {three_rates} AS three_rates_index FROM rates
)
SELECT unit_code, {district}
       cases, incidents, volume, closed,
       round(closure_rate::numeric, 4)::float8 AS closure_rate,
       closed_with_due, closed_on_time,
       round(on_time_rate::numeric, 4)::float8 AS on_time_rate,
       reworked, round(rework_rate::numeric, 4)::float8 AS rework_rate,
       extended, round(extension_rate::numeric, 4)::float8 AS extension_rate,
       round(mean_hours::numeric, 2)::float8 AS mean_hours_to_close,
       round(median_hours::numeric, 2)::float8 AS median_hours_to_close,
       rated, round(mean_rating::numeric, 4)::float8 AS mean_rating,
       bad_ratings, round(bad_rating_share::numeric, 4)::float8 AS bad_rating_share,
       round(score::numeric, 2)::float8 AS score,
       response_due, responded_on_time,
       round(response_rate::numeric, 4)::float8 AS response_rate,
       solved_asked, solved, round(resolution_rate::numeric, 4)::float8 AS resolution_rate,
       satisfied, round(satisfaction_rate::numeric, 4)::float8 AS satisfaction_rate,
       round(three_rates_index::numeric, 2)::float8 AS three_rates_index
FROM scored
-- By the score as shown: equal scores then sort by code, whatever the float noise.
ORDER BY score DESC NULLS LAST, unit_code
"""

# Counts per cell and window in one pass; the history's mean and population standard
# deviation come from the sum and sum of squares over the fixed number of windows, so
# windows without a case count as zeros without being generated. Window 0 is
# [now - hours, now), window k is [now - (k + 1) hours, now - k hours).
HOTSPOTS = """
WITH per_window AS (
    SELECT grid_code, min(district_code) AS district_code,
           ceil((extract(epoch FROM %(now)s::timestamptz) - extract(epoch FROM submitted_at))
                / %(window_s)s)::int - 1 AS w,
           count(*) AS n
    FROM service_cases
    WHERE submitted_at >= %(history_start)s AND submitted_at < %(now)s
          AND grid_code IS NOT NULL{filters}
    GROUP BY grid_code, w
),
cells AS (
    SELECT grid_code, min(district_code) AS district_code,
           coalesce(sum(n) FILTER (WHERE w = 0), 0)::int AS count,
           coalesce(sum(n) FILTER (WHERE w > 0), 0)::float8 / %(windows)s AS mean,
           coalesce(sum(n * n) FILTER (WHERE w > 0), 0)::float8 / %(windows)s AS mean_sq
    FROM per_window
    GROUP BY grid_code
    HAVING coalesce(sum(n) FILTER (WHERE w = 0), 0) >= %(min_cases)s
),
spread AS (
    SELECT *, sqrt(greatest(mean_sq - mean * mean, 0)) AS stddev FROM cells
),
scored AS (
    SELECT *, (count - mean) / greatest(stddev, sqrt(mean), %(min_spread)s) AS score
    FROM spread
)
SELECT grid_code, district_code, count,
       round(mean::numeric, 4)::float8 AS mean,
       round(stddev::numeric, 4)::float8 AS stddev,
       round(score::numeric, 4)::float8 AS score
FROM scored
WHERE score >= %(z)s
ORDER BY score DESC, grid_code
"""


class Scorecards:
    """Scorecards per grid cell, district or department, and case hotspots per grid cell."""

    def __init__(self, pool: ConnectionPool, weights: Weights | None = None) -> None:
        self.pool = pool
        self.weights = weights or default_weights()

    def scorecards(
        self,
        level: Level,
        start: datetime,
        end: datetime,
        district_code: str | None = None,
        bbox: BBox | None = None,
        department_code: str | None = None,
    ) -> list[dict[str, Any]]:
        """One row per unit with work in ``[start, end)``, best composite score first."""
        if level not in LEVEL_COLUMNS:
            raise ValueError(f"level must be one of {sorted(LEVEL_COLUMNS)}, not {level!r}")
        if end <= start:
            raise ValueError("end must be after start")
        query = sql.SQL(SCORECARDS).format(
            unit=sql.Identifier(LEVEL_COLUMNS[level]),
            filters=_filters(district_code, department_code, bbox),
            score=weighted_score(self.weights.weights, COMPONENTS),
            three_rates=weighted_score(self.weights.three_rates, THREE_RATES),
            # A grid cell lies in one district: say which.
            district=sql.SQL("district_code," if level == "grid" else ""),
        )
        params = {
            "start": start,
            "end": end,
            **_filter_params(district_code, department_code, bbox),
        }
        return dict_rows(self.pool, query, params)

    def hotspots(
        self,
        hours: int = 24,
        now: datetime | None = None,
        history_days: int = 28,
        district_code: str | None = None,
        bbox: BBox | None = None,
        min_cases: int = 3,
        z: float = 3.0,
    ) -> list[dict[str, Any]]:
        """Grid cells whose case count in the last ``hours`` is anomalous for them.

        A cell is a hotspot when its count is at least ``min_cases`` and
        ``(count - mean) / max(stddev, sqrt(mean), 1)`` is at least ``z``, the mean and
        population standard deviation taken over the ``history_days * 24 // hours``
        whole windows before the current one. Every case with a grid cell counts,
        rejected duplicates included: they are reports of something happening there.
        """
        windows = Windows.of(hours, now or datetime.now(UTC), history_days)
        query = sql.SQL(HOTSPOTS).format(filters=_filters(district_code, None, bbox))
        params = {
            "now": windows.end,
            "history_start": windows.history_start,
            "window_s": hours * 3600,
            "windows": windows.count,
            "min_cases": min_cases,
            "min_spread": MIN_SPREAD,
            "z": z,
            **_filter_params(district_code, None, bbox),
        }
        return dict_rows(self.pool, query, params)
