"""Errors shared by the resilience layer and the clients that use it.

A ``ServiceError`` says whose business a failure is, which is what decides what
happens next: a breaker counts ``transient`` failures (the service is unwell), while
``permanent`` ones belong to the item being processed and ``ambiguous`` ones must be
reconciled before anything is retried.
"""

from __future__ import annotations

import enum
import time

__all__ = [
    "CIRCUIT_OPEN",
    "CONFIGURATION",
    "CONFIGURATION_HOLD",
    "RATE_LIMITED",
    "CircuitOpenError",
    "ErrorKind",
    "RetryLater",
    "ServiceError",
    "is_service_failure",
]

# ``ServiceError.reason`` values the resilience layer itself understands.
# A limit on one endpoint (HTTP 429 with a reset): the caller holds that endpoint until
# ``retry_at``; the service as a whole is fine, so no breaker counts it.
RATE_LIMITED = "rate_limited"
# The service refuses our setup (credentials, permissions, model name): every item would
# fail alike. Transient, with a ``retry_at``, so the breaker opens at once and stays open.
CONFIGURATION = "configuration"
# Seconds a service that refused our setup is left alone before a trial call: long
# enough not to hammer it, short enough that a fix is noticed within minutes.
CONFIGURATION_HOLD = 600.0
# A breaker refused the call without making it.
CIRCUIT_OPEN = "circuit_open"


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"  # service-level: refused, timed out before send, 5xx, 429, 401
    PERMANENT = "permanent"  # item-level: 400, 404, 403 refused
    AMBIGUOUS = "ambiguous"  # the request went out and no answer came back
    NOT_PERMITTED = "not_permitted"  # the service refuses this action by policy


class ServiceError(Exception):
    """An outside service failed; ``kind`` says whose business it is.

    ``retry_at`` (Unix seconds) is set when the service said when to come back, for
    example a rate-limit reset; a breaker that counts this error stays open until then.
    ``reason`` names a cause the caller acts on, so nobody parses messages.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        service: str = "",
        status: int | None = None,
        retry_at: float | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.service = service
        self.status = status
        self.retry_at = retry_at
        # A short machine-readable cause the caller may act on ("duplicate", "target_gone").
        self.reason = reason

    @property
    def retry_after(self) -> float | None:
        """Seconds until ``retry_at``, never negative; None when the service gave no time."""
        if self.retry_at is None:
            return None
        return max(0.0, self.retry_at - time.time())

    def __str__(self) -> str:
        where = f"{self.service} " if self.service else ""
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{where}{self.kind.value}{status}: {self.args[0]}"


def is_service_failure(exc: BaseException) -> bool:
    """The breaker rule for outside services: only service-level failures count.

    An ambiguous failure without a definite answer (a timeout or a cut connection after
    sending, a 5xx page instead of a reply) says the service is unwell too, whatever
    became of the request; an ambiguous 4xx (X's duplicate-content 403) does not.
    """
    if not isinstance(exc, ServiceError) or exc.reason in (RATE_LIMITED, CIRCUIT_OPEN):
        return False
    if exc.kind is ErrorKind.AMBIGUOUS:
        return exc.status is None or exc.status >= 500
    return exc.kind is ErrorKind.TRANSIENT


class CircuitOpenError(ServiceError):
    """A call was refused because its breaker is open: a transient ``ServiceError``.

    Callers catch one type: a refusal is the service being unavailable, with
    ``retry_at`` set to when the breaker may admit a call again (None while an
    operator holds it open). ``retry_after`` gives the same in seconds from now.
    """

    def __init__(self, name: str, state: str, retry_after: float | None) -> None:
        # Refusals are the hot path of an open breaker: no message is built until shown,
        # and ServiceError's checks are skipped (every field is known here).
        Exception.__init__(self, name, state, retry_after)
        self.kind = ErrorKind.TRANSIENT
        self.service = name
        self.status = None
        self.reason = CIRCUIT_OPEN
        self.retry_at = None if retry_after is None else time.time() + retry_after
        self.name = name
        self.state = state
        self._retry_after = retry_after

    @property
    def retry_after(self) -> float | None:
        """Seconds from the refusal until the breaker may admit a call, by its own clock."""
        return self._retry_after

    def __str__(self) -> str:
        if self._retry_after is None:
            when = "until an operator closes it"
        else:
            when = f"for {self._retry_after:.0f} s"
        return f"circuit {self.name!r} is {self.state}: calls refused {when}"


class RetryLater(Exception):
    """Waiting for this would take too long inside a worker: come back at ``retry_at``.

    Raised by ``with_backoff`` when the service asked for a wait longer than the
    retry's ``max_delay`` or its deadline; the original error is the ``__cause__``.
    """

    def __init__(self, retry_at: float, cause: BaseException) -> None:
        self.retry_at = retry_at
        super().__init__(f"retry after {max(0.0, retry_at - time.time()):.0f} s: {cause}")
