"""The dead-letter queue (``failed_tweets``): failed items, their retries, their end."""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Count, QuerySet
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
from bot.services.review import checked_edit
from bot.services.transitions import SETTLED, UNCLAIMED, audit, transition
from resilience.alerts import AlertKind, raise_alert
from resilience.events import event

log = logging.getLogger(__name__)

# An operator may send these back now: waiting for a retry, given up on, or set aside.
RETRYABLE = [FailedTweetStatus.PENDING, FailedTweetStatus.EXHAUSTED, FailedTweetStatus.PARKED]
# And may park or discard these (a row being retried waits for its stage's verdict).
OPEN = RETRYABLE


class DeadLetterError(Exception):
    """The operator's action cannot be applied; the message says why."""


class Stage(enum.StrEnum):
    DRAFT = "draft"
    PUBLISH = "publish"


# A dead-letter row a retry sends back: open, at a known stage, its tweet still failed
# (never one already posted, handed off, or whose outcome is unknown).
_RETRYABLE = {
    "status__in": RETRYABLE,
    "stage__in": list(Stage),
    "queued_tweet__status": Status.FAILED,
}


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
    if moved:
        event(
            "attempt_failed",
            tweet=tweet.id,
            post=tweet.target_tweet_id,
            attempt=attempts,
            error=error,
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
            event(
                "dead_lettered",
                tweet=tweet.id,
                post=tweet.target_tweet_id,
                stage=stage,
                error=error,
            )
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
        event("dead_letter_exhausted", tweet=tweet.id, post=tweet.target_tweet_id, stage=stage)
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
    failure = FailedTweet.objects.filter(id=failure_id).select_related("queued_tweet").first()
    if failure is None:
        return f"There is no failed reply #{failure_id}."
    with transaction.atomic():
        if not _send_back_all(FailedTweet.objects.filter(id=failure.id), timezone.now()):
            return _refusal(failure)
        OperatorAction.objects.create(
            action=OperatorAction.Action.RETRY,
            actor=actor,
            channel=channel,
            detail=_one(failure),
        )
    return f"Failed reply #{failure_id} goes back to its {failure.stage} stage now."


@dataclass(frozen=True)
class Batch:
    """What an operator's action on dead-letter rows did: ``done`` changed, ``skipped``
    left alone (already posted, outcome unknown, being retried, closed...)."""

    done: int
    skipped: int


def dead_letters_retryable(failures: QuerySet[FailedTweet]) -> QuerySet[FailedTweet]:
    """The rows of ``failures`` a retry sends back: open, and their tweet still failed."""
    # Narrowed, never wrapped (``id IN (SELECT id ...)``): without table statistics
    # SQLite plans that wrapping as a search per row, quadratic at 10,000 rows.
    return failures.filter(**_RETRYABLE)


def dead_letters_left_alone(failures: QuerySet[FailedTweet]) -> dict[str, int]:
    """Why a retry of ``failures`` would leave rows alone: counts by what their post is,
    or, for a post still failed, by what the dead-letter row is (one query)."""
    skipped = failures.exclude(**_RETRYABLE)
    reasons: dict[str, int] = {}
    for row in skipped.values("status", "queued_tweet__status").annotate(n=Count("id")):
        if row["queued_tweet__status"] != Status.FAILED:
            label = f"post {Status(row['queued_tweet__status']).label.lower()}"
        else:
            label = FailedTweetStatus(row["status"]).label.lower()
        reasons[label] = reasons.get(label, 0) + row["n"]
    return reasons


def dead_letters_retry(
    failures: QuerySet[FailedTweet], *, actor: str, channel: Channel, what: str = ""
) -> Batch:
    """Send every row of ``failures`` whose tweet is still failed back through its stage.

    A fixed number of queries however many rows match: a lock, the counts, two
    conditional UPDATEs of the tweets (one per stage), one of the dead-letter rows and
    one audit row naming the count and ``what`` was asked for (a filter, say).
    """
    now = timezone.now()
    with transaction.atomic():
        total = failures.count()
        moved = _send_back_all(failures, now)
        if moved:
            OperatorAction.objects.create(
                action=OperatorAction.Action.RETRY,
                actor=actor,
                channel=channel,
                detail=_detail(failures, total, moved, "sent back", what),
            )
    return Batch(moved, total - moved)


def dead_letter_edit_retry(failure: FailedTweet, text: str, *, actor: str, channel: Channel) -> str:
    """The owner rewrites a reply that failed at publishing and sends it back with it.

    The text is checked as any edit of theirs (``review``); typing it is their approval
    of it, audited as an edit with the text before and after.
    """
    if failure.stage != Stage.PUBLISH:
        raise DeadLetterError(
            f"Failed reply #{failure.id} failed while drafting: a retry writes a new draft, "
            "which you approve as usual."
        )
    final = checked_edit(text)
    tweet = failure.queued_tweet
    now = timezone.now()
    to, fields = _back(Stage.PUBLISH, now)
    with transaction.atomic():
        claimed = FailedTweet.objects.filter(id=failure.id, status__in=RETRYABLE).update(
            status=FailedTweetStatus.RETRYING, last_retry_at=now, next_retry_at=None, updated_at=now
        )
        if not claimed or not transition(
            tweet.id,
            expected=Status.FAILED,
            to=to,
            draft=final,
            approved_at=now,
            approved_by=actor,
            approved_via=channel,
            **fields,
        ):
            transaction.set_rollback(True)
            raise DeadLetterError(_refusal(failure))
        audit(
            tweet,
            Decision.Action.EDIT,
            actor=actor,
            channel=channel,
            before=tweet.draft,
            after=final,
        )
        OperatorAction.objects.create(
            action=OperatorAction.Action.RETRY,
            actor=actor,
            channel=channel,
            detail=_one(failure, "with the owner's new text"),
        )
    return f"Failed reply #{failure.id} goes back to publishing now, with your text."


def dead_letters_park(
    failures: QuerySet[FailedTweet], *, actor: str, channel: Channel, what: str = ""
) -> Batch:
    """Stop automatic retries of these rows and keep them (retry or discard them later)."""
    now = timezone.now()
    with transaction.atomic():
        total = failures.count()
        parked = failures.filter(
            status__in=[FailedTweetStatus.PENDING, FailedTweetStatus.EXHAUSTED]
        ).update(status=FailedTweetStatus.PARKED, next_retry_at=None, updated_at=now)
        if parked:
            OperatorAction.objects.create(
                action=OperatorAction.Action.PARK,
                actor=actor,
                channel=channel,
                detail=_detail(failures, total, parked, "parked", what),
            )
    return Batch(parked, total - parked)


def dead_letters_discard(
    failures: QuerySet[FailedTweet], *, actor: str, channel: Channel, reason: str
) -> Batch:
    """Give up on these rows for good, saying why; each tweet's audit trail records it."""
    reason = reason.strip()
    if not reason:
        raise DeadLetterError("Say why you discard them: the reason is kept with each row.")
    now = timezone.now()
    with transaction.atomic():
        total = failures.count()
        rows = list(
            failures.filter(status__in=OPEN)
            .select_for_update()
            .values_list("id", "queued_tweet_id")
        )
        discarded = FailedTweet.objects.filter(
            id__in=[row_id for row_id, _ in rows], status__in=OPEN
        ).update(
            status=FailedTweetStatus.DISCARDED,
            discard_reason=reason[:200],
            next_retry_at=None,
            updated_at=now,
        )
        Decision.objects.bulk_create(
            Decision(
                queued_tweet_id=tweet_id,
                action=Decision.Action.DISCARD,
                actor=actor,
                channel=channel,
                text_before=reason,
            )
            for _, tweet_id in rows
        )
        if discarded:
            OperatorAction.objects.create(
                action=OperatorAction.Action.DISCARD,
                actor=actor,
                channel=channel,
                detail=_detail(failures, total, discarded, "discarded", reason),
            )
    return Batch(discarded, total - discarded)


def _send_back_all(failures: QuerySet[FailedTweet], now: datetime) -> int:
    """Send the retryable rows of ``failures`` back (inside the caller's transaction);
    how many tweets went back. Constant in queries: nothing is loaded row by row."""
    retryable = dead_letters_retryable(failures)
    # PostgreSQL: hold the rows and their tweets (FOR UPDATE locks both sides of the
    # join), so no stage moves a tweet between the statements below. SQLite's IMMEDIATE
    # transaction holds the whole database anyway.
    list(retryable.select_for_update().values_list("id", flat=True))
    moved = 0
    for stage in Stage:
        to, fields = _back(stage, now)
        # The rows first, by their tweets' long-standing status; then the tweets, by
        # the rows just stamped. (Joining on the tweets just moved instead made
        # PostgreSQL, whose statistics do not know of them yet, scan them once per row:
        # 2.3 s for 10,000 rows.) Both sides are locked, so the two agree.
        retryable.filter(stage=stage).update(
            status=FailedTweetStatus.RETRYING, last_retry_at=now, next_retry_at=None, updated_at=now
        )
        retrying = FailedTweet.objects.filter(
            status=FailedTweetStatus.RETRYING, stage=stage, last_retry_at=now
        ).values("queued_tweet_id")
        moved += QueuedTweet.objects.filter(status=Status.FAILED, id__in=retrying).update(
            status=to, updated_at=now, **fields
        )
    return moved


def _back(stage: str, now: datetime) -> tuple[Status, dict[str, object]]:
    """Where a tweet failed at ``stage`` goes back to, and what is reset on the way."""
    if stage == Stage.DRAFT:
        # A new draft needs a new approval.
        return Status.NEW, {
            "draft_attempts": 0,
            "approved_at": None,
            "approved_by": "",
            "approved_via": "",
            "scheduled_at": None,
            "attempts": 0,
        }
    # The human approval stands; pacing still applies when it is claimed.
    return Status.APPROVED, {"attempts": 0, "scheduled_at": now, "next_attempt_at": None}


def _send_back(failure: FailedTweet, now: datetime) -> int:
    to, fields = _back(failure.stage, now)
    return int(transition(failure.queued_tweet_id, expected=Status.FAILED, to=to, **fields))


def _one(failure: FailedTweet, how: str = "") -> str:
    tail = f", {how}" if how else ""
    return f"failed reply #{failure.id} ({failure.stage}) for {failure.queued_tweet.url}{tail}"[
        :300
    ]


def _detail(failures: QuerySet[FailedTweet], total: int, count: int, done: str, what: str) -> str:
    """The audit row's words: one row is named (its history finds it), more are counted."""
    if total == count == 1:
        failure = failures.select_related("queued_tweet").first()
        if failure is not None:
            return _one(failure, f"{done}: {what}" if what else done)
    return _many(count, done, what)


def _many(count: int, done: str, what: str) -> str:
    noun = "failed reply" if count == 1 else "failed replies"
    return (f"{count:,} {noun} {done}" + (f": {what}" if what else ""))[:300]


def _refusal(failure: FailedTweet) -> str:
    failure.refresh_from_db()
    failure.queued_tweet.refresh_from_db()
    state = failure.get_status_display().lower()
    post = failure.queued_tweet.get_status_display().lower()
    return f"Failed reply #{failure.id} cannot be retried: it is {state}, its post {post}."


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
    batch = dead_letters_discard(
        FailedTweet.objects.filter(id=failure.id), actor=actor, channel=Channel.ADMIN, reason=reason
    )
    return bool(batch.done)
