"""Alert events: recorded in the database, so none is lost while delivery is down."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from resilience.models import AlertEvent

__all__ = ["REPEAT_AFTER", "raise_alert"]

# The same alert (kind and subject) is recorded again only this long after the last:
# a condition that lasts must not fill the table, or the owner's phone, every pass.
REPEAT_AFTER = timedelta(hours=1)


def raise_alert(*, kind: str, subject: str, message: str) -> AlertEvent:
    """Record an alert, unless the same one was recorded within ``REPEAT_AFTER``."""
    subject = subject[:200]
    recent = (
        AlertEvent.objects.filter(
            kind=kind, subject=subject, created_at__gte=timezone.now() - REPEAT_AFTER
        )
        .order_by("-created_at")
        .first()
    )
    if recent is not None:
        return recent
    return AlertEvent.objects.create(kind=kind, subject=subject, message=message)
