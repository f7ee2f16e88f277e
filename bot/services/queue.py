"""Moving queued tweets between statuses, and the dead-letter queue."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from bot.models import Channel, Decision, FailedTweet, FailedTweetStatus, QueuedTweet, Status
from resilience.alerts import raise_alert

log = logging.getLogger(__name__)

DLQ_BASE_DELAY = timedelta(minutes=5)


def transition(
    tweet_id: int, *, expected: Status | Iterable[Status], to: Status, **fields: object
) -> bool:
    """Move one row if, and only if, it is still in an expected status.

    The conditional UPDATE is what lets any number of workers run the same stage: the
    one whose update counts 1 row owns the move; the others see 0 and leave it.
    """
    statuses = [expected] if isinstance(expected, str) else list(expected)
    moved = QueuedTweet.objects.filter(id=tweet_id, status__in=statuses).update(
        status=to, updated_at=timezone.now(), **fields
    )
    return moved == 1


def dead_letter(
    tweet: QueuedTweet, *, stage: str, error: str, kind: str, now: datetime | None = None
) -> FailedTweet:
    """Record a failure of ``tweet`` (already moved to ``failed``) for later retries.

    A tweet has one dead-letter row. A failure during a dead-letter retry counts one
    retry; the fifth marks it exhausted and raises an alert.
    """
    now = now or timezone.now()
    with transaction.atomic():
        failure, created = FailedTweet.objects.select_for_update().get_or_create(
            queued_tweet=tweet,
            defaults={
                "target_tweet_id": tweet.target_tweet_id,
                "stage": stage,
                "error": error,
                "error_kind": kind,
                "next_retry_at": now + DLQ_BASE_DELAY,
            },
        )
        if created:
            return failure
        failure.stage, failure.error, failure.error_kind = stage, error, kind
        if failure.status == FailedTweetStatus.RETRYING:
            failure.retry_count += 1
            failure.last_retry_at = now
        if failure.retry_count >= failure.max_retries:
            failure.status = FailedTweetStatus.EXHAUSTED
            failure.next_retry_at = None
        else:
            failure.status = FailedTweetStatus.PENDING
            failure.next_retry_at = now + DLQ_BASE_DELAY * 2**failure.retry_count
        failure.save()
    if failure.status == FailedTweetStatus.EXHAUSTED:
        raise_alert(
            kind="dead_letter_exhausted",
            subject=f"tweet {tweet.target_tweet_id}",
            message=(
                f"Gave up on the reply to {tweet.url} after {failure.retry_count} retries "
                f"at stage {stage}: {error}"
            ),
        )
    return failure


def dead_letter_resolve(tweet: QueuedTweet) -> None:
    FailedTweet.objects.filter(
        queued_tweet=tweet, status__in=[FailedTweetStatus.RETRYING, FailedTweetStatus.PENDING]
    ).update(status=FailedTweetStatus.RESOLVED, next_retry_at=None, updated_at=timezone.now())


def dead_letter_retry_due(*, now: datetime | None = None) -> int:
    """Send due dead-letter items back through their stage.

    The row returns to the status its stage picks up (``new`` for a draft, ``approved``
    for a publish: its human approval stands), and the dead-letter row waits as
    ``retrying`` for that stage's verdict: resolved on success, one retry spent on an
    item-level failure. A service being down spends nothing.
    """
    now = now or timezone.now()
    due = FailedTweet.objects.filter(status=FailedTweetStatus.PENDING, next_retry_at__lte=now)
    retried = 0
    for failure in due.select_related("queued_tweet"):
        if not FailedTweet.objects.filter(id=failure.id, status=FailedTweetStatus.PENDING).update(
            status=FailedTweetStatus.RETRYING, last_retry_at=now, updated_at=now
        ):
            continue
        tweet = failure.queued_tweet
        if failure.stage == "draft":
            # A new draft needs a new approval.
            back = transition(
                tweet.id,
                expected=Status.FAILED,
                to=Status.NEW,
                draft_attempts=0,
                approved_at=None,
                approved_by="",
                approved_via="",
                scheduled_at=None,
                attempts=0,
            )
        else:
            back = transition(
                tweet.id,
                expected=Status.FAILED,
                to=Status.APPROVED,
                attempts=0,
                scheduled_at=now,
                next_attempt_at=None,
            )
        if back:
            retried += 1
        else:
            # The tweet moved on (an operator acted): nothing left to retry.
            FailedTweet.objects.filter(id=failure.id).update(
                status=FailedTweetStatus.RESOLVED, next_retry_at=None, updated_at=now
            )
    return retried


def dead_letter_discard(failure: FailedTweet, *, actor: str, reason: str) -> bool:
    """An operator gives up on a failed item for good."""
    with transaction.atomic():
        moved = FailedTweet.objects.filter(
            id=failure.id,
            status__in=[FailedTweetStatus.PENDING, FailedTweetStatus.EXHAUSTED],
        ).update(
            status=FailedTweetStatus.DISCARDED,
            discard_reason=reason[:200],
            next_retry_at=None,
            updated_at=timezone.now(),
        )
        if moved:
            Decision.objects.create(
                queued_tweet_id=failure.queued_tweet_id,
                action=Decision.Action.DISCARD,
                actor=actor,
                channel=Channel.ADMIN,
                text_before=reason,
            )
    return bool(moved)
