"""The dead-letter queue (``failed_tweets``): failed items, their retries, their end."""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from bot.models import (
    Channel,
    Decision,
    FailedTweet,
    FailedTweetStatus,
    OperatorAction,
    QueuedTweet,
    Status,
)
from bot.policy import DEAD_LETTER_FIRST_DELAY, DEAD_LETTER_RETRIES, MAX_PUBLISH_ATTEMPTS, backoff
from bot.services.transitions import SETTLED, UNCLAIMED, audit, transition
from resilience.alerts import AlertKind, raise_alert

log = logging.getLogger(__name__)


class Stage(enum.StrEnum):
    DRAFT = "draft"
    PUBLISH = "publish"


def fail(
    tweet: QueuedTweet,
    *,
    stage: Stage,
    expected: Status | Iterable[Status],
    error: str,
    kind: str,
    now: datetime,
    claim: uuid.UUID | None = None,
    lease: datetime | None = None,
    **fields: object,
) -> bool:
    """Move ``tweet`` to ``failed`` and record it in the dead-letter queue, atomically."""
    with transaction.atomic():
        if not transition(
            tweet.id,
            expected=expected,
            to=Status.FAILED,
            claim=claim,
            lease=lease,
            last_error=error,
            **fields,
        ):
            return False
        dead_letter(tweet, stage=stage, error=error, kind=kind, now=now)
    return True


def spend_attempt(
    tweet: QueuedTweet,
    *,
    expected: Status,
    now: datetime,
    error: str,
    kind: str,
    reason: str,
    claim: uuid.UUID | None = None,
    final: bool = False,
) -> Status | None:
    """A publish attempt failed for the item's own reason: one attempt spent and the
    next pushed back, or, with none left (or ``final``), the dead-letter queue."""
    attempts = tweet.attempts + 1
    common = {
        "attempts": attempts,
        "last_error_kind": kind,
        "last_error_reason": reason,
        **UNCLAIMED,
    }
    if final or attempts >= MAX_PUBLISH_ATTEMPTS:
        return (
            Status.FAILED
            if fail(
                tweet,
                stage=Stage.PUBLISH,
                expected=expected,
                claim=claim,
                error=error,
                kind=kind,
                now=now,
                **common,
            )
            else None
        )
    moved = transition(
        tweet.id,
        expected=expected,
        to=Status.APPROVED,
        claim=claim,
        next_attempt_at=now + backoff(attempts),
        last_error=error,
        **common,
    )
    return Status.APPROVED if moved else None


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
                "max_retries": DEAD_LETTER_RETRIES,
                "next_retry_at": now + DEAD_LETTER_FIRST_DELAY,
            },
        )
        if created:
            raise_alert(
                kind=AlertKind.TWEET_PROCESSING_FAILED,
                # One per stage per cooldown; the next one counts the repeats.
                subject=f"stage {stage}",
                message=(
                    f"The reply to {tweet.url} failed at stage {stage} and waits in the "
                    f"dead-letter queue for a retry: {error}"
                ),
                details={"stage": stage, "kind": kind, "post": tweet.url, "error": error},
            )
            return failure
        failure.stage, failure.error, failure.error_kind = stage, error, kind
        # A retry that failed, or a tweet failing again after its retry got through one
        # stage (say a redraft whose text X then refuses), spends one of the retries.
        if failure.status in (FailedTweetStatus.RETRYING, FailedTweetStatus.RESOLVED):
            failure.retry_count += 1
            failure.last_retry_at = now
        if failure.retry_count >= failure.max_retries:
            failure.status = FailedTweetStatus.EXHAUSTED
            failure.next_retry_at = None
        else:
            failure.status = FailedTweetStatus.PENDING
            failure.next_retry_at = now + DEAD_LETTER_FIRST_DELAY * 2**failure.retry_count
        failure.save()
    if failure.status == FailedTweetStatus.EXHAUSTED:
        raise_alert(
            kind=AlertKind.DEAD_LETTER_EXHAUSTED,
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
    dead_letter_sweep(now=now)
    due = FailedTweet.objects.filter(status=FailedTweetStatus.PENDING, next_retry_at__lte=now)
    retried = 0
    for failure in due.select_related("queued_tweet"):
        try:
            with transaction.atomic():
                if not FailedTweet.objects.filter(
                    id=failure.id, status=FailedTweetStatus.PENDING
                ).update(status=FailedTweetStatus.RETRYING, last_retry_at=now, updated_at=now):
                    continue
                retried += _send_back(failure, now)
        except Exception:
            # Left pending (the transaction rolled back): the next pass tries it again.
            log.exception("dead letters: row %s could not be sent back", failure.id)
    return retried


def dead_letter_retry_now(failure_id: int, *, actor: str, channel: Channel) -> str:
    """An operator sends one failed item back through its stage now; what happened, in words.

    Only an item still failed goes back: one already posted, handed off or whose outcome
    is unknown is left alone (retrying it could answer a post twice).
    """
    now = timezone.now()
    failure = FailedTweet.objects.filter(id=failure_id).select_related("queued_tweet").first()
    if failure is None:
        return f"There is no failed reply #{failure_id}."
    with transaction.atomic():
        claimed = FailedTweet.objects.filter(
            id=failure.id, status__in=[FailedTweetStatus.PENDING, FailedTweetStatus.EXHAUSTED]
        ).update(status=FailedTweetStatus.RETRYING, last_retry_at=now, updated_at=now)
        if not claimed or not _send_back(failure, now):
            transaction.set_rollback(True)
            state = failure.get_status_display().lower()
            post = failure.queued_tweet.get_status_display().lower()
            return f"Failed reply #{failure_id} cannot be retried: it is {state}, its post {post}."
        OperatorAction.objects.create(
            action=OperatorAction.Action.RETRY,
            actor=actor,
            channel=channel,
            detail=f"failed reply #{failure_id} ({failure.stage}) for {failure.queued_tweet.url}",
        )
    return f"Failed reply #{failure_id} goes back to its {failure.stage} stage now."


def _send_back(failure: FailedTweet, now: datetime) -> int:
    tweet = failure.queued_tweet
    if failure.stage == Stage.DRAFT:
        # A new draft needs a new approval.
        return int(
            transition(
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
        )
    return int(
        transition(
            tweet.id,
            expected=Status.FAILED,
            to=Status.APPROVED,
            attempts=0,
            scheduled_at=now,
            next_attempt_at=None,
        )
    )


def dead_letter_sweep(*, now: datetime) -> None:
    """Close dead-letter rows whose tweet left the pipeline some other way.

    A retried tweet may end rejected, expired, skipped, handed off or posted by a path
    that does not know about its dead-letter row; and a crash can leave a row
    ``retrying`` while its tweet is still ``failed``. One sweep covers every such exit.
    """
    open_rows = FailedTweet.objects.filter(
        status__in=[FailedTweetStatus.PENDING, FailedTweetStatus.RETRYING]
    )
    open_rows.filter(queued_tweet__status__in=SETTLED).update(
        status=FailedTweetStatus.RESOLVED, next_retry_at=None, updated_at=now
    )
    open_rows.filter(status=FailedTweetStatus.RETRYING, queued_tweet__status=Status.FAILED).update(
        status=FailedTweetStatus.PENDING, next_retry_at=now, updated_at=now
    )


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
            audit(
                failure.queued_tweet,
                Decision.Action.DISCARD,
                actor=actor,
                channel=Channel.ADMIN,
                before=reason,
            )
    return bool(moved)
