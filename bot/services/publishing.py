"""Schedule, publish exactly once, hand off, recover and reconcile.

Publishing follows one rule: record the intent before calling X, and never call X
again for a row whose outcome is unknown until our own timeline has been checked.
X has no idempotency key, so a reply that may exist is looked for, not re-sent.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from bot.clients.errors import ClientError, ErrorKind
from bot.clients.x import DUPLICATE, TARGET_GONE
from bot.models import (
    Channel,
    Cursor,
    Decision,
    OurReply,
    PipelineControl,
    QueuedTweet,
    Status,
    TargetAccount,
)
from bot.pacing import Pacing, earliest_allowed
from bot.services.queue import dead_letter, dead_letter_resolve, transition
from resilience import CircuitOpenError

if TYPE_CHECKING:
    from bot.clients.x import XClient

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
MAX_PUBLISH_ATTEMPTS = 3
# X's timeline can trail a write by a moment: an unknown outcome is judged this long
# after its lease ran out.
RECONCILE_AFTER = timedelta(minutes=1)
# How long a handed-off reply is looked for on our timeline.
HANDOFF_WATCH = timedelta(days=3)
OUR_REPLIES = "our_replies"
PUBLISHED = [Status.PUBLISHING, Status.POSTED, Status.UNKNOWN]
# A reply that did not go out gives up its claim: it no longer counts against the caps.
UNCLAIMED = {"lease_until": None, "publish_request_id": None, "claimed_at": None}


def handoff_link(tweet: QueuedTweet) -> str:
    """X's web intent: opens the composer as a reply with the approved text filled in."""
    query = urlencode({"in_reply_to": tweet.target_tweet_id, "text": tweet.draft})
    return f"https://x.com/intent/post?{query}"


def publishing_paused() -> bool:
    if settings.PUBLISHING_PAUSED:
        return True
    return PipelineControl.objects.filter(pk=1, publishing_paused=True).exists()


# --- schedule -------------------------------------------------------------------------


def reply_schedule(tweet: QueuedTweet, *, now: datetime | None = None) -> datetime | None:
    """Give an approved reply its time: a random delay, then every pacing rule."""
    now = now or timezone.now()
    pacing = Pacing.from_settings()
    planned = list(
        QueuedTweet.objects.filter(status=Status.APPROVED, scheduled_at__isnull=False)
        .exclude(id=tweet.id)
        .order_by()
        .values_list("scheduled_at", flat=True)
    )
    when = earliest_allowed(now + pacing.random_delay(), pacing, planned + _published_since(now))
    moved = QueuedTweet.objects.filter(
        id=tweet.id, status=Status.APPROVED, scheduled_at__isnull=True
    ).update(scheduled_at=when, updated_at=now)
    return when if moved else None


def schedule_approved(*, now: datetime | None = None) -> int:
    """Schedule approved replies that have no time yet (an approval cut short by a crash)."""
    rows = QueuedTweet.objects.filter(status=Status.APPROVED, scheduled_at__isnull=True)
    return sum(1 for tweet in rows if reply_schedule(tweet, now=now))


# --- publish --------------------------------------------------------------------------


def publish_due(x: XClient, *, now: datetime | None = None, limit: int = 20) -> dict[str, int]:
    """Claim and publish due replies, one at a time, up to ``limit``."""
    now = now or timezone.now()
    counts = {"published": 0, "claimed": 0}
    for _ in range(limit):
        tweet = claim_next(now=now)
        if tweet is None:
            break
        counts["claimed"] += 1
        if reply_publish(tweet, x, now=now) == Status.POSTED:
            counts["published"] += 1
    return counts


def hand_off_due(*, now: datetime | None = None) -> int:
    """Due replies the API may not send go to the owner as a prefilled link."""
    now = now or timezone.now()
    if publishing_paused():
        return 0
    due = _due(now)
    if settings.REPLY_MODE == "auto":
        due = due.filter(summoned=False)
    elif settings.REPLY_MODE == "api":
        return 0
    return due.update(status=Status.HANDOFF, updated_at=now)


