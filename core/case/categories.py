"""Service-case categories: versioned reference data (``core/case/categories.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from core.case.sla import Clock, WorkCalendar, parse_calendar
from core.errors import DomainError
from core.refdata import load_yaml

CaseClass = Literal["component", "event"]
DATATYPES = ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")


class CategoriesError(ValueError):
    """The categories file is malformed."""


class UnknownCategoryError(DomainError):
    """No category with that code."""


class InvalidAttributeError(DomainError):
    """A service request's attributes do not match the category's definition."""


@dataclass(frozen=True, slots=True)
class Attribute:
    """One Open311 service-definition attribute."""

    code: str
    datatype: str
    required: bool
    description: str
    values: tuple[tuple[str, str], ...] = ()

    def check(self, raw: object) -> str | float | list[str]:
        """The attribute's value normalised, or ``InvalidAttributeError``."""
        if self.datatype == "number":
            try:
                number = float(str(raw))
            except ValueError:
                raise InvalidAttributeError(f"attribute {self.code} must be a number") from None
            if number != number or number in (float("inf"), float("-inf")):
                raise InvalidAttributeError(f"attribute {self.code} must be a finite number")
            return number
        if self.datatype == "datetime":
            return self._instant(raw)
        keys = {k for k, _ in self.values}
        if self.datatype == "multivaluelist":
            items = raw if isinstance(raw, list) else str(raw).split(",")
            chosen = [str(i) for i in items]
            bad = [c for c in chosen if c not in keys]
            if bad:
                raise InvalidAttributeError(
                    f"attribute {self.code}: {bad[0]!r} is not one of {sorted(keys)}"
                )
            return chosen
        text = str(raw)
        if self.datatype == "singlevaluelist" and text not in keys:
            raise InvalidAttributeError(
                f"attribute {self.code}: {text!r} is not one of {sorted(keys)}"
            )
        if len(text) > 1_000:
            raise InvalidAttributeError(f"attribute {self.code} is longer than 1000 characters")
        return text

    def _instant(self, raw: object) -> str:
        """An ISO 8601 / W3C date-time with its offset (as Open311 sends them), in UTC."""
        text = str(raw).strip()
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidAttributeError(
                f"attribute {self.code} must be an ISO 8601 date-time (2026-05-01T08:30:00+08:00)"
            ) from None
        if value.tzinfo is None:  # a bare date, or a time without its offset
            raise InvalidAttributeError(
                f"attribute {self.code} needs a date, a time and a UTC offset (+08:00 or Z)"
            )
        return value.astimezone(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Category:
    code: str
    name_zh: str
    name_en: str
    case_class: CaseClass
    department_type: str
    time_limit_h: float
    clock: Clock
    duplicate_radius_m: float
    attributes: tuple[Attribute, ...] = ()
    # First contact with the citizen (响应) due this long after the clock starts; None:
    # the file's ``response`` rule.
    response_time_h: float | None = None

    def check_attributes(self, given: dict[str, Any]) -> dict[str, Any]:
        """Validate a request's attributes against the definition; return them normalised."""
        known = {a.code: a for a in self.attributes}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise InvalidAttributeError(f"{self.code} has no attribute {unknown[0]!r}")
        out: dict[str, Any] = {}
        for attr in self.attributes:
            raw = given.get(attr.code)
            if raw is None or raw == "" or raw == []:
                if attr.required:
                    raise InvalidAttributeError(f"attribute {attr.code} is required")
                continue
            out[attr.code] = attr.check(raw)
        return out


@dataclass(frozen=True, slots=True)
class Revisit:
    """The revisit (回访): a rating of ``max_rating`` or less reopens the case, due again
    in ``time_limit_h`` on ``clock``."""

    max_rating: int
    time_limit_h: float
    clock: Clock


@dataclass(frozen=True, slots=True)
class Limit:
    """A time limit of ``time_limit_h`` hours counted on ``clock``."""

    time_limit_h: float
    clock: Clock


# Used when a categories file names no ``response``, ``dispute`` or ``arbitration`` rule.
DEFAULT_RESPONSE = Limit(2.0, "calendar")
DEFAULT_DISPUTE = Limit(4.0, "calendar")
DEFAULT_ARBITRATION = Limit(4.0, "working")


@dataclass(frozen=True, slots=True)
class Categories:
    """One version of the categories file: the categories by code, the work calendar, the
    revisit rule, and the limits of the first contact with the citizen (``response``), of
    a unit's dispute of its assignment (``dispute``, from the assignment) and of the
    dispatcher's arbitration (``arbitration``, from the dispute)."""

    version: int
    calendar: WorkCalendar
    revisit: Revisit
    by_code: dict[str, Category]
    response: Limit = DEFAULT_RESPONSE
    dispute: Limit = DEFAULT_DISPUTE
    arbitration: Limit = DEFAULT_ARBITRATION

    def response_limit(self, category: Category) -> Limit:
        """The first-contact limit of ``category``: its own hours on the response clock."""
        if category.response_time_h is None:
            return self.response
        return Limit(category.response_time_h, self.response.clock)

    def get(self, code: str) -> Category:
        try:
            return self.by_code[code]
        except KeyError:
            raise UnknownCategoryError(f"unknown service_code {code!r}") from None

    def __iter__(self) -> Any:
        return iter(self.by_code.values())

    def __len__(self) -> int:
        return len(self.by_code)


def load_categories(path: Path | None = None) -> Categories:
    """Load and validate a categories file (default: the packaged ``core/case/categories.yaml``)."""
    return parse_categories(load_yaml("core.case", "categories.yaml", path))


def _clock(raw: object, where: str) -> Clock:
    if raw not in ("calendar", "working"):
        raise CategoriesError(f"{where}: clock must be 'calendar' or 'working', not {raw!r}")
    return "calendar" if raw == "calendar" else "working"


def _limit(raw: object, where: str, default: Limit) -> Limit:
    if raw is None:
        return default
    if not isinstance(raw, dict):
        raise CategoriesError(f"{where}: must be a mapping with time_limit and clock")
    hours = _hours(raw.get("time_limit"), where)
    return Limit(hours, _clock(raw.get("clock"), where))


def _hours(raw: object, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise CategoriesError(f"{where}: time_limit must be a number of hours, not {raw!r}")
    if not 0 < raw < math.inf:
        raise CategoriesError(f"{where}: time_limit must be positive")
    return float(raw)


def _attribute(raw: dict[str, Any], where: str) -> Attribute:
    datatype = str(raw["datatype"])
    if datatype not in DATATYPES:
        raise CategoriesError(f"{where}: unknown datatype {datatype!r}")
    values = tuple((str(k), str(n)) for k, n in raw.get("values", []))
    if datatype.endswith("valuelist") and not values:
        raise CategoriesError(f"{where}: a {datatype} needs values")
    return Attribute(
        code=str(raw["code"]),
        datatype=datatype,
        required=bool(raw.get("required", False)),
        description=str(raw.get("description", raw["code"])),
        values=values,
    )


def parse_categories(doc: Any) -> Categories:
    try:
        by_code: dict[str, Category] = {}
        for raw in doc["categories"]:
            code = str(raw["code"])
            if code in by_code:
                raise CategoriesError(f"category {code}: defined twice")
            case_class = raw["class"]
            if case_class not in ("component", "event"):
                raise CategoriesError(f"category {code}: class must be component or event")
            limit = float(raw["time_limit"])
            radius = float(raw["duplicate_radius_m"])
            if not (0 < limit < math.inf and 0 <= radius < math.inf):
                raise CategoriesError(f"category {code}: time_limit and radius must be positive")
            by_code[code] = Category(
                code=code,
                name_zh=str(raw["name_zh"]),
                name_en=str(raw["name_en"]),
                case_class=case_class,
                department_type=str(raw["department_type"]),
                time_limit_h=limit,
                clock=_clock(raw["clock"], f"category {code}"),
                duplicate_radius_m=radius,
                attributes=tuple(
                    _attribute(a, f"category {code}") for a in raw.get("attributes", [])
                ),
                response_time_h=(
                    None
                    if raw.get("response_time") is None
                    else _hours(raw["response_time"], f"category {code}: response_time")
                ),
            )
        rv = doc["revisit"]
        return Categories(
            version=int(doc["version"]),
            calendar=parse_calendar(doc["calendar"]),
            revisit=Revisit(
                max_rating=int(rv["max_rating"]),
                time_limit_h=float(rv["time_limit"]),
                clock=_clock(rv["clock"], "revisit"),
            ),
            by_code=by_code,
            response=_limit(doc.get("response"), "response", DEFAULT_RESPONSE),
            dispute=_limit(doc.get("dispute"), "dispute", DEFAULT_DISPUTE),
            arbitration=_limit(doc.get("arbitration"), "arbitration", DEFAULT_ARBITRATION),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CategoriesError):
            raise
        raise CategoriesError(f"malformed categories file: {exc!r}") from exc
