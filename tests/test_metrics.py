"""/metrics: Prometheus text computed from shared state, the same from every web process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from bot.models import FailedTweet, FailedTweetStatus, QueuedTweet, Source, Status
from bot.services import x_usage
from bot.services.heartbeat import beat
from resilience import CircuitBreaker, CircuitOpenError, get_breaker
from resilience.alerts import AlertKind
from resilience.calls import calls_add, calls_by_breaker
from resilience.errors import ErrorKind, ServiceError, is_service_failure
from resilience.models import AlertEvent, AlertStatus
from resilience.stores import DatabaseStore
from tests.test_health import GENEROUS, web_process, worker_env

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
ALLOWED_LABELS = {"service", "state", "outcome", "kind", "status", "source", "endpoint"}


def scrape(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def get_metrics(client: Client | None = None, **headers: str) -> Samples:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return scrape(response.content.decode())


def unwell() -> None:
    raise ServiceError("connection refused", kind=ErrorKind.TRANSIENT, service="x")


def item_refused() -> None:
    raise ServiceError("400: bad reply", kind=ErrorKind.PERMANENT, service="x")


def queued(post_id: str, status: Status) -> QueuedTweet:
    now = timezone.now()
    approved = {"approved_at": now, "approved_by": "owner"} if status != Status.NEW else {}
    return QueuedTweet.objects.create(
        target_tweet_id=post_id,
        author_id="42",
        author_username="alice",
        text="a post",
        tweet_created_at=now,
        source=Source.MENTION,
        status=status,
        **approved,
    )


def seed_shared_state() -> None:
    """Rows and breaker state with known numbers (see ``EXPECTED``)."""
    for i in range(3):
        queued(f"new-{i}", Status.NEW)
    for i in range(2):
        queued(f"posted-{i}", Status.POSTED)
    failed = queued("failed-0", Status.FAILED)
    FailedTweet.objects.create(
        queued_tweet=failed,
        target_tweet_id=failed.target_tweet_id,
        stage="publish",
        error="x",
        error_kind="permanent",
        status=FailedTweetStatus.EXHAUSTED,
    )
    AlertEvent.objects.create(
        kind=AlertKind.WORKER_SILENT,
        subject="django-q2 workers",
        message="silent",
        status=AlertStatus.SENT,
        repeats=4,
    )
    AlertEvent.objects.create(
        kind=AlertKind.WORKER_SILENT, subject="django-q2 workers", message="silent", repeats=1
    )
    calls_add("twitter_api", ok=7, rejected=2, last_ok_at=1_800_000_000.0)
    breaker = get_breaker("ai_service")
    for _ in range(3):  # its threshold: it opens
        with pytest.raises(ServiceError):
            breaker.call(unwell)
    x_usage.record("user_tweets", calls=2, units=30, unit_price_usd=0.005)
    cache.clear()
    beat(now=1_800_000_123.0)


EXPECTED = {
    ("replyguy_queue_tweets", (("status", "new"),)): 3.0,
    ("replyguy_queue_tweets", (("status", "posted"),)): 2.0,
    ("replyguy_queue_tweets", (("status", "failed"),)): 1.0,
    ("replyguy_queue_tweets", (("status", "pending"),)): 0.0,
    ("replyguy_dead_letters", (("status", "exhausted"),)): 1.0,
    ("replyguy_dead_letters", (("status", "pending"),)): 0.0,
    ("replyguy_publish_lag_seconds", ()): 0.0,
    ("replyguy_worker_heartbeat_timestamp_seconds", ()): 1_800_000_123.0,
    ("replyguy_breaker_state", (("service", "ai_service"), ("state", "open"))): 1.0,
    ("replyguy_breaker_state", (("service", "ai_service"), ("state", "closed"))): 0.0,
    ("replyguy_breaker_state", (("service", "twitter_api"), ("state", "closed"))): 1.0,
    ("replyguy_breaker_opened_total", (("service", "ai_service"),)): 1.0,
    ("replyguy_service_calls_total", (("outcome", "failure"), ("service", "ai_service"))): 3.0,
    ("replyguy_service_calls_total", (("outcome", "ok"), ("service", "twitter_api"))): 7.0,
    ("replyguy_service_calls_total", (("outcome", "rejected"), ("service", "twitter_api"))): 2.0,
    ("replyguy_service_last_success_timestamp_seconds", (("service", "twitter_api"),)): (
        1_800_000_000.0
    ),
    ("replyguy_alerts_raised_total", (("kind", "worker_silent"),)): 2.0,
    ("replyguy_alerts_sent_total", (("kind", "worker_silent"),)): 1.0,
    ("replyguy_alerts_suppressed_total", (("kind", "worker_silent"),)): 5.0,
    ("replyguy_alerts_undelivered", (("kind", "worker_silent"), ("status", "pending"))): 1.0,
    # ai_service opening raised its own alert, waiting for the notify task.
    ("replyguy_alerts_undelivered", (("kind", "circuit_breaker_open"), ("status", "pending"))): (
        1.0
    ),
    ("replyguy_x_api_calls_today", (("endpoint", "user_tweets"),)): 2.0,
    ("replyguy_x_api_units_today", (("endpoint", "user_tweets"),)): 30.0,
    ("replyguy_x_api_cost_today_usd", (("endpoint", "user_tweets"),)): 0.15,
    ("replyguy_scrape_source_up", (("source", "pipeline"),)): 1.0,
}


def expected_in(samples: Samples) -> dict:
    return {key: samples.get(key) for key in EXPECTED}


# --- what the numbers say --------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_say_what_the_shared_state_says():
    seed_shared_state()
    samples = get_metrics()
    assert expected_in(samples) == EXPECTED
    assert value(samples, "replyguy_publishing_paused") == 0.0


@pytest.mark.django_db
def test_names_follow_prometheus_conventions_and_no_label_names_a_tweet():
    seed_shared_state()
    text = Client().get("/metrics").content.decode()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("replyguy_"), family.name
        if family.type == "counter":
            assert all(sample.name.endswith("_total") for sample in family.samples)
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
    # One family per name: the exposition format allows no second TYPE line.
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    assert "failed-0" not in text


@pytest.mark.django_db
def test_the_publish_lag_is_the_oldest_due_replys_wait():
    row = queued("due-0", Status.APPROVED)
    now = timezone.now()
    QueuedTweet.objects.filter(pk=row.pk).update(
        scheduled_at=now - timedelta(minutes=30), next_attempt_at=now - timedelta(minutes=10)
    )
    lag = value(get_metrics(), "replyguy_publish_lag_seconds")
    assert 600 <= lag < 660  # due since its next attempt time, not since it was scheduled


@pytest.mark.django_db
def test_a_breaker_in_one_processs_memory_is_left_out():
    get_breaker("database").force_open()  # process memory without Redis
    samples = get_metrics()
    assert not [key for key in samples if ("service", "database") in key[1]]


# --- calls counted across processes ----------------------------------------------------------


@pytest.mark.django_db
def test_calls_of_two_processes_add_up_and_the_latest_answer_wins(clock):
    def process() -> CircuitBreaker:
        return CircuitBreaker(
            "twitter_api",
            failure_on=is_service_failure,
            store=DatabaseStore(),
            clock=clock,
            report_every=30,
        )

    first, second = process(), process()
    started = clock()
    for _ in range(5):
        first.call(lambda: None)
    clock.advance(10)
    answered_at = clock()
    second.call(lambda: None)
    with pytest.raises(ServiceError):
        second.call(item_refused)  # the service answered: ok for the breaker
    assert calls_by_breaker() == {}, "nothing is written on the success path"

    clock.advance(31)  # both due: each process's next call reports what it counted
    first.call(lambda: None)
    second.call(lambda: None)
    counted = calls_by_breaker()["twitter_api"]
    assert counted.ok == 7
    assert counted.last_ok_at == datetime.fromtimestamp(answered_at, UTC)
    assert started < answered_at

    # Refusals are counted too; a failure sends the answers counted before it at once.
    first.force_open()
    with pytest.raises(CircuitOpenError):
        first.call(lambda: None)
    first.reset()
    with pytest.raises(ServiceError):
        first.call(unwell)
    counted = calls_by_breaker()["twitter_api"]
    assert (counted.ok, counted.rejected) == (8, 1)


def test_counts_the_store_refused_are_sent_with_the_next_report(clock):
    stored: list[int] = []
    answers = iter([False, True])

    def reporter(name: str, *, ok: int, rejected: int, last_ok_at: float | None) -> bool:
        accepted = next(answers)
        if accepted:
            stored.append(ok)
        return accepted

    breaker = CircuitBreaker(
        "any", failure_on=(OSError,), clock=clock, reporter=reporter, report_every=30
    )
    for _ in range(3):
        breaker.call(lambda: None)
    clock.advance(31)
    breaker.call(lambda: None)  # reports 3: refused
    clock.advance(31)
    breaker.call(lambda: None)  # reports 3 + 1
    assert stored == [4]


@pytest.mark.django_db
def test_a_private_breaker_reports_nothing(clock):
    breaker = CircuitBreaker("twitter_api", failure_on=(OSError,), clock=clock)  # memory store
    breaker.call(lambda: None)
    clock.advance(60)
    breaker.call(lambda: None)
    assert calls_by_breaker() == {}


# --- two real web processes -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_metrics_are_the_same_from_two_web_processes(sandbox):
    seed_shared_state()
    env = worker_env(sandbox)
    with web_process(env) as (first, _), web_process(env) as (second, _):
        scrapes = [
            scrape(requests.get(f"{url}/metrics", timeout=GENEROUS).text)
            for url in (first, second, first, second)
        ]
    assert scrapes[0] == scrapes[1] == scrapes[2] == scrapes[3]
    # And they are the shared state's numbers, not each process's own.
    assert expected_in(scrapes[0]) == EXPECTED


# --- access ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_bearer_token_is_required_when_set(settings):
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    client = Client()
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert "s3cret" not in refused.content.decode()
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="s3cret-scrape-token").status_code == 401
    get_metrics(client, HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")


@pytest.mark.django_db
def test_without_a_token_metrics_are_open():
    get_metrics()
