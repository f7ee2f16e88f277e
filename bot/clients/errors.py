"""The one error type the clients raise."""

from __future__ import annotations

from resilience.errors import ErrorKind, ServiceError

__all__ = ["ClientError", "ErrorKind"]


class ClientError(ServiceError):
    """X, the model or Telegram failed.

    ``kind`` is ``transient`` (service-level: the breaker counts it and the item waits),
    ``permanent`` (item-level: the item uses an attempt), ``ambiguous`` (the request went
    out and may have worked: reconcile before any retry) or ``not_permitted`` (X refused
    the reply under its 2026 rule: hand off to the owner).
    """
