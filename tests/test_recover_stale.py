"""``manage.py recover_stale``: every claim a dead worker left behind settled by its
stage's rules, a dry run that changes nothing, the JSON report, and the run at a
worker's start."""

from __future__ import annotations

import io
import itertools
import json
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from bot.apps import recover_on_cluster_start
from bot.models import ApprovalMessage, FailedTweet, FailedTweetStatus, QueuedTweet, Status
from bot.pacing import HOUR
from bot.services import recovery
from bot.services.dead_letters import Stage, fail
from sandbox.x_api import OUR_USERNAME
from tests.helpers import (
    ROOT,
    approved,
    discovered,
    environ_without,
    run_pipeline,
    summon,
    until,
    worker_env,
)

pytestmark = pytest.mark.django_db

ACTIONS = [
    "publishing_marked_unknown",
    "unknown_to_judge",
    "drafts_requeued",
    "dead_letters_released",
    "dead_letters_resolved",
    "approval_messages_released",
]


def recover(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("recover_stale", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def died_publishing(tweet: QueuedTweet, *, minutes_ago: int = 10) -> QueuedTweet:
    """The worker that claimed ``tweet`` and sent it to X died: its lease ran out."""
    claimed = timezone.now() - timedelta(minutes=minutes_ago)
    QueuedTweet.objects.filter(id=tweet.id).update(
        status=Status.PUBLISHING,
        publish_request_id=uuid.uuid4(),
        claimed_at=claimed,
        lease_until=claimed + timedelta(minutes=5),
        sent_at=claimed,
    )
    return QueuedTweet.objects.get(id=tweet.id)


def approved_reply(pipeline) -> tuple[str, QueuedTweet]:
    post_id = summon(pipeline)
    run_pipeline()
    return post_id, approved(post_id)


def queued(n: int, status: Status, **fields: Any) -> list[QueuedTweet]:
    """``n`` rows in ``status`` from distinct authors, made directly (fast)."""
    now = timezone.now()
    base = QueuedTweet.objects.count() + 1
    rows = [
        QueuedTweet(
            target_tweet_id=str(9_000_000 + base + i),
            author_id=str(8_000_000 + base + i),
            author_username=f"author{base + i}",
            text=f"post {i}",
            tweet_created_at=now - timedelta(minutes=30),
            source="mention",
            summoned=True,
            status=status,
            draft=f"reply number {i}" if status != Status.NEW else "",
            approved_at=now - timedelta(hours=1) if status != Status.NEW else None,
            approved_by="owner" if status != Status.NEW else "",
            **fields,
        )
        for i in range(n)
    ]
    QueuedTweet.objects.bulk_create(rows)
    return list(QueuedTweet.objects.filter(target_tweet_id__in=[r.target_tweet_id for r in rows]))


def dead_lettered(tweet: QueuedTweet) -> bool:
    """An approved reply failed at publishing for good: failed, with its dead letter."""
    now = timezone.now()
    return fail(tweet, stage=Stage.PUBLISH, expected=Status.APPROVED, error="e", kind="p", now=now)


# --- publishing leases and unknown outcomes --------------------------------------------------


def test_a_lease_run_out_with_our_reply_on_the_timeline_is_posted_and_not_sent_again(pipeline):
    post_id, tweet = approved_reply(pipeline)
    died_publishing(tweet)
    reply = pipeline.x.publish(OUR_USERNAME, tweet.draft, reply_to=post_id)

    report = recover()
    assert report["actions"]["publishing_marked_unknown"] == 1
    assert report["actions"]["reconciled_posted"] == 1
    tweet.refresh_from_db()
    assert (tweet.status, tweet.reply_tweet_id) == (Status.POSTED, reply)
    assert [r.id for r in pipeline.x.replies_to(post_id)] == [reply]
    run_pipeline()
    assert len(pipeline.x.replies_to(post_id)) == 1


def test_a_lease_run_out_without_our_reply_goes_back_to_approved_at_a_paced_time(
    pipeline, settings
):
    settings.MIN_DELAY_MINUTES, settings.MAX_DELAY_MINUTES = 5, 10
    post_id, tweet = approved_reply(pipeline)
    died_publishing(tweet)
    now = timezone.now()

    report = recover()
    assert report["actions"]["reconciled_requeued"] == 1
    tweet.refresh_from_db()
    assert tweet.status == Status.APPROVED
    assert now + timedelta(minutes=5) <= tweet.scheduled_at <= now + timedelta(minutes=11)
    assert tweet.lease_until is None
    assert pipeline.x.replies_to(post_id) == [], "never judged without reading: nothing sent"
    with time_machine.travel(tweet.scheduled_at + timedelta(seconds=1)):
        run_pipeline()
    assert len(pipeline.x.replies_to(post_id)) == 1
    assert discovered(post_id).status == Status.POSTED


def test_fifty_requeued_replies_are_spread_by_the_pacing_rules_not_all_due_at_once(
    pipeline, settings
):
    settings.MIN_DELAY_MINUTES = settings.MAX_DELAY_MINUTES = 0
    settings.MIN_SPACING_MINUTES = 3
    settings.MAX_POSTS_PER_HOUR = 10
    now = timezone.now()
    queued(
        50,
        Status.PUBLISHING,
        claimed_at=now - timedelta(minutes=20),
        lease_until=now - timedelta(minutes=15),
        sent_at=now - timedelta(minutes=20),
    )

    report = recover()
    assert report["actions"]["reconciled_requeued"] == 50
    times = sorted(
        QueuedTweet.objects.filter(status=Status.APPROVED).values_list("scheduled_at", flat=True)
    )
    assert len(times) == 50
    assert sum(when <= now + timedelta(minutes=1) for when in times) <= 1, "not all due at once"
    assert all(b - a >= timedelta(minutes=3) for a, b in itertools.pairwise(times))
    for start in times:
        assert sum(start <= when < start + HOUR for when in times) <= 10, "the hourly cap"
    assert not any(name == "create_tweet" for name, _ in pipeline.x.requests)


def test_a_live_lease_waits_however_old_its_claim_until_it_runs_out(pipeline):
    """A claim older than --timeout-minutes is stale, but while its lease runs a call
    may still be in flight: it is marked unknown and judged only after the lease."""
    post_id, tweet = approved_reply(pipeline)
    QueuedTweet.objects.filter(id=tweet.id).update(
        status=Status.PUBLISHING,
        publish_request_id=uuid.uuid4(),
        claimed_at=timezone.now() - timedelta(minutes=20),
        lease_until=timezone.now() + timedelta(minutes=1),
    )
    assert recover()["actions"]["publishing_marked_unknown"] == 0, "20 min < the default 30"

    report = recover("--timeout-minutes", "15")
    assert report["actions"]["publishing_marked_unknown"] == 1
    assert report["actions"]["unknown_to_judge"] == 0
    assert report["waiting"] == {"unknown": 1}
    assert discovered(post_id).status == Status.UNKNOWN

    with time_machine.travel(timezone.now() + timedelta(minutes=3)):
        report = recover()
    assert report["actions"]["reconciled_requeued"] == 1, "not on our timeline: not sent"
    assert discovered(post_id).status == Status.APPROVED
    assert pipeline.x.replies_to(post_id) == []


def test_without_x_the_timeline_step_is_skipped_with_the_reason_and_the_rest_runs(
    sandbox, settings
):
    settings.X_API_KEY = ""
    rows = queued(1, Status.UNKNOWN, lease_until=timezone.now() - timedelta(minutes=10))
    stuck = queued(1, Status.NEW, lease_until=timezone.now() - timedelta(minutes=1))

    report = recover()
    assert report["skipped"] == {"reconcile": "X is not configured: set X_API_KEY"}
    assert report["actions"]["unknown_to_judge"] == 1
    assert report["actions"]["drafts_requeued"] == 1
    assert report["waiting"] == {"unknown": 1}
    assert QueuedTweet.objects.get(id=rows[0].id).status == Status.UNKNOWN
    assert QueuedTweet.objects.get(id=stuck[0].id).lease_until is None


# --- drafts, dead letters, approval messages --------------------------------------------------


def test_a_draft_stuck_under_an_expired_lease_is_queued_again_and_drafted(pipeline):
    post_id = summon(pipeline)
    run_pipeline()  # discovered and drafted: make it look like a drafter died instead
    tweet = discovered(post_id)
    QueuedTweet.objects.filter(id=tweet.id).update(
        status=Status.NEW, draft="", lease_until=timezone.now() - timedelta(seconds=5)
    )
    busy = queued(1, Status.NEW, lease_until=timezone.now() + timedelta(minutes=2))[0]

    assert recover()["actions"]["drafts_requeued"] == 1
    assert discovered(post_id).lease_until is None
    assert QueuedTweet.objects.get(id=busy.id).lease_until is not None, "a live drafter keeps it"
    run_pipeline()
    assert discovered(post_id).status == Status.PENDING


def test_a_dead_letter_stuck_retrying_is_released_and_a_live_retry_left_alone():
    now = timezone.now()
    stuck, live = queued(2, Status.APPROVED)
    for tweet in (stuck, live):
        assert fail(
            tweet, stage=Stage.PUBLISH, expected=Status.APPROVED, error="x", kind="p", now=now
        )
    FailedTweet.objects.update(status=FailedTweetStatus.RETRYING)
    # The live one went back to its stage and waits for its verdict.
    QueuedTweet.objects.filter(id=live.id).update(status=Status.APPROVED)

    report = recover()
    assert report["actions"]["dead_letters_released"] == 1
    failure = FailedTweet.objects.get(queued_tweet=stuck)
    assert failure.status == FailedTweetStatus.PENDING
    assert failure.next_retry_at <= timezone.now()
    assert FailedTweet.objects.get(queued_tweet=live).status == FailedTweetStatus.RETRYING


def test_an_approval_message_that_never_went_out_is_released_and_the_outbox_sends_it(pipeline):
    post_id = summon(pipeline)
    pipeline.telegram.faults.add("sendMessage", "error", status=503, times=100)
    run_pipeline()  # drafted; Telegram down: no message yet
    tweet = discovered(post_id)
    assert tweet.status == Status.PENDING
    ApprovalMessage.objects.update_or_create(
        queued_tweet=tweet,
        defaults={"message_id": None, "sending_until": timezone.now() - timedelta(seconds=1)},
    )
    pipeline.telegram.faults.clear()

    assert recover()["actions"]["approval_messages_released"] == 1
    assert ApprovalMessage.objects.get(queued_tweet=tweet).sending_until is None
    run_pipeline()
    assert ApprovalMessage.objects.get(queued_tweet=tweet).message_id is not None


# --- the report, and a dry run --------------------------------------------------------------


def one_of_each(pipeline) -> None:
    """A stale row of every kind: a reply on X and one not, an old unknown, a stuck
    draft, a stuck dead letter, a message never sent."""
    posts = [summon(pipeline, text=f"question number {i} about retries") for i in range(2)]
    run_pipeline()
    for i, post_id in enumerate(posts):
        tweet = died_publishing(approved(post_id))
        if i == 0:  # X made this one before the worker died
            pipeline.x.publish(OUR_USERNAME, tweet.draft, reply_to=post_id)
    queued(1, Status.UNKNOWN, lease_until=timezone.now() - timedelta(minutes=10))
    queued(1, Status.NEW, lease_until=timezone.now() - timedelta(minutes=1))
    failed = queued(1, Status.APPROVED)[0]
    fail(
        failed,
        stage=Stage.PUBLISH,
        expected=Status.APPROVED,
        error="e",
        kind="p",
        now=timezone.now(),
    )
    FailedTweet.objects.filter(queued_tweet=failed).update(status=FailedTweetStatus.RETRYING)
    pending = queued(1, Status.PENDING)[0]
    ApprovalMessage.objects.create(
        queued_tweet=pending, sending_until=timezone.now() - timedelta(minutes=1)
    )


def database_contents() -> dict[str, list[tuple]]:
    """Every row of every table (and every sequence on PostgreSQL), as stored."""
    contents: dict[str, list[tuple]] = {}
    with connection.cursor() as cursor:
        for table in sorted(connection.introspection.table_names()):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            contents[table] = sorted(cursor.fetchall(), key=repr)
        if connection.vendor == "postgresql":
            cursor.execute("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
            contents["(sequences)"] = cursor.fetchall()
    return contents


def test_a_dry_run_changes_nothing_calls_no_x_and_reports_what_the_real_run_does(pipeline):
    one_of_each(pipeline)
    before = database_contents()
    x_requests = len(pipeline.x.requests)

    dry = recover("--dry-run")
    assert database_contents() == before, "a dry run changes nothing in the database"
    assert len(pipeline.x.requests) == x_requests, "and asks X nothing"
    assert dry["dry_run"] is True
    assert dry["skipped"]["reconcile"].startswith("dry run: our timeline is not read")

    real = recover()
    assert real["dry_run"] is False
    assert {k: dry["actions"][k] for k in ACTIONS} == {k: real["actions"][k] for k in ACTIONS}
    assert dry["actions"] == {
        "publishing_marked_unknown": 2,
        "unknown_to_judge": 3,
        "drafts_requeued": 1,
        "dead_letters_released": 1,
        "dead_letters_resolved": 0,
        "approval_messages_released": 1,
    }
    assert real["actions"]["reconciled_posted"] == 1
    assert real["actions"]["reconciled_requeued"] == 2
    assert dry["waiting"] == real["waiting"] == {"unknown": 0}


def test_the_json_report_has_counts_per_action_and_the_text_a_summary(pipeline):
    one_of_each(pipeline)
    out = io.StringIO()
    call_command("recover_stale", "--dry-run", stdout=out)
    text = out.getvalue()
    assert text.startswith("recover_stale: dry run, nothing changed (timeout 30 min")
    assert "publishing, lease over: marked unknown" in text
    assert "\r" not in text, "no progress bar off a terminal"

    report = recover("--timeout-minutes", "45")
    assert set(report) == {
        "dry_run",
        "timeout_minutes",
        "started_at",
        "actions",
        "skipped",
        "failed",
        "waiting",
        "steps",
        "seconds",
    }
    assert report["timeout_minutes"] == 45
    assert report["skipped"] == report["failed"] == {}
    assert list(report["actions"]) == [
        "publishing_marked_unknown",
        "unknown_to_judge",
        "reconciled_posted",
        "reconciled_requeued",
        "reconciled_redraft",
        "reconciled_failed",
        "reconciled_found_unwanted",
        "drafts_requeued",
        "dead_letters_released",
        "dead_letters_resolved",
        "approval_messages_released",
    ]
    assert all(isinstance(n, int) for n in report["actions"].values())
    assert isinstance(report["seconds"], float)
    assert list(report["steps"]) == [
        "publishing",
        "reconcile",
        "drafts",
        "dead_letters",
        "approval_messages",
    ]


def test_a_terminal_gets_a_progress_bar(pipeline):
    one_of_each(pipeline)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    call_command("recover_stale", stdout=out)
    assert "\rpublishing" in out.getvalue()
    assert "] 2/2" in out.getvalue()


def test_a_bad_timeout_is_refused():
    result = subprocess.run(
        [sys.executable, "manage.py", "recover_stale", "--timeout-minutes", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**environ_without("PYTEST", "DATABASE"), "DEBUG": "true"},
        timeout=60,
    )
    assert result.returncode == 2
    assert "--timeout-minutes must be at least 1" in result.stderr


# --- at a worker's start --------------------------------------------------------------------


def test_the_start_hook_runs_once_per_cluster_and_never_raises(monkeypatch):
    stuck = queued(1, Status.NEW, lease_until=timezone.now() - timedelta(minutes=1))[0]
    recover_on_cluster_start(proc_name="Process-first-start")
    assert QueuedTweet.objects.get(id=stuck.id).lease_until is None

    QueuedTweet.objects.filter(id=stuck.id).update(lease_until=timezone.now() - timedelta(1))
    recover_on_cluster_start(proc_name="Process-first-start")  # a reincarnated worker
    assert QueuedTweet.objects.get(id=stuck.id).lease_until is not None

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("a bug in recovery")

    monkeypatch.setattr(recovery, "recover_stale_tweets", broken)
    recover_on_cluster_start(proc_name="Process-second-start")  # logged, not raised


@pytest.mark.django_db(transaction=True)
def test_a_worker_cluster_start_runs_it_once(pipeline):
    from django_q.models import Schedule

    Schedule.objects.all().delete()  # only the start hook may touch the rows
    post_id, tweet = approved_reply(pipeline)
    died_publishing(tweet)
    pipeline.x.publish(OUR_USERNAME, tweet.draft, reply_to=post_id)
    env = {**worker_env(pipeline), "LOG_LEVEL": "INFO", "Q_WORKERS": "2"}
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(lambda: discovered(post_id).status == Status.POSTED, timeout=60, interval=0.2)
    finally:
        cluster.send_signal(signal.SIGTERM)
        _, errors = cluster.communicate(timeout=30)
    assert discovered(post_id).status == Status.POSTED, errors[-3000:]
    assert errors.count("recover_stale at cluster start") == 1, errors[-3000:]
    assert "'reconciled_posted': 1" in errors
    assert len(pipeline.x.replies_to(post_id)) == 1
