"""Each alert the pipeline raises, raised where it happens and delivered to the owner.

The outbox itself (cooldown across processes, delivery rules, the format) is tested in
``test_alerts.py``; here the pipeline's own failures produce the alerts, and the real
notifier takes them to the sandbox Telegram.
"""

from __future__ import annotations

import io
import time

import pytest
from django.core.management import call_command
from django.utils import timezone

from bot.models import SearchQuery, Status
from bot.services import heartbeat
from bot.services.dead_letters import Stage, fail
from resilience import get_breaker
from resilience.alerts import AlertKind, deliver_alerts, raise_alert
from resilience.models import AlertEvent
from tests.helpers import approved, discovered, run_pipeline, summon

pytestmark = pytest.mark.django_db


def alerts(kind: AlertKind) -> list[AlertEvent]:
    return list(AlertEvent.objects.filter(kind=kind).order_by("created_at"))


def test_an_alert_reaches_the_owners_chat_in_the_original_format(pipeline):
    raise_alert(
        kind=AlertKind.TARGET_NOT_FOUND,
        subject="@ghost",
        message="@ghost does not exist on X; it is disabled until you fix it.",
        details={"account": "@ghost"},
    )
    call_command("telegram_bot", "--once", stdout=io.StringIO())
    [event] = alerts(AlertKind.TARGET_NOT_FOUND)
    assert event.status == "sent"
    [message] = pipeline.telegram.bot_messages()
    assert str(message["message_id"]) == event.delivered_ref
    lines = message["text"].splitlines()
    assert lines[0] == "🚨 CRITICAL ALERT"
    assert "Type: `target_not_found`" in lines
    assert "Message: @ghost does not exist on X; it is disabled until you fix it." in lines
    assert "  • account: `@ghost`" in lines


def test_while_telegram_is_down_alerts_wait_and_go_out_once_it_is_back(pipeline):
    pipeline.telegram.faults.add("*", "error", status=502)
    raise_alert(kind=AlertKind.WORKER_SILENT, subject="workers", message="No worker ran.")
    for _ in range(3):
        deliver_alerts()
    [event] = alerts(AlertKind.WORKER_SILENT)
    assert (event.status, event.attempts) == ("pending", 0)  # nothing spent while down
    pipeline.telegram.faults.clear()
    get_breaker("telegram").reset()
    assert deliver_alerts()["sent"] == 1
    assert len(pipeline.telegram.bot_messages()) == 1
    assert deliver_alerts()["sent"] == 0  # never twice


def test_a_failed_reply_raises_one_tweet_processing_failed_per_stage_and_counts_repeats(
    pipeline,
):
    posts = [summon(pipeline, "any tips?", author) for author in ("bob", "carol")]
    run_pipeline()
    for post_id in posts:
        approved(post_id)
        fail(
            discovered(post_id),
            stage=Stage.PUBLISH,
            expected=Status.APPROVED,
            error="X refused it: 400",
            kind="permanent",
            now=timezone.now(),
        )
    [event] = alerts(AlertKind.TWEET_PROCESSING_FAILED)
    assert event.subject == "stage publish"
    assert event.repeats == 1  # the second failure, held back by the cooldown
    assert discovered(posts[0]).url in event.message


def test_a_rate_limit_raises_rate_limit_exceeded_with_when_it_ends(pipeline):
    SearchQuery.objects.create(query="django")
    pipeline.x.faults.add("search_recent", "error", status=429, reset_in=900)
    run_pipeline()
    [event] = alerts(AlertKind.RATE_LIMIT_EXCEEDED)
    assert event.subject.startswith("x ")
    assert "calls to it wait until" in event.message
    assert get_breaker("twitter_api").state == "closed"  # one endpoint held, not X


def test_a_stage_without_its_credentials_raises_initialization_failed_naming_them(
    pipeline, settings
):
    settings.X_API_KEY = ""
    run_pipeline()
    run_pipeline()
    [event] = alerts(AlertKind.INITIALIZATION_FAILED)
    assert "X_API_KEY" in event.message
    assert event.repeats >= 1  # every stage that needs X, every pass: one alert


def test_silent_workers_are_reported_by_the_poller(pipeline, monkeypatch):
    from bot.management.commands.telegram_bot import Poller
    from bot.telegram.outbox import owner_client

    heartbeat.beat(now=time.time() - 6 * 60)
    poller = Poller(owner_client())
    poller.last_workers_check = 0  # due now
    poller.cycle(poll_seconds=0, outbox=True)
    [event] = alerts(AlertKind.WORKER_SILENT)
    assert "No django-q2 worker has run a task for 6 minutes" in event.message
    assert event.status == "sent"  # the poller delivers it: the workers cannot

    heartbeat.beat()
    poller.last_workers_check = 0
    poller.cycle(poll_seconds=0, outbox=True)
    assert len(alerts(AlertKind.WORKER_SILENT)) == 1


def test_a_secret_in_an_alert_is_masked_even_url_encoded(pipeline, settings):
    from urllib.parse import quote

    token = settings.TELEGRAM_BOT_TOKEN
    raise_alert(
        kind=AlertKind.CONFIGURATION_REFUSED,
        subject="telegram 401",
        message=f"GET /bot{quote(token, safe='')}/getMe and /bot{token}/getMe were refused",
    )
    [event] = alerts(AlertKind.CONFIGURATION_REFUSED)
    assert token not in event.message
    assert quote(token, safe="") not in event.message
