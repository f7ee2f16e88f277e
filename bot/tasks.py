"""django-q2 tasks: triggers, not carriers.

Each task finds its work in the database and calls a service, so a task that is
lost, redelivered or run twice by two clusters loses or doubles nothing. The
schedules are created by migration ``bot.0002_schedules``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from bot.services import (
    dead_letters,
    discovery,
    drafting,
    heartbeat,
    publishing,
    reconciling,
    scheduling,
)
from bot.services.account import remembered_account
from resilience.alerts import AlertKind, deliver_alerts, raise_alert
from resilience.db import with_db_recovery

if TYPE_CHECKING:
    from bot.clients.llm import LLMClient
    from bot.clients.x import XClient

log = logging.getLogger(__name__)


def configured_x(stage: str) -> XClient | None:
    """The X client, or None (logged) when X's credentials are not set yet."""
    from bot.clients.x import XClient

    return _configured(lambda: XClient.from_settings(me=remembered_account()), stage)


def configured_llm(stage: str) -> LLMClient | None:
    from bot.clients.llm import LLMClient

    return _configured(LLMClient.from_settings, stage)


def _configured(build: Callable[[], Any], stage: str) -> Any | None:
    try:
        return build()
    except ImproperlyConfigured as exc:
        log.warning("%s skipped: %s", stage, exc)
        raise_alert(
            kind=AlertKind.INITIALIZATION_FAILED,
            subject=str(exc)[:200],
            message=f"Reply Guy cannot start its {stage} stage until this is set: {exc}",
            details={"stage": stage},
        )
        return None


@with_db_recovery
def discover() -> dict[str, int]:
    x = configured_x("discover")
    return discovery.discover_all(x) if x else {}


@with_db_recovery
def draft() -> dict[str, int]:
    expired = drafting.expire_stale()
    llm = configured_llm("draft")
    counts = drafting.draft_new(llm) if llm else {}
    return {"expired": expired, **counts}


@with_db_recovery
def schedule() -> dict[str, int]:
    return {"scheduled": scheduling.schedule_approved()}


@with_db_recovery
def publish() -> dict[str, int]:
    recovered = len(reconciling.recover_stale())
    x = configured_x("publish")
    counts = publishing.publish_due(x) if x else {}
    handed_off = publishing.hand_off_due()  # needs no X credentials
    return {"recovered": recovered, "handed_off": handed_off, **counts}


@with_db_recovery
def reconcile() -> dict[str, int]:
    x = configured_x("reconcile")
    return reconciling.reconcile(x) if x else {}


@with_db_recovery
def retry_dead_letters() -> dict[str, int]:
    return {"retried": dead_letters.dead_letter_retry_due()}


@with_db_recovery
def notify() -> dict[str, int]:
    """Tell the owner: alerts, approval messages and their updates, reminders."""
    from bot.telegram.outbox import ask_owner, owner_client

    heartbeat.beat()
    counts = deliver_alerts()
    client = owner_client()
    if client is None:
        return counts
    return {**counts, **ask_owner(client)}


@with_db_recovery
def handle_telegram_updates() -> dict[str, int]:
    """Handle updates the webhook kept (also a sweep for any whose task was lost)."""
    from bot.telegram.outbox import owner_client
    from bot.telegram.updates import handle_received

    client = owner_client()
    return {"handled": handle_received(client)} if client else {}


# The order of one full pass (`manage.py run_pipeline --once`).
STAGES: list[tuple[str, Callable[[], dict[str, int]]]] = [
    ("retry_dead_letters", retry_dead_letters),
    ("discover", discover),
    ("draft", draft),
    ("schedule", schedule),
    ("publish", publish),
    ("reconcile", reconcile),
    ("notify", notify),
]
