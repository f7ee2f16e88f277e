"""What the owner's dashboard (the admin index) shows: reads only, none of them outside.

Every panel comes from our own database, the shared cache or the breakers' store: the
page never calls X, the model or Telegram, so it answers while they hang.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from bot.models import FailedTweet, FailedTweetStatus, QueuedTweet, Status
from bot.selectors import publishing_paused
from bot.services import heartbeat
from bot.services.scheduling import Timing, next_reply_out, paused_words
from bot.services.x_usage import Usage, usage_today
from bot.simulated import simulated
from resilience.admin import breaker_in_words
from resilience.models import AlertEvent
from resilience.registry import all_breakers

__all__ = ["Dashboard", "Outside", "dashboard", "outside_services"]

RECENT_ALERTS = 8


@dataclass(frozen=True)
class Outside:
    """An outside service as configured: where its calls go, and whether that is the
    local sandbox (``bot.simulated``)."""

    name: str
    setting: str
    url: str
    sandbox: bool


@dataclass(frozen=True)
class Heartbeat:
    at: datetime | None
    silent: bool
    seconds_ago: float | None = None


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    paused: bool
    paused_words: str
    statuses: list[tuple[str, str, int]]  # (status, label, count), every status
    next_reply: tuple[QueuedTweet, Timing] | None
    breakers: list[dict[str, Any]]
    dead_letters: list[tuple[str, str, int]]
    heartbeat: Heartbeat
    alerts: list[AlertEvent]
    unseen_alerts: int
    outside: list[Outside]
    x_usage: Usage
    x_budget_usd: float | None

    @property
    def sandbox(self) -> list[Outside]:
        return [service for service in self.outside if service.sandbox]


def outside_services() -> list[Outside]:
    return [
        Outside(name, setting, getattr(settings, setting), simulated(service))
        for service, name, setting in (
            ("x", "X", "X_API_BASE_URL"),
            ("llm", "the model", "OPENAI_BASE_URL"),
            ("telegram", "Telegram", "TELEGRAM_API_BASE_URL"),
        )
    ]


def dashboard(*, now: datetime | None = None) -> Dashboard:
    now = now or timezone.now()
    paused = publishing_paused()
    return Dashboard(
        now=now,
        paused=paused,
        paused_words=paused_words() if paused else "",
        statuses=_counts(QueuedTweet, Status),
        next_reply=next_reply_out(now=now),
        breakers=[breaker_in_words(breaker.get_status()) for breaker in all_breakers()],
        dead_letters=_counts(FailedTweet, FailedTweetStatus),
        heartbeat=_heartbeat(),
        alerts=list(AlertEvent.objects.order_by("-created_at")[:RECENT_ALERTS]),
        unseen_alerts=AlertEvent.objects.filter(seen_at__isnull=True).count(),
        outside=outside_services(),
        x_usage=usage_today(now),
        x_budget_usd=settings.X_DAILY_BUDGET_USD,
    )


def _counts(model: Any, statuses: Any) -> list[tuple[str, str, int]]:
    found = dict(model.objects.order_by().values_list("status").annotate(n=Count("id")))
    return [(value, label, found.get(value, 0)) for value, label in statuses.choices]


def _heartbeat() -> Heartbeat:
    last = heartbeat.last_beat()
    if last is None:
        return Heartbeat(None, True)
    quiet_for = time.time() - last
    silent = quiet_for >= heartbeat.SILENT_AFTER.total_seconds()
    return Heartbeat(datetime.fromtimestamp(last, UTC), silent, quiet_for)