def claim_next(*, now: datetime) -> QueuedTweet | None:
    """Claim the next due reply for this worker, keeping every cap across all workers.

    Claims are serialised on the pipeline-control row (PostgreSQL row lock; SQLite's
    IMMEDIATE transactions serialise writers anyway), so the caps counted here cannot
    be passed by two workers at once. A reply that may not go yet is rescheduled.
    """
    pacing = Pacing.from_settings()
    with transaction.atomic():
        control, _ = PipelineControl.objects.select_for_update().get_or_create(pk=1)
        if control.publishing_paused or settings.PUBLISHING_PAUSED:
            return None
        # The lock may have been a while coming: judge and stamp the claim by the time
        # it is granted, not by when this pass started.
        now = max(now, timezone.now())
        if settings.REPLY_MODE == "handoff":
            return None  # nothing goes through the API; hand_off_due serves these
        candidates = _due(now).order_by("scheduled_at", "id")
        if settings.REPLY_MODE == "auto":
            candidates = candidates.filter(summoned=True)  # X's 2026 rule
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        published = _published_since(now)
        for tweet in candidates[:20]:
            allowed = earliest_allowed(
                max(now, tweet.scheduled_at or now),
                pacing,
                published,
                _published_since(now, author_id=tweet.author_id),
                _author_cap(tweet),
            )
            if allowed > now:
                # A full cap or quiet hours move the reply, never fail it.
                QueuedTweet.objects.filter(id=tweet.id, status=Status.APPROVED).update(
                    scheduled_at=allowed, updated_at=now
                )
                continue
            claim = {
                "claimed_at": now,
                "lease_until": now + LEASE,
                "publish_request_id": uuid.uuid4(),
            }
            if transition(tweet.id, expected=Status.APPROVED, to=Status.PUBLISHING, **claim):
                for name, value in claim.items():
                    setattr(tweet, name, value)
                tweet.status = Status.PUBLISHING
                return tweet
    return None


def reply_publish(tweet: QueuedTweet, x: XClient, *, now: datetime | None = None) -> Status:
    """Send a claimed reply to X and record what happened. Returns the new status."""
    now = now or timezone.now()
    try:
        reply_id = x.create_reply(in_reply_to=tweet.target_tweet_id, text=tweet.draft)
    except CircuitOpenError as exc:
        return _wait_for_service(tweet, now, _after(now, exc.retry_after), str(exc))
    except ClientError as exc:
        if exc.kind is ErrorKind.TRANSIENT:
            until = datetime.fromtimestamp(exc.retry_at, UTC) if exc.retry_at else _after(now, None)
            return _wait_for_service(tweet, now, until, str(exc))
        if exc.kind is ErrorKind.NOT_PERMITTED:
            _from_publishing(tweet, Status.HANDOFF, exc)
            return Status.HANDOFF
        if exc.kind is ErrorKind.AMBIGUOUS:
            _from_publishing(tweet, Status.UNKNOWN, exc)
            return Status.UNKNOWN
        return _item_failure(tweet, now, exc)
    return _mark_posted(tweet, reply_id, now)


def _after(now: datetime, seconds: float | None) -> datetime:
    return now + timedelta(seconds=seconds if seconds else 60)


def _wait_for_service(tweet: QueuedTweet, now: datetime, until: datetime, error: str) -> Status:
    """X is unwell: the reply waits (until X said to come back), keeping its attempts."""
    transition(
        tweet.id,
        expected=Status.PUBLISHING,
        to=Status.APPROVED,
        next_attempt_at=max(until, now),
        last_error=error,
        last_error_kind=ErrorKind.TRANSIENT,
        last_error_reason="",
        **UNCLAIMED,
    )
    return Status.APPROVED


def _item_failure(tweet: QueuedTweet, now: datetime, exc: ClientError) -> Status:
    attempts = tweet.attempts + 1
    target_gone = exc.status == 404 or exc.reason == TARGET_GONE
    common = {
        "attempts": attempts,
        "last_error": str(exc),
        "last_error_kind": exc.kind,
        "last_error_reason": exc.reason,
        **UNCLAIMED,
    }
    if target_gone or attempts >= MAX_PUBLISH_ATTEMPTS:
        with transaction.atomic():
            if transition(tweet.id, expected=Status.PUBLISHING, to=Status.FAILED, **common):
                dead_letter(tweet, stage="publish", error=str(exc), kind=exc.kind, now=now)
        return Status.FAILED
    transition(
        tweet.id,
        expected=Status.PUBLISHING,
        to=Status.APPROVED,
        next_attempt_at=now + timedelta(minutes=2**attempts),
        **common,
    )
    return Status.APPROVED


