"""The X cost meter: every call X received counted per endpoint per UTC day, its estimated
cost, the daily budget stopping discovery (and nothing else), and /status showing it."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from bot.models import QueuedTweet, Status, TargetAccount
from bot.services import x_usage
from resilience.alerts import AlertKind
from resilience.models import AlertEvent
from tests.helpers import (
    ROOT,
    approved,
    discovered,
    requests_to,
    run_pipeline,
    summon,
    worker_env,
)

pytestmark = pytest.mark.django_db


def counted(endpoint: str) -> int:
    usage = x_usage.usage_today().by_endpoint.get(endpoint)
    return usage.calls if usage else 0


def reads_of(sandbox, username: str) -> int:
    """How many times X was asked for ``username``'s timeline."""
    user_id = TargetAccount.objects.get(username=username).x_user_id
    return sum(path == f"/2/users/{user_id}/tweets" for _, path in sandbox.x.requests)


# --- counting -------------------------------------------------------------------------------


def test_every_call_x_received_is_counted_under_its_endpoint_failed_ones_too(pipeline):
    pipeline.x.publish("alice", "a post about django testing")
    post_id = summon(pipeline)
    pipeline.x.faults.add("user_mentions", "error", status=503, times=1)
    pipeline.x.faults.add("user_tweets", "error", status=429, times=1)
    run_pipeline()
    run_pipeline()
    approved(post_id)
    run_pipeline()

    endpoints = {name for name, _ in pipeline.x.requests}
    assert {"me", "users_by", "user_tweets", "user_mentions", "create_tweet"} <= endpoints
    usage = x_usage.usage_today()
    assert set(usage.by_endpoint) == endpoints
    for endpoint in endpoints:
        assert counted(endpoint) == requests_to(pipeline.x, endpoint), endpoint
    assert usage.calls == len(pipeline.x.requests)


def test_a_failed_call_counts_as_a_call_and_costs_nothing(pipeline):
    pipeline.x.faults.add("user_mentions", "error", status=503, times=1)
    run_pipeline()
    mentions = x_usage.usage_today().by_endpoint["user_mentions"]
    assert (mentions.calls, mentions.units, mentions.cost_usd) == (1, 0, 0.0)


def test_a_known_pass_costs_what_x_charges_per_post_and_user(pipeline):
    pipeline.x.publish("alice", "a post about django testing")
    pipeline.x.publish("alice", "another post about django")
    post_id = summon(pipeline)  # by alice: in her timeline and in our mentions
    run_pipeline()
    approved(post_id)
    run_pipeline()

    usage = x_usage.usage_today()
    assert usage.by_endpoint == {
        "me": x_usage.EndpointUsage(calls=1, units=1, cost_usd=0.010),  # a user read
        "users_by": x_usage.EndpointUsage(calls=1, units=1, cost_usd=0.010),  # alice resolved
        # Alice's 3 posts at $0.005, then nothing new; our own timeline read before
        # publishing (owned, $0.001 a post) had nothing on it.
        "user_tweets": x_usage.EndpointUsage(calls=3, units=3, cost_usd=0.015),
        "user_mentions": x_usage.EndpointUsage(calls=2, units=1, cost_usd=0.001),  # owned
        "create_tweet": x_usage.EndpointUsage(calls=1, units=1, cost_usd=0.010),  # summoned
    }
    assert usage.cost_usd == pytest.approx(0.046)
    assert usage.day == datetime.now(UTC).date()


def test_a_reply_with_a_link_is_priced_as_a_post_with_a_url(pipeline, settings):
    settings.ALLOW_LINKS_IN_REPLIES = True
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id, text="the retry docs explain it: https://example.com/retries")
    run_pipeline()
    assert discovered(post_id).status == Status.POSTED
    create = x_usage.usage_today().by_endpoint["create_tweet"]
    assert (create.calls, create.cost_usd) == (1, 0.20)


