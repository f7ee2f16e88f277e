"""Alerts: written with the work that found them, once per cooldown across processes, sent
through the notifier with backoff, and told when a breaker opens and when it recovers."""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from resilience import ErrorKind, ServiceError, get_breaker
from resilience.alerts import (
    STALE_ERROR,
    AlertKind,
    NotifierUnavailable,
    deliver_alerts,
    format_alert,
    raise_alert,
)
from resilience.models import AlertCooldown, AlertEvent, AlertStatus, BreakerRecord
from tests.conftest import on_postgres
from tests.helpers import ROOT, environ_without, free_port, until

T0 = datetime(2025, 11, 26, 14, 30, tzinfo=UTC)


class Phone:
    """The notifier these tests install: keeps the texts it is given, or fails as told."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.texts: list[str] = []
        self.calls = 0
        self.failure: Exception | None = None
        self.fails_for: Callable[[str], bool] = lambda text: True

    def __call__(self, text: str) -> str:
        self.calls += 1
        if self.failure is not None and self.fails_for(text):
            raise self.failure
        self.texts.append(text)
        return f"msg-{len(self.texts)}"


PHONE = Phone()


@pytest.fixture
def phone(settings) -> Iterator[Phone]:
    settings.ALERT_NOTIFIER = "tests.test_alerts.PHONE"
    settings.TIME_ZONE = "UTC"
    PHONE.reset()
    yield PHONE
    PHONE.reset()


def alert(
    subject: str = "x", *, at: datetime = T0, kind: str = AlertKind.MULTIPLE_FAILURES
) -> AlertEvent | None:
    return raise_alert(kind=kind, subject=subject, message=f"trouble with {subject}", now=at)


def fresh(event: AlertEvent) -> AlertEvent:
    return AlertEvent.objects.get(id=event.id)


# --- the cooldown ---------------------------------------------------------------------------


def test_repeats_within_the_cooldown_are_counted_and_told_with_the_next_alert(db, settings):
    settings.ALERT_COOLDOWN_MINUTES = 60
    settings.TIME_ZONE = "UTC"
    first = alert()
    assert first is not None
    assert alert(at=T0 + timedelta(minutes=10)) is None
    assert alert(at=T0 + timedelta(minutes=59)) is None
    other = alert("y", at=T0 + timedelta(minutes=5))
    assert other is not None, "another subject has its own cooldown"
    assert fresh(first).repeats == 2
    assert AlertEvent.objects.count() == 2

    second = alert(at=T0 + timedelta(minutes=61))
    assert second is not None
    assert (second.suppressed_before, second.suppressed_since) == (2, T0)
    assert "Repeats: 2 more like it since 2025-11-26 14:30:00 UTC" in format_alert(second)
    assert alert(at=T0 + timedelta(minutes=62)) is None
    assert fresh(second).repeats == 1
    assert fresh(first).repeats == 2, "a repeat after the window is the new alert's"

    third = alert(at=T0 + timedelta(hours=5))
    assert (third.suppressed_before, third.repeats) == (1, 0)
    fourth = alert(at=T0 + timedelta(hours=7))
    assert fourth.suppressed_before == 0
    assert "Repeats" not in format_alert(fourth)


RACE = """
import os, pathlib, time
from django.db import connection
from resilience.alerts import raise_alert
barrier = pathlib.Path(os.environ["BARRIER"])
connection.ensure_connection()
(barrier / f"ready-{os.getpid()}").touch()
while not (barrier / "go").exists():
    time.sleep(0.002)
