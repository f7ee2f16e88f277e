"""Errors shared by the resilience layer and the clients that use it.

A ``ServiceError`` says whose business a failure is, which is what decides what
happens next: a breaker counts ``transient`` failures (the service is unwell), while
``permanent`` ones belong to the item being processed and ``ambiguous`` ones must be
reconciled before anything is retried.
"""

from __future__ import annotations

import enum
import time

__all__ = ["CircuitOpenError", "ErrorKind", "RetryLater", "ServiceError", "is_service_failure"]


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
    if not isinstance(exc, ServiceError):
        return False
    if exc.kind is ErrorKind.AMBIGUOUS:
        return exc.status is None or exc.status >= 500
    return exc.kind is ErrorKind.TRANSIENT


class CircuitOpenError(Exception):
    """A call was refused because its breaker is open.

    ``retry_after`` is the number of seconds until the breaker may admit a call again,
    or None when an operator holds it open.
    """

    def __init__(self, name: str, state: str, retry_after: float | None) -> None:
        # Refusals are the hot path of an open breaker: the message is built only if shown.
        super().__init__(name, state, retry_after)
        self.name = name
        self.state = state
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.retry_after is None:
            when = "until an operator closes it"
        else:
            when = f"for {self.retry_after:.0f} s"
        return f"circuit {self.name!r} is {self.state}: calls refused {when}"


class RetryLater(Exception):
    """Waiting for this would take too long inside a worker: come back at ``retry_at``.

    Raised by ``with_backoff`` when the service asked for a wait longer than the
    retry's ``max_delay`` or its deadline; the original error is the ``__cause__``.
    """

    def __init__(self, retry_at: float, cause: BaseException) -> None:
        self.retry_at = retry_at
        super().__init__(f"retry after {max(0.0, retry_at - time.time()):.0f} s: {cause}")
