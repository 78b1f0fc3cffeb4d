"""What every command carries besides its own fields: who gives it, and why it happens.

A command object (``core.case.commands``, ``core.incident.commands``) holds only what the
caller decides; the desk that runs it gets a ``CommandContext`` alongside, and every
event the command records carries the context's actor and correlation id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict


class Stamp(TypedDict):
    """The keyword arguments every aggregate transition takes from the context."""

    actor: str
    correlation_id: str


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Who gives a command (``actor``) and the correlation id that ties its events together."""

    actor: str
    correlation_id: str

    def stamp(self) -> Stamp:
        return {"actor": self.actor, "correlation_id": self.correlation_id}
