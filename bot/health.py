"""The pipeline's health: checks that need the bot's tables, the probes' check lists, and
the ``/health/status/`` document.

Like ``resilience.health``, every check reads stored state (the workers' heartbeat in the
cache, the queue and dead-letter tables, the breakers) and none calls X, the model or
Telegram.

Severity (``docs/operations.md``): Reply Guy's own parts failing are errors (503): the
database, the cache, no django-q2 worker for ``SILENT_AFTER``. Everything it survives by
waiting is a warning (degraded, 200): an outside service's breaker open, half open,
failing or overridden; replies overdue (``PublishLag``); dead letters that need the owner
(``DeadLetters``).
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Min
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone
from health_check.base import HealthCheck, HealthCheckResult
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from bot.clients.x import CREDENTIAL_SETTINGS
from bot.models import FailedTweet, FailedTweetStatus
from bot.selectors import due_replies, publishing_paused
from bot.services.heartbeat import SILENT_AFTER, last_beat
from bot.services.notices import BREAKERS
from bot.simulated import simulated
from resilience.alerts import AlertKind
from resilience.calls import Calls, calls_by_breaker
from resilience.health import (
    REFUSING,
    Breaker,
    Cache,
    Check,
    Database,
    Severity,
    breaker_summary,
    severity,
    worst,
)
from resilience.models import AlertEvent

__all__ = [
    "EVERY",
    "READY",
    "DeadLetters",
    "PublishLag",
    "WorkerHeartbeat",
    "publish_lag_seconds",
    "status_document",
]

# The outside services as ``/health/status/`` names them: (client's service name, flag).
SERVICES = {
    "twitter": ("x", "authenticated"),
    "ai": ("llm", "available"),
    "telegram": ("telegram", "connected"),
}


@dataclasses.dataclass
class WorkerHeartbeat(Check):
    """A django-q2 worker ran the notify task (every minute) within ``SILENT_AFTER``."""

    def probe(self) -> None:
        last = last_beat()
        if last is None:
            raise ServiceUnavailable("no django-q2 worker has run a task yet (start qcluster)")
        quiet = time.time() - last
        if quiet >= SILENT_AFTER.total_seconds():
            raise ServiceUnavailable(f"no django-q2 worker has run a task for {quiet / 60:.0f} min")


@dataclasses.dataclass
class PublishLag(Check):
    """The oldest due approved reply has waited less than ``warn_after`` to go out.

    It waits while publishing is paused, X's breaker is open, or a cap holds it back:
    all reasons to look, none to restart anything.
    """

    warn_after: timedelta = dataclasses.field(default=timedelta(minutes=15), repr=False)

    def probe(self) -> None:
        lag = publish_lag_seconds()
        if lag is None or lag < self.warn_after.total_seconds():
            return
        paused = " (publishing is paused)" if publishing_paused() else ""
        raise ServiceWarning(f"the oldest due reply has waited {lag / 60:.0f} min{paused}")


@dataclasses.dataclass
class DeadLetters(Check):
    """No dead letter has used up its retries, and fewer than ``warn_at`` wait for one."""

    warn_at: int = dataclasses.field(default=50, repr=False)

    def probe(self) -> None:
        counts = dict(
            FailedTweet.objects.filter(
                status__in=[FailedTweetStatus.PENDING, FailedTweetStatus.EXHAUSTED]
            )
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by()
        )
        exhausted = counts.get(FailedTweetStatus.EXHAUSTED, 0)
        pending = counts.get(FailedTweetStatus.PENDING, 0)
        if exhausted:
            raise ServiceWarning(f"{exhausted} dead letters used up their retries: review them")
        if pending >= self.warn_at:
            raise ServiceWarning(f"{pending} dead letters wait for a retry")


def publish_lag_seconds(now: datetime | None = None) -> float | None:
    """How long the oldest due approved reply has been due; None when none is."""
    now = now or timezone.now()
    due_since = (
        due_replies(now)
        .annotate(due=Greatest("scheduled_at", Coalesce("next_attempt_at", "scheduled_at")))
        .aggregate(oldest=Min("due"))["oldest"]
    )
    return None if due_since is None else max(0.0, (now - due_since).total_seconds())


# The checks as django-health-check's view takes them: classes, or (class, options).
CheckSpec = type[HealthCheck] | tuple[type[HealthCheck], dict[str, Any]]
# Readiness: can this process serve? Its database and cache, nothing else.
READY: list[CheckSpec] = [Database, Cache]
# Everything an operator wants to know, in ``/health/`` and ``manage.py health_check``.
EVERY: list[CheckSpec] = [
    *READY,
    WorkerHeartbeat,
    PublishLag,
    DeadLetters,
    *((Breaker, {"name": BREAKERS[service]}) for service, _ in SERVICES.values()),
]


def status_document(results: list[HealthCheckResult]) -> dict[str, Any]:
    """The seed's per-service document from the checks' results (``/health/status/``).

    ``overall`` is the worst check: ``error`` when Reply Guy itself cannot work,
    ``degraded`` when it waits on something or an outside service is not healthy.
    """
    now = time.time()
    by_check = {type(r.check).__name__ + getattr(r.check, "name", ""): r for r in results}
    database = by_check.get("Database")
    # With the database down, only what needs no query: breakers fall back on their own.
    reachable = database is not None and database.error is None
    calls = calls_by_breaker() if reachable else {}
    doc: dict[str, Any] = {
        "database": {
            "status": severity(database.error) if database else Severity.OK,
            "connected": database is not None and database.error is None,
            "circuit_breaker": breaker_summary("database", calls={}, now=now)["circuit_breaker"],
        }
    }
    for key, (service, flag) in SERVICES.items():
        breaker = BREAKERS[service]
        summary = breaker_summary(breaker, calls=calls, now=now)
        check = by_check.get("Breaker" + breaker)
        configured = _configured(service)
        usable = configured and summary["circuit_breaker"]["state"] not in REFUSING
        if usable and reachable:
            usable = not _setup_refused(service, calls.get(breaker, Calls()).last_ok_at)
        status = severity(check.error) if check else Severity.OK
        if not usable:
            status = Severity.ERROR
        doc[key] = {
            "status": status,
            flag: usable,
            "configured": configured,
            "simulated": simulated(service),
            **summary,
        }
    doc["checks"] = {repr(r.check): "OK" if r.error is None else str(r.error) for r in results}
    outside = [doc[key]["status"] for key in SERVICES]
    doc["overall"] = worst(
        [
            *(severity(r.error) for r in results),
            *(Severity.DEGRADED for level in outside if level != Severity.OK),
        ]
    )
    return doc


def _configured(service: str) -> bool:
    if service == "x":
        return all(getattr(settings, name, "") for name in CREDENTIAL_SETTINGS)
    if service == "llm":
        return bool(settings.OPENAI_API_KEY and settings.AI_MODEL)
    return bool(settings.TELEGRAM_BOT_TOKEN and settings.TELEGRAM_CHAT_ID)


def _setup_refused(service: str, answered: datetime | None) -> bool:
    """The service refused our setup (``configuration_refused``: a bad key, a read-only
    app, an unknown model) and has not answered since."""
    refused_at = (
        AlertEvent.objects.filter(
            kind=AlertKind.CONFIGURATION_REFUSED, subject__startswith=f"{service} "
        )
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if refused_at is None:
        return False
    return answered is None or answered < refused_at