@pytest.mark.django_db(transaction=True)
def test_two_processes_counting_at_once_lose_nothing(sandbox):
    """Two real processes add 300 calls each to the same rows, starting the same instant
    (the day's first call included, so both may try to create the row)."""
    start = time.time() + 4  # both are up by then: Django starts in about a second
    script = (
        "import time\n"
        "from bot.services import x_usage\n"
        f"time.sleep(max(0, {start} - time.time()))\n"
        "for _ in range(300):\n"
        "    x_usage.record('search_recent', units=2, unit_price_usd=0.005)\n"
        "    x_usage.record('user_mentions', unit_price_usd=0.001)\n"
    )
    env = worker_env(sandbox)
    workers = [
        subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", script],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], errors
    assert not any("not counted" in text for text in errors), errors
    usage = x_usage.usage_today()
    assert usage.by_endpoint["search_recent"] == x_usage.EndpointUsage(600, 1200, 6.0)
    assert usage.by_endpoint["user_mentions"] == x_usage.EndpointUsage(600, 0, 0.0)


def test_days_are_utc_days_whatever_the_owners_time_zone(settings):
    settings.TIME_ZONE = "Pacific/Kiritimati"  # UTC+14: already tomorrow locally
    late = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    x_usage.record("me", units=1, unit_price_usd=0.01, now=late)
    x_usage.record("me", units=1, unit_price_usd=0.01, now=late + timedelta(minutes=31))
    assert x_usage.usage_today(late).calls == 1
    assert x_usage.usage_today(late).day.isoformat() == "2026-03-01"
    assert x_usage.usage_today(late + timedelta(hours=1)).calls == 1
    assert x_usage.next_day_starts(late) == datetime(2026, 3, 2, tzinfo=UTC)


# --- the budget ---------------------------------------------------------------------------


def budget_alerts() -> list[AlertEvent]:
    return list(AlertEvent.objects.filter(kind=AlertKind.X_BUDGET_REACHED))


def test_no_budget_is_never_reached(settings):
    settings.X_DAILY_BUDGET_USD = None
    x_usage.record("search_recent", units=10_000, unit_price_usd=0.005)
    assert not x_usage.budget_reached()


def morning() -> datetime:
    """08:00 UTC today: a day with hours left in it, whenever the test runs."""
    return datetime.combine(datetime.now(UTC).date(), dt_time(8), tzinfo=UTC)


@time_machine.travel(morning())
def test_the_budget_stops_discovery_not_publishing_with_one_alert_and_tomorrow_it_reads(
    pipeline, settings
):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    spent = x_usage.usage_today().cost_usd
    settings.X_DAILY_BUDGET_USD = spent  # reached exactly: that is enough to stop
    assert x_usage.budget_reached()
    alice_reads = reads_of(pipeline, "alice")
    new_post = pipeline.x.publish("alice", "a new post about django, unread today")

    run_pipeline()
    assert discovered(post_id).status == Status.POSTED, "publishing goes on"
    assert len(pipeline.x.replies_to(post_id)) == 1
    assert reads_of(pipeline, "alice") == alice_reads, "no discovery read once it is spent"
    assert requests_to(pipeline.x, "user_mentions") == 1
    assert not QueuedTweet.objects.filter(target_tweet_id=new_post).exists()
    [alert] = budget_alerts()
    assert alert.subject == str(x_usage.day_of())
    assert "discovery stops until 00:00 UTC" in alert.message

    # Later the same day, past the alert cooldown: still stopped, still one alert.
    with time_machine.travel(timezone.now() + timedelta(hours=2)):
        run_pipeline()
        assert reads_of(pipeline, "alice") == alice_reads
    assert len(budget_alerts()) == 1

    tomorrow = x_usage.next_day_starts() + timedelta(minutes=1)
    with time_machine.travel(tomorrow):
        assert not x_usage.budget_reached(), "a new UTC day, a new budget"
        run_pipeline()
        assert reads_of(pipeline, "alice") == alice_reads + 1
        assert QueuedTweet.objects.filter(target_tweet_id=new_post).exists()
    assert len(budget_alerts()) == 1


def test_the_budget_is_looked_at_before_every_page(pipeline, settings):
    """A long timeline is paid for page by page: reading stops at the page that spends
    the budget, and the cursor keeps what was read, to go on tomorrow."""
    pipeline.x.publish("alice", "a first post about django")
    run_pipeline()  # alice resolved, cursors set
    for n in range(250):
        pipeline.x.publish("alice", f"post {n} about django")
    spent = x_usage.usage_today().cost_usd
    settings.X_DAILY_BUDGET_USD = spent + 0.4  # less than one page of 100 posts ($0.50)
    before = reads_of(pipeline, "alice")
    run_pipeline()
    assert reads_of(pipeline, "alice") == before + 1, "one page, then the budget is spent"
    assert QueuedTweet.objects.filter(text__startswith="post ").count() == 100
    assert len(budget_alerts()) == 1


# --- /status ------------------------------------------------------------------------------


def status_text(sandbox) -> str:
    sandbox.telegram.send_user_message("/status")
    call_command("telegram_bot", "--once", stdout=io.StringIO())
    answers = [
        m
        for m in sandbox.telegram.bot_messages()
        if (m.get("reply_to_message") or {}).get("text") == "/status"
    ]
    assert answers, "no answer to /status"
    return answers[-1]["text"]


def test_status_shows_x_calls_and_cost_today_and_the_budget(pipeline, settings):
    settings.X_DAILY_BUDGET_USD = None
    x_usage.record("search_recent", units=100, unit_price_usd=0.005)
    x_usage.record("search_recent", units=0, unit_price_usd=0.005)
    assert "X today (UTC): 2 calls, about $0.50 (no daily budget)" in status_text(pipeline)

    settings.X_DAILY_BUDGET_USD = 5.0
    assert "X today (UTC): 2 calls, about $0.50 of the $5.00 budget" in status_text(pipeline)

    settings.X_DAILY_BUDGET_USD = 0.5
    assert "budget; reached: discovery waits until 00:00 UTC" in status_text(pipeline)
