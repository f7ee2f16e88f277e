"""A claim given up (nothing went out) stops filling the caps, and replies to the same
author it held may go sooner (``scheduling.repace_after_release``, called by
``transitions.transition``): sooner only, never past a rule, never undoing the move that
gave the claim up. The end-to-end case is in ``test_pipeline.py``
(``test_a_claim_given_up_frees_the_author_cap_it_filled``)."""

from __future__ import annotations

import itertools
import logging
import uuid
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bot.models import FailedTweet, QueuedTweet, Status
from bot.pacing import Pacing, quiet_hours_end
from bot.services.dead_letters import spend_attempt
from bot.services.publishing import claim_next
from bot.services.transitions import UNCLAIMED, transition

pytestmark = pytest.mark.django_db

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def pacing(settings):
    settings.MIN_DELAY_MINUTES = 5
    settings.MAX_DELAY_MINUTES = 30
    settings.QUIET_HOURS_START = settings.QUIET_HOURS_END = 0
    settings.MAX_POSTS_PER_HOUR = 100
    settings.MAX_POSTS_PER_DAY = 1000
    settings.MIN_SPACING_MINUTES = 3
    settings.MAX_REPLIES_PER_AUTHOR_PER_DAY = 1
    settings.REPLY_MODE = "api"
    settings.PUBLISHING_PAUSED = False


def row(author: str, status: Status = Status.APPROVED, **fields) -> QueuedTweet:
    n = next(_ids)
    now = timezone.now()
    values = {
        "target_tweet_id": str(7_000_000 + n),
        "author_id": author,
        "author_username": f"user{author}",
        "text": "a post",
        "tweet_created_at": now - timedelta(minutes=10),
        "source": "mention",
        "summoned": True,
        "status": status,
        "draft": f"reply {n}",
        "approved_at": now - timedelta(hours=1),
        "approved_by": "owner",
        **fields,
    }
    return QueuedTweet.objects.create(**values)


def claimed(author: str, minutes_ago: float = 1, **fields) -> QueuedTweet:
    at = timezone.now() - timedelta(minutes=minutes_ago)
    return row(
        author,
        Status.PUBLISHING,
        scheduled_at=at,
        claimed_at=at,
        lease_until=at + timedelta(minutes=5),
        publish_request_id=uuid.uuid4(),
        **fields,
    )


def released(tweet: QueuedTweet) -> bool:
    """Reconcile's move for a claim that sent nothing: approved again, claim given up."""
    return transition(tweet.id, expected=Status.PUBLISHING, to=Status.APPROVED, **UNCLAIMED)


def time_of(tweet: QueuedTweet):
    return QueuedTweet.objects.get(id=tweet.id).scheduled_at


def test_every_reply_a_given_up_claim_held_is_judged_again_and_the_cap_still_holds():
    now = timezone.now()
    first = row("x", scheduled_at=now - timedelta(minutes=3))
    second = row("x", scheduled_at=now - timedelta(minutes=2))
    third = row("x", scheduled_at=now - timedelta(minutes=1))
    assert claim_next(now=now).id == first.id
    assert claim_next(now=timezone.now()) is None  # the author cap: a day, both
    assert time_of(second) == time_of(third) > now + timedelta(hours=23)
    day_after_first = time_of(third)

    assert released(QueuedTweet.objects.get(id=first.id))
    assert time_of(second) <= timezone.now()  # its random delay was long over
    assert time_of(third) == day_after_first  # one a day: the second takes the place


def test_a_reply_is_never_moved_later():
    now = timezone.now()
    row("y", scheduled_at=now + timedelta(minutes=5))
    # Just approved: the rules now would say 5 min of delay, then 3 min of spacing.
    due = now + timedelta(minutes=6)
    waiting = row("x", scheduled_at=due, approved_at=now)
    assert released(claimed("x"))
    assert time_of(waiting) == due


def test_a_release_moves_a_reply_no_earlier_than_the_rules_allow_now(settings):
    settings.QUIET_HOURS_START, settings.QUIET_HOURS_END = _quiet_now()
    now = timezone.now()
    held = row("x", scheduled_at=now + timedelta(days=1))  # the author cap, past quiet hours
    assert released(claimed("x"))
    assert time_of(held) == quiet_hours_end(now, Pacing.from_settings())


def test_releases_again_and_again_never_push_a_reply_back(caplog):
    caplog.set_level(logging.INFO, logger="replyguy.events")
    waiting = row("x", scheduled_at=timezone.now() + timedelta(minutes=40))
    claim = claimed("x")
    for _ in range(5):  # X keeps refusing the other reply; each refusal gives it up
        assert released(claim)
        assert transition(
            claim.id,
            expected=Status.APPROVED,
            to=Status.PUBLISHING,
            claimed_at=timezone.now(),
            publish_request_id=uuid.uuid4(),
        )
    moves = [
        r for r in caplog.records if r.getMessage().startswith(f"scheduled tweet={waiting.id} ")
    ]
    assert time_of(waiting) <= timezone.now() + timedelta(minutes=5)
    assert len(moves) == 1, [r.getMessage() for r in moves]
    assert "sooner, a claim to the same author given up" in moves[0].getMessage()


def test_retried_replies_keep_their_retry_time():
    retry_at = timezone.now() + timedelta(hours=2)
    retrying = row("x", scheduled_at=retry_at, attempts=1, last_error="503")
    assert released(claimed("x"))
    assert time_of(retrying) == retry_at


def test_a_release_with_nothing_held_costs_one_query():
    claim = claimed("x")
    row("y", scheduled_at=timezone.now() + timedelta(days=1))  # another author's
    with CaptureQueriesContext(connection) as queries:
        assert released(claim)
    # The move, then the one look for held replies (savepoints aside).
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 2, statements


def test_a_failure_judging_held_replies_never_undoes_the_move(monkeypatch, caplog):
    def broken(tweet_id, **_):
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")  # poisons a PostgreSQL transaction

    monkeypatch.setattr("bot.services.transitions.repace_after_release", broken)
    claim = claimed("x", attempts=2)
    with transaction.atomic():
        state = spend_attempt(
            claim,
            expected=Status.PUBLISHING,
            claim=claim.publish_request_id,
            now=timezone.now(),
            error="X refused it",
            kind="permanent",
            reason="",
        )
        assert QueuedTweet.objects.filter(id=claim.id).count() == 1  # still usable
    assert state == Status.FAILED
    assert QueuedTweet.objects.get(id=claim.id).status == Status.FAILED
    assert FailedTweet.objects.filter(queued_tweet_id=claim.id).exists()
    assert "keep their time" in caplog.text


def test_a_lost_connection_while_judging_is_logged_not_raised(monkeypatch, caplog):
    def lost(tweet_id, **_):
        raise DatabaseError("connection lost")

    monkeypatch.setattr("bot.services.transitions.repace_after_release", lost)
    claim = claimed("x")
    assert released(claim)
    assert QueuedTweet.objects.get(id=claim.id).status == Status.APPROVED
    assert "keep their time" in caplog.text


def _quiet_now() -> tuple[int, int]:
    """Quiet hours (UTC, the test settings' zone) from now for two hours."""
    hour = timezone.now().astimezone(Pacing.from_settings().tz).hour
    return hour, (hour + 2) % 24
