"""Alert events: recorded in the database, so none is lost while delivery is down."""

from __future__ import annotations

from resilience.models import AlertEvent

__all__ = ["raise_alert"]


def raise_alert(*, kind: str, subject: str, message: str) -> AlertEvent:
    return AlertEvent.objects.create(kind=kind, subject=subject[:200], message=message)