def _from_publishing(tweet: QueuedTweet, to: Status, exc: ClientError) -> None:
    fields: dict[str, object] = {
        "last_error": str(exc),
        "last_error_kind": exc.kind,
        "last_error_reason": exc.reason,
    }
    if to is Status.HANDOFF:
        fields.update(UNCLAIMED)
    transition(tweet.id, expected=Status.PUBLISHING, to=to, **fields)


def _mark_posted(tweet: QueuedTweet, reply_id: str, now: datetime) -> Status:
    # Matched on the request id, whatever recovery did meanwhile (judged it unknown, or
    # even queued it again): the answer we now hold settles it.
    moved = QueuedTweet.objects.filter(
        id=tweet.id,
        publish_request_id=tweet.publish_request_id,
        status__in=[Status.PUBLISHING, Status.UNKNOWN, Status.APPROVED],
    ).update(
        status=Status.POSTED,
        reply_tweet_id=reply_id,
        posted_at=now,
        lease_until=None,
        last_error="",
        last_error_kind="",
        last_error_reason="",
        updated_at=now,
    )
    if not moved:
        current = QueuedTweet.objects.filter(id=tweet.id).values_list("status", flat=True).first()
        log.error(
            "publish: reply %s to %s was posted but row %s is now %s; reconcile will see it",
            reply_id,
            tweet.target_tweet_id,
            tweet.id,
            current,
        )
        return Status(current) if current else Status.POSTED
    # Known as ours from now on: reconcile need not read it, and a quote of it summons us.
    OurReply.objects.bulk_create(
        [OurReply(reply_id=reply_id, in_reply_to_id=tweet.target_tweet_id)],
        ignore_conflicts=True,
    )
    dead_letter_resolve(tweet)
    return Status.POSTED


# --- recover and reconcile ----------------------------------------------------------------


def stale_publishing(
    *, now: datetime, older_than: timedelta | None = None
) -> QuerySet[QueuedTweet]:
    """Rows in ``publishing`` whose worker is gone: lease expired, or claimed too long ago."""
    stale = Q(lease_until__lt=now)
    if older_than is not None:
        stale |= Q(claimed_at__lt=now - older_than)
    return QueuedTweet.objects.filter(stale, status=Status.PUBLISHING)


def recover_stale(*, now: datetime | None = None, older_than: timedelta | None = None) -> list[int]:
    """Stale publishing rows become ``unknown``, for reconcile to settle."""
    now = now or timezone.now()
    ids = stale_publishing(now=now, older_than=older_than).values_list("id", flat=True)
    return [
        tweet_id
        for tweet_id in list(ids)
        if transition(
            tweet_id,
            expected=Status.PUBLISHING,
            to=Status.UNKNOWN,
            last_error="the worker stopped while publishing; checking our timeline",
            last_error_kind=ErrorKind.AMBIGUOUS,
        )
    ]


def reconcile(x: XClient, *, now: datetime | None = None) -> dict[str, int]:
    """Settle unknown outcomes and recent handoffs against our own replies on X.

    An unknown row is judged only once its lease has run out (plus X's timeline lag),
    so a call still in flight can never be taken for one that never went out. Our
    timeline is read from a cursor: X bills every post read, so each is read once and
    kept in ``OurReply``.
    """
    now = now or timezone.now()
    unknown = list(
        QueuedTweet.objects.filter(
            Q(lease_until__isnull=True) | Q(lease_until__lte=now - RECONCILE_AFTER),
            status=Status.UNKNOWN,
        )
    )
    handed_off = list(
        QueuedTweet.objects.filter(status=Status.HANDOFF, updated_at__gte=now - HANDOFF_WATCH)
    )
    counts = {"posted": 0, "requeued": 0, "failed": 0}
    if not unknown and not handed_off:
        return counts
    try:
        _read_our_replies(x)
    except (ClientError, CircuitOpenError) as exc:
        log.warning("reconcile: cannot read our timeline, will try again: %s", exc)
        return counts
    targets = [tweet.target_tweet_id for tweet in unknown + handed_off]
    found = dict(
        OurReply.objects.filter(in_reply_to_id__in=targets).values_list(
            "in_reply_to_id", "reply_id"
        )
    )
    for tweet in handed_off:
        reply_id = found.get(tweet.target_tweet_id)
        if reply_id and _settle_posted(tweet, Status.HANDOFF, reply_id, now, Channel.SYSTEM):
            counts["posted"] += 1
    for tweet in unknown:
        reply_id = found.get(tweet.target_tweet_id)
        if reply_id:
            counts["posted"] += _settle_posted(tweet, Status.UNKNOWN, reply_id, now, None)
        else:
            counts[_requeue_unknown(tweet, now)] += 1
    return counts