started = time.time()
made = sum(
    raise_alert(kind="multiple_failures", subject="race", message="again") is not None
    for _ in range(int(os.environ["RAISES"]))
)
print("raced", made, started, time.time())
"""


def database_url() -> str:
    """This test's database, for another process."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        assert "memory" not in str(db["NAME"] or "memory"), "other processes need a file"
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.django_db(transaction=True)
def test_a_thousand_raises_from_two_processes_at_once_make_exactly_one_alert(tmp_path):
    env = environ_without("PYTEST")
    env.update(
        DATABASE_URL=database_url(),
        DEBUG="true",
        REDIS_URL="",
        LOG_LEVEL="ERROR",
        BARRIER=str(tmp_path),
        RAISES="500",
        ALERT_COOLDOWN_MINUTES="60",
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", RACE],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    ready = until(lambda: len(list(tmp_path.glob("ready-*"))) == 2, timeout=60)
    (tmp_path / "go").touch()
    outputs = [worker.communicate(timeout=180) for worker in workers]
    assert ready, outputs
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    runs = [[float(n) for n in out.split("raced")[-1].split()] for out, _ in outputs]
    (made_a, start_a, end_a), (made_b, start_b, end_b) = runs
    assert start_a < end_b, "the two processes raised at the same time"
    assert start_b < end_a, "the two processes raised at the same time"

    assert made_a + made_b == 1
    event = AlertEvent.objects.get(kind="multiple_failures", subject="race")
    assert event.repeats == 999, "every other raise is counted"
    assert AlertCooldown.objects.filter(kind="multiple_failures", subject="race").count() == 1


# --- the outbox -----------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_an_alert_raised_in_work_that_rolls_back_is_never_recorded(db):
    def work_that_fails() -> None:
        with transaction.atomic():
            assert alert() is not None
            raise Boom

    with pytest.raises(Boom):
        work_that_fails()
    assert not AlertEvent.objects.exists()
    assert not AlertCooldown.objects.exists()
    assert alert() is not None, "the rolled-back alert does not silence the next one"

    with transaction.atomic():
        BreakerRecord.objects.create(name="work")
        event = alert("with the work", at=T0 + timedelta(minutes=1))
    assert AlertEvent.objects.filter(id=event.id).exists()


@pytest.mark.postgres
def test_a_failing_alert_write_never_breaks_the_callers_transaction(db, caplog):
    with transaction.atomic():
        BreakerRecord.objects.create(name="before")
        # PostgreSQL refuses a kind longer than its column: the write fails inside.
        assert raise_alert(kind="k" * 100, subject="s", message="m") is None
        BreakerRecord.objects.create(name="after")
    assert set(BreakerRecord.objects.values_list("name", flat=True)) >= {"before", "after"}
    assert not AlertEvent.objects.exists()
    failures = [r for r in caplog.records if r.name == "resilience.alerts"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is None, "one line, no traceback"


# --- the text -------------------------------------------------------------------------------

SEED = """🚨 CRITICAL ALERT

Type: `circuit_breaker_open`
Time: 2025-11-26 14:30:00 UTC
Message: AI service circuit breaker opened

Details:
  • service: `ai`
  • error: `Connection timeout`
  • failures: `5`"""


def test_the_text_has_the_shape_of_the_original_alerts(settings):
    settings.TIME_ZONE = "UTC"
    event = AlertEvent(
        kind=AlertKind.CIRCUIT_BREAKER_OPEN,
        subject="ai",
        message="AI service circuit breaker opened",
        details={"service": "ai", "error": "Connection timeout", "failures": 5},
        created_at=T0,
    )
    assert format_alert(event) == SEED


def test_a_recovery_in_local_time_with_repeats_and_nested_details(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    event = AlertEvent(
        kind=AlertKind.BREAKER_RECOVERED,
        subject="ai_service",
        message="ai_service circuit breaker closed",
        details={"calls": [1, 2], "limits": {"hour": 3}, "api_key": "sk-live-123"},
        created_at=T0,
        suppressed_before=999,
        suppressed_since=T0 - timedelta(hours=2),
    )
    assert format_alert(event).splitlines() == [
        "✅ RECOVERED",
        "",
        "Type: `breaker_recovered`",
        "Time: 2025-11-26 15:30:00 Europe/Berlin",
        "Message: ai_service circuit breaker closed",
        "Repeats: 999 more like it since 2025-11-26 13:30:00 Europe/Berlin, held back by the "
        "cooldown",
        "",
        "Details:",
        "  • calls: `[1, 2]`",
        '  • limits: `{"hour": 3}`',
        "  • api_key: `•••`",
    ]


def test_credentials_are_masked_before_they_are_stored(db, settings):
    settings.X_API_KEY = "xk-0123456789abcdef"
    event = raise_alert(
        kind=AlertKind.CONFIGURATION_REFUSED,
        subject="x",
        message=f"X refused key {settings.X_API_KEY}",
        details={"token": "t-1", "request": {"password": "pw", "url": "/2/tweets"}, "at": T0},
    )
    stored = fresh(event)
    assert settings.X_API_KEY not in stored.message
    assert stored.details == {
        "token": "•••",
        "request": {"password": "•••", "url": "/2/tweets"},
        "at": "2025-11-26 14:30:00+00:00",
    }


def test_every_kind_the_bot_raises_is_named_once():
    assert len({kind.value for kind in AlertKind}) == len(AlertKind.__members__)
    used = set()
    for path in (ROOT / "bot").rglob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r'raise_alert\(\s*kind="(\w+)"', text))
        used |= {AlertKind[name].value for name in re.findall(r"AlertKind\.(\w+)", text)}
    assert used, "the bot raises alerts"
    assert used <= {kind.value for kind in AlertKind}


# --- delivery -------------------------------------------------------------------------------


def test_due_alerts_are_sent_oldest_first_with_the_message_id(db, phone):
    newer = alert("newer", at=T0 + timedelta(minutes=1))
    older = alert("older")
    assert deliver_alerts(now=T0 + timedelta(minutes=2)) == {"sent": 2, "failed": 0, "waiting": 0}
    assert phone.texts == [format_alert(older), format_alert(newer)]
    sent = fresh(older)
    assert (sent.status, sent.delivered_ref) == (AlertStatus.SENT, "msg-1")
    assert sent.delivered_at == T0 + timedelta(minutes=2)
    assert deliver_alerts(now=T0 + timedelta(minutes=3))["sent"] == 0
    assert len(phone.texts) == 2, "nothing is sent twice"


def test_a_failing_notifier_spends_attempts_with_backoff_then_gives_up(db, phone, caplog):
    event = alert()
    phone.failure = RuntimeError("Telegram answered 500\nbad gateway")
    now = T0
    for attempt, wait in enumerate([1, 2, 4, 8], start=1):
        assert deliver_alerts(now=now) == {"sent": 0, "failed": 0, "waiting": 1}
        row = fresh(event)
        assert (row.status, row.attempts) == (AlertStatus.PENDING, attempt)
        assert row.next_attempt_at == now + timedelta(minutes=wait)
        assert row.last_error == "Telegram answered 500 bad gateway"
        calls = phone.calls
        deliver_alerts(now=row.next_attempt_at - timedelta(seconds=1))
        assert phone.calls == calls, "not tried again before its time"
        now = row.next_attempt_at
    assert deliver_alerts(now=now) == {"sent": 0, "failed": 1, "waiting": 0}
    row = fresh(event)
    assert (row.status, row.attempts, row.next_attempt_at) == (AlertStatus.FAILED, 5, None)
    assert phone.texts == []
    assert all(record.exc_info is None for record in caplog.records), "one line, no traceback"


def test_an_unavailable_channel_keeps_every_alert_and_ends_the_pass(db, phone):
    events = [alert(name) for name in ("a", "b", "c")]
    phone.failure = NotifierUnavailable("Telegram is not configured")
    assert deliver_alerts(now=T0) == {"sent": 0, "failed": 0, "waiting": 3}
    assert phone.calls == 1, "the pass stops at the first refusal"
    for event in events:
        row = fresh(event)
        assert (row.status, row.attempts, row.next_attempt_at) == (AlertStatus.PENDING, 0, None)

    phone.failure = None
    assert deliver_alerts(now=T0 + timedelta(minutes=1)) == {"sent": 3, "failed": 0, "waiting": 0}


def test_alerts_a_day_old_are_given_up_on_not_sent(db, phone):
    stale = alert("stale", at=T0 - timedelta(hours=25))
    today = alert("today")
    assert deliver_alerts(now=T0) == {"sent": 1, "failed": 1, "waiting": 0}
    row = fresh(stale)
    assert (row.status, row.last_error) == (AlertStatus.FAILED, STALE_ERROR)
    assert phone.texts == [format_alert(today)]


def test_one_bad_alert_never_stops_the_others(db, phone):
    alert("first")
    second = alert("second", at=T0 + timedelta(seconds=1))
    phone.failure = ValueError("cannot send this one")
    phone.fails_for = lambda text: "trouble with first" in text
    assert deliver_alerts(now=T0) == {"sent": 1, "failed": 0, "waiting": 1}
    assert phone.texts == [format_alert(second)]


def test_a_dead_deliverers_claim_is_taken_back_when_its_lease_runs_out(db, phone):
    event = alert()
    AlertEvent.objects.filter(id=event.id).update(
        status=AlertStatus.SENDING, next_attempt_at=T0 + timedelta(minutes=5)
    )
    assert deliver_alerts(now=T0 + timedelta(minutes=4))["sent"] == 0
    assert deliver_alerts(now=T0 + timedelta(minutes=6))["sent"] == 1
    assert fresh(event).status == AlertStatus.SENT


def test_a_notifier_that_cannot_be_loaded_leaves_alerts_waiting(db, settings, phone):
    settings.ALERT_NOTIFIER = "tests.no_such_module.send"
    event = alert()
    assert deliver_alerts(now=T0) == {"sent": 0, "failed": 0, "waiting": 1}
    assert fresh(event).status == AlertStatus.PENDING


def test_the_admin_lists_alerts_and_sends_failed_ones_again(admin_client, phone):
    failed, sent = alert("failed"), alert("sent")
    AlertEvent.objects.filter(id=failed.id).update(
        status=AlertStatus.FAILED, attempts=5, last_error="HTTP 500"
    )
    AlertEvent.objects.filter(id=sent.id).update(status=AlertStatus.SENT)
    url = "/admin/resilience/alertevent/"
    page = admin_client.get(url, {"status__exact": "failed"})
    assert page.status_code == 200
    assert "Not delivered" in page.content.decode()
    assert list(page.context["cl"].queryset) == [fresh(failed)]

    admin_client.post(
        url, {"action": "deliver_again", "_selected_action": [failed.id, sent.id]}, follow=True
    )
    row = fresh(failed)
    assert (row.status, row.attempts, row.last_error) == (AlertStatus.PENDING, 0, "")
    assert fresh(sent).status == AlertStatus.SENT
    assert admin_client.post(f"{url}{failed.id}/delete/").status_code == 403


# --- circuit breakers -------------------------------------------------------------------------


def outage() -> None:
    raise ServiceError("model server unreachable", kind=ErrorKind.TRANSIENT, service="llm")


def calls(breaker, fn: Callable[[], object], times: int) -> None:
    for _ in range(times):
        with contextlib.suppress(Exception):
            breaker.call(fn)


def alerts_about(name: str) -> list[tuple[str, int]]:
    return list(
        AlertEvent.objects.filter(subject=name).order_by("id").values_list("kind", "repeats")
    )


def test_a_breaker_that_opens_and_recovers_tells_the_owner_once_each(db, settings):
    settings.TIME_ZONE = "UTC"
    breaker = get_breaker("ai_service")  # opens after 3 failures, for 60 s; 2 trial calls
    with time_machine.travel(T0, tick=False) as clock:
        calls(breaker, outage, 3)
        assert breaker.state == "open"
        calls(breaker, outage, 5)  # refused while open: no new transition
        opened = AlertEvent.objects.get(kind=AlertKind.CIRCUIT_BREAKER_OPEN)
        assert opened.subject == "ai_service"
        assert opened.details == {
            "service": "ai_service",
            "failures": 3,
            "error": "ServiceError: llm transient: model server unreachable",
            "reopens_at": "2025-11-26T14:31:00+00:00",
        }
        assert "refused until 2025-11-26 14:31:00 UTC" in opened.message

        clock.shift(61)
        calls(breaker, outage, 1)  # the trial call fails: open again, within the cooldown
        assert alerts_about("ai_service") == [(AlertKind.CIRCUIT_BREAKER_OPEN, 1)]

        clock.shift(4 * 60)
        calls(breaker, lambda: "fine", 2)
        assert breaker.state == "closed"
    assert alerts_about("ai_service") == [
        (AlertKind.CIRCUIT_BREAKER_OPEN, 1),
        (AlertKind.BREAKER_RECOVERED, 0),
    ]
    recovered = AlertEvent.objects.get(kind=AlertKind.BREAKER_RECOVERED)
    assert "after being open for 5 min (since 2025-11-26 14:30:00 UTC)" in recovered.message
    assert format_alert(recovered).startswith("✅ RECOVERED")


def test_an_operators_controls_raise_no_alert(db):
    breaker = get_breaker("twitter_api")
    breaker.force_open()
    breaker.reset()
    breaker.disable()
    calls(breaker, outage, 10)
    breaker.force_closed()
    calls(breaker, outage, 10)
    breaker.reset()
    assert not AlertEvent.objects.exists()


@contextlib.contextmanager
def database_unreachable(tmp_path: Path) -> Iterator[None]:
    """Point this process's connection at nothing: every query fails to connect."""
    params = connection.settings_dict
    saved = dict(params)
    connection.close()
    if on_postgres():
        params["HOST"], params["PORT"] = "127.0.0.1", free_port()
    else:
        params["NAME"] = str(tmp_path / "gone" / "db.sqlite3")
    try:
        yield
    finally:
        connection.close()
        params.update(saved)


@pytest.mark.django_db(transaction=True)
def test_the_database_breakers_alert_waits_for_the_database_and_says_so(tmp_path, caplog):
    breaker = get_breaker("database")  # 3 failures, 30 s, 2 trial calls; never in the database

    def lost() -> None:
        raise OperationalError("server closed the connection unexpectedly")

    with time_machine.travel(timezone.now(), tick=False) as clock:
        with database_unreachable(tmp_path):
            calls(breaker, lost, 3)
        assert breaker.state == "open"
        assert not AlertEvent.objects.exists(), "nowhere to write it"
        notes = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.name for r in notes] == ["resilience.alerts"]
        assert "not recorded" in notes[0].getMessage()
        assert notes[0].exc_info is None

        clock.shift(31)
        calls(breaker, lambda: "fine", 2)
        assert breaker.state == "closed"
    recovered = AlertEvent.objects.get()
    assert (recovered.kind, recovered.subject) == (AlertKind.BREAKER_RECOVERED, "database")
    assert "database is reachable again after being unreachable for 31 s" in recovered.message
