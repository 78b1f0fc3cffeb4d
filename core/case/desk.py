"""The service network (一网通办): commands on service cases, intake and dispatch policy.

``ServiceDesk`` is the application service over the city log (``CityApp``). A command
(``core.case.commands``) runs through ``execute``: load the case, run one or more
transitions, save them together. A submission is saved, or added to a worker's
``ProcessingEvent`` so that it commits with its input position. The places the desk
needs (grid, jurisdictions, nearby open cases) come through ports.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from inspect import Parameter, Signature
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.application import LRUCache, ProcessingEvent
from eventsourcing.persistence import IntegrityError

from core.app import CityApp
from core.case import CHANNELS, ServiceCase, case_id
from core.case.catalogue import Catalogue
from core.case.categories import Categories, Category, Limit
from core.case.commands import (
    Accept,
    AddCoHandler,
    AnswerCoHandling,
    ApproveExtension,
    Assign,
    Cancel,
    CaseCommand,
    ContactCitizen,
    Dispute,
    Rate,
    RefuseExtension,
    Reject,
    RejectDispute,
    RequestExtension,
    Resolve,
    ReturnCase,
    Start,
    UpholdDispute,
    WaiveCoHandling,
)
from core.case.sla import Deadline, deadline
from core.commands import CommandContext
from core.errors import ConcurrentUpdateError, DomainError, IllegalTransitionError, NotFoundError
from core.personal import Contact, InvalidContactError, PersonalData, screen_text

SYSTEM_INTAKE = "system:intake-policy"
SYSTEM_SLA = "system:sla-clock"
MAX_DESCRIPTION = 4_000

# The caller's authorization, run on the case the command is about to change.
Check = Callable[[ServiceCase], None]
# What a prepared command does to the loaded case.
Apply = Callable[[ServiceCase], None]


class DuplicateSubmissionError(DomainError):
    """This external case (or this exact request) was already submitted."""

    def __init__(self, case_uuid: UUID) -> None:
        super().__init__(f"already submitted as case {case_uuid}")
        self.case_id = case_uuid


class InvalidLocationError(DomainError):
    """Coordinates outside WGS84 lon/lat, or no location at all."""


class InvalidTextError(DomainError):
    """Text the stores cannot hold (a NUL character)."""


@dataclass(frozen=True, slots=True)
class Place:
    grid_code: str | None
    district_code: str | None


@dataclass(frozen=True, slots=True)
class Department:
    code: str
    department_type: str
    name: str
    name_zh: str


class Locator(Protocol):
    """Where a point is on the city's reference layers (implemented in gis/)."""

    def place(self, lon: float, lat: float) -> Place | None:
        """Grid cell and district of a point; None outside the city."""
        ...

    def department_for(self, lon: float, lat: float, department_type: str) -> str | None:
        """The department of that type whose jurisdiction polygon contains the point."""
        ...

    def departments(self) -> dict[str, Department]: ...


class NearbyCases(Protocol):
    """Open cases near a point (a read model): duplicate suggestions."""

    def open_cases_near(
        self, category: str, lon: float, lat: float, radius_m: float, limit: int
    ) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class SubmitCase:
    """A new service request from any channel."""

    channel: str
    external_id: str
    category: str
    description: str
    lon: float | None = None
    lat: float | None = None
    address: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    contact: Contact = field(default_factory=Contact)
    citizen_id: UUID | None = None  # set when the citizen is logged in
    received_at: datetime | None = None  # when the source took it; starts the clock


