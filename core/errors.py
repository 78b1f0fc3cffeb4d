"""Domain errors shared by the aggregates; each entry point translates them."""


class DomainError(Exception):
    """Base of every rule the domain refuses to break."""


class NotFoundError(DomainError):
    """No aggregate with that id."""


class IllegalTransitionError(DomainError):
    """The command is not allowed in the aggregate's current state."""


class ConcurrentUpdateError(DomainError):
    """Someone else changed the aggregate meanwhile; reload and retry."""