def _read_our_replies(x: XClient) -> None:
    """Fetch our replies newer than the cursor and keep them (rows and cursor together)."""
    since = Cursor.objects.filter(source=OUR_REPLIES).values_list("since_id", flat=True).first()
    replies = x.our_recent_replies(since_id=since or None, max_results=100)
    if not replies:
        return
    with transaction.atomic():
        OurReply.objects.bulk_create(
            [OurReply(reply_id=p.id, in_reply_to_id=p.replied_to_id) for p in replies],
            ignore_conflicts=True,
        )
        newest = max(replies, key=lambda post: int(post.id)).id
        Cursor.objects.update_or_create(source=OUR_REPLIES, defaults={"since_id": newest})


def _settle_posted(
    tweet: QueuedTweet, expected: Status, reply_id: str, now: datetime, channel: Channel | None
) -> bool:
    with transaction.atomic():
        moved = transition(
            tweet.id,
            expected=expected,
            to=Status.POSTED,
            reply_tweet_id=reply_id,
            posted_at=now,
            lease_until=None,
            last_error="",
            last_error_kind="",
            last_error_reason="",
        )
        if moved and channel is not None:
            Decision.objects.create(
                queued_tweet=tweet,
                action=Decision.Action.MARK_POSTED,
                actor="reply guy (seen on our timeline)",
                channel=channel,
                text_after=tweet.draft,
            )
    if moved:
        dead_letter_resolve(tweet)
    return moved


def _requeue_unknown(tweet: QueuedTweet, now: datetime) -> str:
    """Not on our timeline once the call is surely over: it never went out. Send it again.

    No attempt is spent: not knowing is the service's fault, not the item's (and a dead
    X opens the breaker, which stops the round trips). The request id stays, so a
    late answer to the old request still settles the row.
    """
    if tweet.last_error_reason == DUPLICATE:
        # X refused the text as a copy of another of our replies: sending it again can
        # never work. The draft stage's dead-letter retry writes a new one for approval.
        error = (
            f"X refused this reply as a duplicate of another of ours: {tweet.draft!r}. "
            "Write a clearly different one."
        )
        with transaction.atomic():
            # Kept as the item's own error: the new draft's prompt carries it as feedback.
            failed = transition(
                tweet.id,
                expected=Status.UNKNOWN,
                to=Status.FAILED,
                last_error=error,
                last_error_kind=ErrorKind.PERMANENT,
                last_error_reason="",
                **UNCLAIMED,
            )
            if failed:
                dead_letter(tweet, stage="draft", error=error, kind=ErrorKind.PERMANENT, now=now)
        return "failed"
    transition(
        tweet.id,
        expected=Status.UNKNOWN,
        to=Status.APPROVED,
        scheduled_at=now,
        next_attempt_at=now + timedelta(minutes=2),
        lease_until=None,
        claimed_at=None,
    )
    return "requeued"


# --- selectors ----------------------------------------------------------------------------


def _due(now: datetime) -> QuerySet[QueuedTweet]:
    return QueuedTweet.objects.filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
        status=Status.APPROVED,
        scheduled_at__lte=now,
    )


def _published_since(now: datetime, *, author_id: str | None = None) -> list[datetime]:
    rows = QueuedTweet.objects.filter(status__in=PUBLISHED, claimed_at__gt=now - timedelta(days=1))
    if author_id is not None:
        rows = rows.filter(author_id=author_id)
    return list(rows.order_by().values_list("claimed_at", flat=True))


def _author_cap(tweet: QueuedTweet) -> int:
    cap = (
        TargetAccount.objects.filter(x_user_id=tweet.author_id)
        .values_list("replies_per_author_per_day", flat=True)
        .first()
    )
    return cap or settings.MAX_REPLIES_PER_AUTHOR_PER_DAY
