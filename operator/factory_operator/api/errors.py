"""The operator's exception tree (the only module that defines exceptions).

    FactoryError                      base of everything the operator raises on purpose
    ├── SpecError                     a spec that can never work as written
    │                                  (handlers turn it into kopf.PermanentError plus a
    │                                  Ready=False/InvalidSpec condition; never retried)
    └── TransientError                may succeed later: retried with backoff
        ├── ApiUnavailableError       API server unreachable, timeout, 5xx, 429
        └── ConflictError             optimistic-concurrency or SSA conflict not resolved by
                                       force (another manager owns the field); re-planned

Region, residency and capacity problems are *not* exceptions: they depend on other objects,
so the planner reports them as conditions and the operator re-evaluates them whenever a
FleetRegion or a Node changes (and on a timer). Anything else that escapes a handler is a
bug; handlers log it and let kopf retry it as a temporary error.
"""

from __future__ import annotations


class FactoryError(Exception):
    """Base class of the operator's own errors."""


class SpecError(FactoryError):
    """The spec can never work as written: the user must change it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TransientError(FactoryError):
    """A failure that may go away by itself: the reconcile is retried."""


class ApiUnavailableError(TransientError):
    """The API server did not answer, or answered 5xx/429."""


class ConflictError(TransientError):
    """A write lost a race (409) that force-apply could not settle."""
