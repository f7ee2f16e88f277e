"""When an approved reply goes out: a random delay, then every pacing rule."""

from __future__ import annotations

import logging
from datetime import datetime

from django.utils import timezone

from bot.models import QueuedTweet, Status
from bot.pacing import Pacing, earliest_allowed
from bot.selectors import published_times

log = logging.getLogger(__name__)


def reply_schedule(tweet: QueuedTweet, *, now: datetime | None = None) -> datetime | None:
    """Give an approved reply its time; None if it was no longer waiting for one."""
    now = now or timezone.now()
    pacing = Pacing.from_settings()
    planned = list(
        QueuedTweet.objects.filter(status=Status.APPROVED, scheduled_at__isnull=False)
        .exclude(id=tweet.id)
        .order_by()
        .values_list("scheduled_at", flat=True)
    )
    when = earliest_allowed(now + pacing.random_delay(), pacing, planned + published_times(now))
    moved = QueuedTweet.objects.filter(
        id=tweet.id, status=Status.APPROVED, scheduled_at__isnull=True
    ).update(scheduled_at=when, updated_at=now)
    return when if moved else None


def schedule_approved(*, now: datetime | None = None) -> int:
    """Schedule approved replies that have no time yet (an approval cut short by a crash)."""
    scheduled = 0
    for tweet in QueuedTweet.objects.filter(status=Status.APPROVED, scheduled_at__isnull=True):
        try:
            scheduled += reply_schedule(tweet, now=now) is not None
        except Exception:
            log.exception("schedule: reply %s could not be scheduled; next pass", tweet.id)
    return scheduled