def nul_field(value: Any, where: str = "") -> str | None:
    """The first field whose text holds a NUL (U+0000), which PostgreSQL text refuses.

    JSON allows ``"\\u0000"``; let through, such a case would stop the read model's
    projector for good (every later event waits behind it).
    """
    if isinstance(value, str):
        return (where or "message") if "\x00" in value else None
    pairs: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list | tuple):
        pairs = list(enumerate(value))
    for key, item in pairs:
        found = nul_field(key, where) or nul_field(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def check_lonlat(lon: float | None, lat: float | None) -> None:
    if lon is None and lat is None:
        return
    if lon is None or lat is None:
        raise InvalidLocationError("give both lat and long, or neither")
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise InvalidLocationError("lat/long must be finite numbers")
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise InvalidLocationError(f"lat/long out of range: lat={lat}, long={lon}")


# Values a copy of an aggregate can share with the original: nothing changes them.
_IMMUTABLE: frozenset[type] = frozenset(
    {str, int, float, bool, type(None), bytes, datetime, timedelta, UUID}
)


def copy_of(case: ServiceCase) -> ServiceCase:
    """A copy whose changes leave ``case`` as it is: what ``copy.deepcopy`` gives, in a
    fifth of its time (the strings, numbers and times are shared, not copied; the
    dicts and lists, of JSON's shapes, are copied without deepcopy's memo)."""
    state = case.__dict__.copy()
    for name, value in state.items():
        if type(value) not in _IMMUTABLE:
            state[name] = _copied(value)
    twin = object.__new__(type(case))
    twin.__dict__ = state
    return twin


def _copied(value: Any) -> Any:
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is dict:
        return {k: _copied(v) for k, v in value.items()}
    if kind is list:
        return [_copied(v) for v in value]
    return deepcopy(value)


def _extension_decision(approve: bool, reason: str) -> CaseCommand:
    """Grant or refuse the pending extension request."""
    return ApproveExtension(reason) if approve else RefuseExtension(reason)


def _by_name(build: Callable[..., CaseCommand], params: str) -> Callable[..., ServiceCase]:
    """A desk method that runs the command ``build`` makes through ``ServiceDesk.execute``.

    It takes the case id, then ``params`` in this order, by position or by name (``check``
    and those after it default to None): ``actor`` and ``correlation_id`` make the
    context, ``check`` is the caller's authorization, the others build the command.
    """
    names = ("case_uuid", *params.split())
    optional = names.index("check")
    signature = Signature(
        [
            Parameter(
                name,
                Parameter.POSITIONAL_OR_KEYWORD,
                default=None if i >= optional else Parameter.empty,
            )
            for i, name in enumerate(names)
        ]
    )

    def method(desk: ServiceDesk, *args: Any, **kwargs: Any) -> ServiceCase:
        given = signature.bind(*args, **kwargs)
        given.apply_defaults()
        fields = dict(given.arguments)
        case_uuid = fields.pop("case_uuid")
        ctx = CommandContext(fields.pop("actor"), fields.pop("correlation_id"))
        check = fields.pop("check")
        return desk.execute(case_uuid, build(**fields), ctx, check)

    method.__doc__ = build.__doc__
    return method


class ServiceDesk:
    def __init__(
        self,
        app: CityApp,
        categories: Categories,
        locator: Locator,
        personal: PersonalData,
        nearby: NearbyCases | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        auto_accept: bool = True,
        correlated: frozenset[str] = frozenset(),
        catalogue: Catalogue | None = None,
        recent: int = 0,
    ) -> None:
        """``correlated``: categories the urban brain merges (one incident per problem);
        intake registers their nearby repeats instead of holding them for a dispatcher.
        ``catalogue``: the responsibility catalogue dispatch reads first. ``recent``: how
        many cases, as this desk's commands last left them, it keeps for the next command
        (``execute``); 0 keeps none."""
        self.app = app
        self.categories = categories
        self.locator = locator
        self.personal = personal
        self.nearby = nearby
        self.clock = clock
        self.auto_accept = auto_accept
        self.correlated = correlated
        self.catalogue = catalogue
        self.recent: LRUCache[UUID, ServiceCase] | None = LRUCache(recent) if recent else None

    # -- plumbing -------------------------------------------------------------------------

    def get(self, case_uuid: UUID) -> ServiceCase:
        return self.app.get_typed(case_uuid, ServiceCase, "case")

    def _save(self, case: ServiceCase) -> None:
        self.app.save_unless_changed(case, what=f"case {case.id}")

    def execute(
        self,
        case_uuid: UUID,
        command: CaseCommand,
        ctx: CommandContext,
        check: Check | None = None,
    ) -> ServiceCase:
        """Run ``command`` on the case: load it, let ``check`` (the caller's authorization)
        see the state the command runs on, apply the command, save. A refused command
        raises before anything is saved.

        A case this desk kept (``recent``) is not loaded: the command runs on it as it
        was left. Someone else may have changed it since; then either the save finds its
        version taken (nothing of it is recorded) or the command or ``check`` refuses the
        old state, and the command runs again on the stored case, whose outcome is the
        answer. A save that fails otherwise is not run again: it may have been recorded.
        """
        apply = self._prepare(case_uuid, command, ctx)
        kept = self._take_kept(case_uuid)
        if kept is not None and self._ran_on_kept(kept, apply, check):
            return kept
        case = self.get(case_uuid)
        if check is not None:
            check(case)
        apply(case)
        self._save(case)
        self._keep(case)
        return case

    def _ran_on_kept(self, kept: ServiceCase, apply: Apply, check: Check | None) -> bool:
        """Run the command on a kept case and save it; False when the stored case must
        decide instead (the old state refused, or its version taken: nothing recorded)."""
        try:
            if check is not None:
                check(kept)
            apply(kept)
        except Exception:  # refused on the kept state: the stored one decides
            return False
        try:
            self._save(kept)
        except ConcurrentUpdateError:
            return False
        self._keep(kept)
        return True

    def _take_kept(self, case_uuid: UUID) -> ServiceCase | None:
        """The kept case, now this caller's alone (a concurrent command loads its own)."""
        if self.recent is None:
            return None
        try:
            return self.recent.get(case_uuid, evict=True)
        except KeyError:
            return None

    def _keep(self, case: ServiceCase) -> None:
        """Keep a copy of a case just saved: the caller goes on reading its own."""
        if self.recent is not None:
            self.recent.put(case.id, copy_of(case))

    def _prepare(self, case_uuid: UUID, command: CaseCommand, ctx: CommandContext) -> Apply:
        """What ``command`` does to the case, after the checks that need no case loaded."""
        stamp = ctx.stamp()
        match command:
            case Accept():
                departments = self._known_department(command.department_code)
                return lambda case: self._accept(case, command, departments, ctx)
            case Reject():
                if command.duplicate_of is not None:
                    if command.duplicate_of == case_uuid:
                        raise IllegalTransitionError("a case cannot duplicate itself")
                    self.get(command.duplicate_of)  # must exist
                return lambda case: self._reject(case, command, ctx)
            case Assign():
                departments = self._known_department(command.department_code)
                return lambda case: self._manual(
                    case, command.department_code, departments, command.reason, ctx
                )
            case ApproveExtension():
                return lambda case: self._approve_extension(case, command.reason, ctx)
            case RefuseExtension():
                return lambda case: case.refuse_extension(reason=command.reason, **stamp)
            case Start():
                return lambda case: case.start(reason=command.reason, **stamp)
            case Resolve():
                return lambda case: case.resolve(
                    reply=command.reply, reason=command.reason, **stamp
                )
            case ReturnCase():
                return lambda case: case.return_to_dispatch(reason=command.reason, **stamp)
            case RequestExtension():
                return lambda case: case.request_extension(
                    hours=command.hours, reason=command.reason, **stamp
                )
            case Rate():
                return lambda case: self._rate(case, command, ctx)
            case Cancel():
                return lambda case: case.cancel(reason=command.reason, **stamp)
            case AddCoHandler():
                self._known_department(command.department_code)
                return lambda case: case.add_co_handler(
                    department_code=command.department_code,
                    part=command.part,
                    reason=command.reason or "co-handling asked by a dispatcher",
                    **stamp,
                )
            case AnswerCoHandling():
                return lambda case: case.answer_co_handling(
                    department_code=command.department_code, feedback=command.feedback, **stamp
                )
            case WaiveCoHandling():
                return lambda case: case.waive_co_handling(
                    departments=case.pending_co_handlers, reason=command.reason, **stamp
                )
            case Dispute():
                if command.proposed_department_code is not None:
                    self._known_department(command.proposed_department_code)
                return lambda case: self._dispute(case, command, ctx)
            case UpholdDispute():
                self._known_department(command.department_code)
                return lambda case: self._uphold(case, command, ctx)
            case RejectDispute():
                return lambda case: case.reject_dispute(reason=command.reason, **stamp)
            case ContactCitizen():
                return lambda case: case.contact_citizen(note=command.note, **stamp)
        raise TypeError(f"not a case command: {command!r}")

    # -- intake ---------------------------------------------------------------------------

    def validate(self, cmd: SubmitCase) -> tuple[Category, dict[str, Any]]:
        """Everything about a submission that can be refused before anything is stored."""
        if cmd.channel not in CHANNELS:
            raise DomainError(f"unknown channel {cmd.channel!r}")
        if not cmd.external_id or len(cmd.external_id) > 300:
            raise DomainError("external id must be 1 to 300 characters")
        category = self.categories.get(cmd.category)
        attributes = category.check_attributes(cmd.attributes)
        if len(cmd.description) > MAX_DESCRIPTION:
            raise DomainError(f"description is longer than {MAX_DESCRIPTION} characters")
        check_lonlat(cmd.lon, cmd.lat)
        nul = nul_field(
            {
                "external_id": cmd.external_id,
                "description": cmd.description,
                "address": cmd.address,
                "attributes": cmd.attributes,
            }
        )
        if nul is not None:
            raise InvalidTextError(f"{nul}: text must not contain NUL (U+0000)")
        if cmd.lon is None and not (cmd.address and cmd.address.strip()):
            raise InvalidLocationError("a case needs lat/long or an address")
        if cmd.address is not None and len(cmd.address) > 300:
            raise DomainError("address is longer than 300 characters")
        return category, attributes

    def submit(
        self,
        cmd: SubmitCase,
        actor: str,
        correlation_id: str,
        pe: ProcessingEvent[UUID] | None = None,
    ) -> ServiceCase:
        """Submit a case; with auto-accept on, register and dispatch it at once."""
        category, attributes = self.validate(cmd)
        new_id = case_id(cmd.channel, cmd.external_id)
        # A worker's batch checks first (its transaction must not fail); a direct save
        # finds out from the event store's unique (id, version), with no extra query.
        if pe is not None and (new_id in pe.aggregates or self.app.exists(new_id)):
            raise DuplicateSubmissionError(new_id)
        # Personal data typed into the text stays out of the log; a phone number given
        # only there becomes the case's (sealed) contact, so the citizen can be answered.
        description = screen_text(cmd.description)
        address = None if cmd.address is None else screen_text(cmd.address)
        contact = cmd.contact
        if contact.empty and description.phones:
            with contextlib.suppress(InvalidContactError):
                contact = Contact.parse(phone=description.phones[0])
        citizen: UUID | None = cmd.citizen_id
        token = None
        if not contact.empty:
            citizen, token = self.personal.seal(contact, cmd.citizen_id)
        case = ServiceCase.submit(
            new_id,
            channel=cmd.channel,
            external_id=cmd.external_id,
            category=category.code,
            categories_version=self.categories.version,
            description=description.text,
            lon=cmd.lon,
            lat=cmd.lat,
            address=None if address is None else address.text,
            attributes=attributes,
            citizen_id=None if citizen is None else str(citizen),
            contact_token=token,
            actor=actor,
            correlation_id=correlation_id,
        )
        self._intake(case, category, correlation_id, self._clock_start(cmd.received_at))
        if pe is not None:
            pe.collect_events(case)
            return case
        try:
            self.app.save(case)
        except IntegrityError:
            raise DuplicateSubmissionError(new_id) from None
        self._keep(case)
        return case

    def _clock_start(self, received_at: datetime | None) -> datetime:
        """When the time limit starts: when the hotline took the call, if it says so.

        Only within the last week and not in the future; else now (a wrong clock in a
        source system must not make a case overdue at once, or extend its time).
        """
        now = self.clock()
        if received_at is None or received_at.tzinfo is None:
            return now
        if now - timedelta(days=7) <= received_at <= now:
            return received_at
        return now

    def _intake(
        self,
        case: ServiceCase,
        category: Category,
        correlation_id: str,
        start: datetime | None = None,
    ) -> None:
        """Intake policy: refuse what is not the city's, hold possible duplicates, else go.

        "Go" is registration and dispatch when auto-accept is on; else a dispatcher
        registers the case.
        """
        system = CommandContext(SYSTEM_INTAKE, correlation_id)
        if case.lon is not None and case.lat is not None:
            if self.locator.place(case.lon, case.lat) is None:
                case.reject(
                    rejection="not_our_city",
                    duplicate_of=None,
                    reason="the location is outside the city's districts",
                    **system.stamp(),
                )
                return
            if (
                self.nearby is not None
                and category.duplicate_radius_m > 0
                and category.code not in self.correlated
            ):
                near = [
                    c
                    for c in self.nearby.open_cases_near(
                        category.code, case.lon, case.lat, category.duplicate_radius_m, 10
                    )
                    if c != str(case.id)
                ]
                if near:
                    case.suggest_duplicates(
                        possible_duplicates=near,
                        reason=f"{len(near)} open {category.code} case(s) within "
                        f"{category.duplicate_radius_m:g} m: a dispatcher decides",
                        **system.stamp(),
                    )
                    return
        if self.auto_accept:
            case.accept(reason="registered", **system.stamp())
            self._dispatch(case, category, system, start)

    def _dispatch(
        self,
        case: ServiceCase,
        category: Category,
        ctx: CommandContext,
        start: datetime | None = None,
    ) -> None:
        """Dispatch policy: the responsibility catalogue's entry for the case's category,
        place and local time; without one, the jurisdiction polygon of the category's
        department type."""
        base = {
            "by": "policy",
            "department_type": category.department_type,
            "categories_version": self.categories.version,
        }
        if case.lon is None or case.lat is None:
            case.await_manual_assignment(
                grid_code=None,
                district_code=None,
                decision={**base, "rule": "no_location"},
                reason="no coordinates, only an address: a dispatcher assigns it",
                **ctx.stamp(),
            )
            return
        place = self.locator.place(case.lon, case.lat) or Place(None, None)
        catalogue, routing = self.catalogue, None
        if catalogue is not None:
            start = start or self.clock()
            local = start.astimezone(self.categories.calendar.zone).time()
            routing = catalogue.route(category.code, place.grid_code, place.district_code, local)
        if catalogue is not None and routing is not None:
            known = self.locator.departments()
            if routing.lead in known:
                decision = {**base, **routing.decision(catalogue.version)}
                # Co-handlers the city has no department for are noted, not asked.
                unknown = [u for u in routing.co_handlers if u not in known]
                if unknown:
                    decision["co_handlers"] = [u for u in routing.co_handlers if u in known]
                    decision["co_handlers_unknown"] = unknown
                self._assign(
                    case,
                    category,
                    routing.lead,
                    place,
                    decision,
                    f"catalogue entry {routing.entry.id}: {routing.lead} leads",
                    ctx,
                    start,
                )
                return
            base["catalogue_unit_unknown"] = routing.lead
        department = self.locator.department_for(case.lon, case.lat, category.department_type)
        if department is None:
            case.await_manual_assignment(
                grid_code=place.grid_code,
                district_code=place.district_code,
                decision={**base, "rule": "no_jurisdiction"},
                reason=f"no {category.department_type} jurisdiction covers this place",
                **ctx.stamp(),
            )
            return
        self._assign(
            case,
            category,
            department,
            place,
            {**base, "rule": "jurisdiction_polygon", "jurisdiction": department},
            f"jurisdiction of {department}",
            ctx,
            start,
        )

    def _assign(
        self,
        case: ServiceCase,
        category: Category,
        department: str,
        place: Place,
        decision: dict[str, Any],
        reason: str,
        ctx: CommandContext,
        start: datetime | None = None,
    ) -> None:
        decision, due = self._timed(category, decision, start)
        case.assign(
            department_code=department,
            grid_code=place.grid_code,
            district_code=place.district_code,
            decision=decision,
            due_at=due.due_at,
            due_soon_at=due.due_soon_at,
            reason=reason,
            **ctx.stamp(),
        )

    def _due(self, start: datetime, limit: Limit) -> datetime:
        return deadline(self.categories.calendar, start, limit.time_limit_h, limit.clock).due_at

    def _timed(
        self, category: Category, decision: dict[str, Any], start: datetime | None = None
    ) -> tuple[dict[str, Any], Deadline]:
        """The decision with its clock (started at ``start``, default now), the first-
        contact deadline and the time the unit may dispute it until; and the deadline."""
        now = self.clock()
        started = start or now
        due = deadline(self.categories.calendar, started, category.time_limit_h, category.clock)
        return {
            **decision,
            "time_limit_h": category.time_limit_h,
            "clock": category.clock,
            "clock_started_at": started.isoformat(),
            "respond_by": self._due(started, self.categories.response_limit(category)).isoformat(),
            "dispute_until": self._due(now, self.categories.dispute).isoformat(),
        }, due

    # -- dispatcher -----------------------------------------------------------------------

    def _accept(
        self,
        case: ServiceCase,
        command: Accept,
        departments: dict[str, Department],
        ctx: CommandContext,
    ) -> None:
        case.accept(reason=command.reason or "registered", **ctx.stamp())
        if command.department_code is None:
            self._dispatch(case, self.categories.get(case.category), ctx)
        else:
            self._manual(case, command.department_code, departments, command.reason, ctx)

    def _reject(self, case: ServiceCase, command: Reject, ctx: CommandContext) -> None:
        original = command.duplicate_of
        case.reject(
            rejection=command.rejection,
            duplicate_of=None if original is None else str(original),
            reason=command.reason,
            **ctx.stamp(),
        )

    def _known_department(self, department_code: str | None) -> dict[str, Department]:
        departments = self.locator.departments()
        if department_code is not None and department_code not in departments:
            raise NotFoundError(f"unknown department {department_code!r}")
        return departments

    def _manual(
        self,
        case: ServiceCase,
        department_code: str,
        departments: dict[str, Department],
        reason: str,
        ctx: CommandContext,
    ) -> None:
        category = self.categories.get(case.category)
        place = Place(case.grid_code, case.district_code)
        if case.lon is not None and case.lat is not None:
            place = self.locator.place(case.lon, case.lat) or place
        self._assign(
            case,
            category,
            department_code,
            place,
            {
                "by": "manual",
                "rule": "dispatcher",
                "department_type": departments[department_code].department_type,
                "categories_version": self.categories.version,
            },
            reason or "assigned by a dispatcher",
            ctx,
        )

    def _approve_extension(self, case: ServiceCase, reason: str, ctx: CommandContext) -> None:
        if case.extension_request is None or case.due_at is None:
            raise IllegalTransitionError("no extension request is pending")
        category = self.categories.get(case.category)
        hours = float(case.extension_request["hours"])
        due = deadline(self.categories.calendar, case.due_at, hours, category.clock)
        # Due soon again at 80 % of the added time, counted from the old deadline.
        case.approve_extension(
            due_at=due.due_at, due_soon_at=due.due_soon_at, reason=reason, **ctx.stamp()
        )

    def _dispute(self, case: ServiceCase, command: Dispute, ctx: CommandContext) -> None:
        now = self.clock()
        if case.dispute_until is not None and now > case.dispute_until:
            raise IllegalTransitionError(
                f"the assignment could be disputed until {case.dispute_until.isoformat()}"
            )
        case.raise_dispute(
            reason=command.reason,
            proposed_department_code=command.proposed_department_code,
            arbitrate_by=self._due(now, self.categories.arbitration),
            **ctx.stamp(),
        )

    def _uphold(self, case: ServiceCase, command: UpholdDispute, ctx: CommandContext) -> None:
        dispute = case.dispute
        if dispute is None:
            raise IllegalTransitionError("no dispute is pending")
        target = command.department_code or dispute["proposed_department_code"]
        if target is None:
            raise IllegalTransitionError(
                "name the unit the case moves to (the dispute proposed none)"
            )
        departments = self._known_department(target)  # the proposed one may be gone
        category = self.categories.get(case.category)
        decision, due = self._timed(
            category,
            {
                "by": "arbitration",
                "rule": "dispute_upheld",
                "disputed_by": dispute["by"],
                "department_type": departments[target].department_type,
                "categories_version": self.categories.version,
            },
        )
        case.uphold_dispute(
            department_code=target,
            decision=decision,
            due_at=due.due_at,
            due_soon_at=due.due_soon_at,
            reason=command.reason or f"dispute upheld: {target} is responsible",
            **ctx.stamp(),
        )

    # -- citizen --------------------------------------------------------------------------

    def _rate(self, case: ServiceCase, command: Rate, ctx: CommandContext) -> None:
        policy = self.categories.revisit
        revisit = command.rating <= policy.max_rating
        due = (
            deadline(self.categories.calendar, self.clock(), policy.time_limit_h, policy.clock)
            if revisit
            else None
        )
        case.rate(
            rating=command.rating,
            comment=screen_text(command.comment).text,
            revisit=revisit,
            due_at=None if due is None else due.due_at,
            due_soon_at=None if due is None else due.due_soon_at,
            solved=command.solved,
            **ctx.stamp(),
        )

    # -- the commands by name, for callers that pass actor and correlation id apart ------

    accept = _by_name(Accept, "actor reason correlation_id check department_code")
    reject = _by_name(Reject, "rejection duplicate_of actor reason correlation_id check")
    assign = _by_name(Assign, "department_code actor reason correlation_id check")
    decide_extension = _by_name(_extension_decision, "approve actor reason correlation_id check")
    start = _by_name(Start, "actor reason correlation_id check")
    resolve = _by_name(Resolve, "reply actor reason correlation_id check")
    return_case = _by_name(ReturnCase, "actor reason correlation_id check")
    request_extension = _by_name(RequestExtension, "hours actor reason correlation_id check")
    rate = _by_name(Rate, "rating comment actor correlation_id check")
    cancel = _by_name(Cancel, "actor reason correlation_id check")

    # -- SLA clock ------------------------------------------------------------------------

    def check_deadlines(self, case_ids: Iterable[UUID], correlation_id: str) -> dict[str, int]:
        """Record due-soon and overdue marks that are due now; each once per deadline.

        Safe to run from several workers and after a crash: the marks live on the case,
        and a concurrent writer makes the save fail instead of writing a second mark.
        """
        counts = {"due_soon": 0, "overdue": 0, "raced": 0, "missing": 0}
        clock = CommandContext(SYSTEM_SLA, correlation_id)
        now = self.clock()
        for cid in case_ids:
            try:
                case = self.get(cid)
            except NotFoundError:
                counts["missing"] += 1  # a read-model row without a case: skip, go on
                continue
            marked = []
            for mark, pending, record in (
                ("due_soon", case.due_soon_pending, case.mark_due_soon),
                ("overdue", case.overdue_pending, case.mark_overdue),
            ):
                if pending(now):
                    assert case.due_at is not None
                    record(deadline_no=case.deadline_no, due_at=case.due_at, **clock.stamp())
                    marked.append(mark)
            if not marked:
                continue
            try:
                self.app.save(case)
            except IntegrityError:
                counts["raced"] += 1  # someone changed the case: the next pass decides
                continue
            for mark in marked:
                counts[mark] += 1
        return counts

    # -- personal data --------------------------------------------------------------------

    def contact_of(self, case: ServiceCase) -> Contact | None:
        """The case's contact in clear; None if there is none or it was erased."""
        if case.citizen_id is None or case.contact_token is None:
            return None
        return self.personal.open(UUID(case.citizen_id), case.contact_token)

    def erase_citizen(
        self,
        citizen_id: UUID,
        cases_of: Callable[[UUID], Iterable[UUID]],
        actor: str,
        correlation_id: str,
    ) -> int:
        """Destroy the citizen's key, then note the erasure on each of their cases.

        ``cases_of`` is asked after the key is gone, so a case filed meanwhile is
        either unreadable already or found and noted.
        """
        ctx = CommandContext(actor, correlation_id)
        self.personal.erase(citizen_id)
        noted = 0
        for cid in cases_of(citizen_id):
            case = self.get(cid)
            if case.citizen_id != str(citizen_id) or case.erased:
                continue
            case.note_erasure(reason="citizen's request (PIPL)", **ctx.stamp())
            self._save(case)
            self._keep(case)
            noted += 1
        return noted
