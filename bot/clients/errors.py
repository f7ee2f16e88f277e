"""The one error type the clients raise, and the causes the pipeline acts on."""

from __future__ import annotations

import enum

from resilience.errors import CIRCUIT_OPEN, CONFIGURATION, RATE_LIMITED, ErrorKind, ServiceError

__all__ = ["ClientError", "ErrorKind", "Reason"]


class Reason(enum.StrEnum):
    """``ServiceError.reason`` values: a cause named, so nobody parses messages."""

    NONE = ""
    DUPLICATE = "duplicate"  # X: we already posted this exact text (perhaps this reply)
    TARGET_GONE = "target_gone"  # X: the post we answer was deleted or is not visible
    RATE_LIMITED = RATE_LIMITED  # one endpoint is held until its reset; not the service
    CONFIGURATION = CONFIGURATION  # our setup is refused: the owner must fix it
    CIRCUIT_OPEN = CIRCUIT_OPEN  # the breaker refused the call without making it
    UNEXPECTED = "unexpected"  # not an outside service's answer: a bug or a bad value


class ClientError(ServiceError):
    """X, the model or Telegram failed.

    ``kind`` is ``transient`` (service-level: the breaker counts it and the item waits),
    ``permanent`` (item-level: the item uses an attempt), ``ambiguous`` (the request went
    out and may have worked: reconcile before any retry) or ``not_permitted`` (X refused
    the reply under its 2026 rule: hand off to the owner). ``reason`` is a ``Reason``.
    """
