"""Knowing what is on X: our replies read to the end, unknown outcomes settled, sent rows watched.

X has no idempotency key, so "did this reply go out?" is answered by our own timeline.
It is read from a cursor, every page down to it, each post once (X bills every read);
our replies are kept in ``OurReply``, so "is there a reply of ours to this post?" is a
database lookup however many posts we made since.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from bot.clients.errors import ErrorKind, Reason
from bot.models import Channel, Cursor, Decision, OurReply, QueuedTweet, Status
from bot.policy import TIMELINE_LAG, WATCH_SENT_FOR, backoff
from bot.services.cursors import read_to_cursor
from bot.services.dead_letters import Stage, dead_letter_resolve, fail, spend_attempt
from bot.services.notices import notice_service_error
from bot.services.scheduling import reply_schedule
from bot.services.transitions import UNCLAIMED, audit, posted_fields, transition
from resilience import ServiceError
from resilience.alerts import AlertKind, raise_alert

if TYPE_CHECKING:
    from bot.clients.x import Page, Post, XClient

log = logging.getLogger(__name__)

OUR_REPLIES = "our_replies"
# How long sent replies may wait on an unreadable timeline before the owner is told.
UNREADABLE_FOR = timedelta(hours=1)
# Rows that were sent and are not settled as posted: whatever their status, the reply
# may exist on X, so they stay watched.
WATCHED = [Status.APPROVED, Status.FAILED, Status.EXPIRED, Status.REJECTED, Status.SKIPPED]
# Of those, the ones whose reply we wanted: found live, they are simply posted.
WANTED = [Status.APPROVED, Status.FAILED, Status.EXPIRED]
# Targets looked up in our replies per query (SQLite allows 32,766 parameters).
LOOKUP_CHUNK = 10_000
# (rows done, rows in all): told as a long pass goes, for a progress bar.
Progress = Callable[[int, int], None]


class Outcome(enum.StrEnum):
    POSTED = "posted"
    REQUEUED = "requeued"
    REDRAFT = "redraft"
    FAILED = "failed"
    FOUND_UNWANTED = "found_unwanted"


# --- our timeline, read to the end ---------------------------------------------------------


def our_replies_refresh(x: XClient) -> bool:
    """Read every post of ours newer than the cursor; keep our replies. True if complete.

    The very first read stops at posts older than anything we could still be asked
    about: X keeps 3,200 posts of a timeline, and reading them all would cost dollars.
    """

    def keep(posts: list[Post]) -> None:
        OurReply.objects.bulk_create(
            [
                OurReply(reply_id=p.id, in_reply_to_id=p.replied_to_id, text=p.text)
                for p in posts
                if p.replied_to_id
            ],
            ignore_conflicts=True,
        )

    def enough(page: Page, cursor: Cursor) -> bool:
        oldest = min(p.created_at for p in page.posts)
        return not cursor.since_id and oldest < timezone.now() - _history_needed()

    try:
        return read_to_cursor(
            OUR_REPLIES,
            lambda since, until, token: x.our_posts(
                since_id=since, until_id=until, pagination_token=token
            ),
            keep,
            enough=enough,
        )
    except ServiceError as exc:
        log.warning("our timeline not read to the end, will go on next time: %s", exc)
        notice_service_error(exc)
        return False


def _history_needed() -> timedelta:
    return max(WATCH_SENT_FOR, timedelta(hours=settings.MAX_REPLY_AGE_HOURS))


# --- settling ------------------------------------------------------------------------------


def recover_stale(
    *,
    now: datetime | None = None,
    older_than: timedelta | None = None,
    progress: Progress | None = None,
) -> list[int]:
    """Publishing rows whose worker is gone become ``unknown``, for reconcile to settle."""
    now = now or timezone.now()
    stale = list(
        stale_publishing(now=now, older_than=older_than).values_list("id", "publish_request_id")
    )
    moved = []
    for done, (tweet_id, claim) in enumerate(stale, 1):
        if transition(
            tweet_id,
            expected=Status.PUBLISHING,
            to=Status.UNKNOWN,
            claim=claim,
            last_error="the worker stopped while publishing; checking our timeline",
            last_error_kind=ErrorKind.AMBIGUOUS,
            last_error_reason="",
        ):
            moved.append(tweet_id)
        if progress is not None:
            progress(done, len(stale))
    return moved


def stale_publishing(
    *, now: datetime, older_than: timedelta | None = None
) -> QuerySet[QueuedTweet]:
    """Rows in ``publishing`` whose worker is gone: lease expired, or claimed too long ago."""
    stale = Q(lease_until__lt=now)
    if older_than is not None:
        stale |= Q(claimed_at__lt=now - older_than)
    return QueuedTweet.objects.filter(stale, status=Status.PUBLISHING)


def unknown_due(*, now: datetime) -> QuerySet[QueuedTweet]:
    """Unknown rows ready for a verdict: their call is surely over (the lease ran out, or
    the worker received the ambiguous answer) and X's timeline lag has passed."""
    return QueuedTweet.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__lte=now - TIMELINE_LAG),
        status=Status.UNKNOWN,
    )


def reconcile(
    x: XClient, *, now: datetime | None = None, progress: Progress | None = None
) -> dict[str, int]:
    """Settle unknown outcomes, handoffs and every row that was sent, against our replies.

    An unknown row is judged once it is ``unknown_due``. Not found means it never went
    out, and only a timeline read to the end may say so.
    """
    now = now or timezone.now()
    unknown = list(unknown_due(now=now))
    handed_off = list(
        QueuedTweet.objects.filter(status=Status.HANDOFF, updated_at__gte=now - WATCH_SENT_FOR)
    )
    watched = list(
        QueuedTweet.objects.filter(
            status__in=WATCHED, sent_at__gte=now - WATCH_SENT_FOR, reply_tweet_id=""
        )
    )
    counts = {outcome.value: 0 for outcome in Outcome}
    if not (unknown or handed_off or watched):
        return counts
    complete = our_replies_refresh(x)
    if not complete:
        report_unreadable_timeline(now)
    rows = unknown + handed_off + watched
    found = _our_replies_to([tweet.target_tweet_id for tweet in rows])
    for done, tweet in enumerate(rows, 1):
        try:
            outcome = _judge(tweet, found.get(tweet.target_tweet_id), complete, now)
        except Exception:
            log.exception("reconcile: row %s could not be judged; next pass tries again", tweet.id)
            outcome = None
        if outcome is not None:
            counts[outcome] += 1
        if progress is not None:
            progress(done, len(rows))
    return counts


def _our_replies_to(targets: list[str]) -> dict[str, str]:
    """Our reply (the oldest known) to each of ``targets`` that has one."""
    found: dict[str, str] = {}
    for start in range(0, len(targets), LOOKUP_CHUNK):
        found.update(
            OurReply.objects.filter(in_reply_to_id__in=targets[start : start + LOOKUP_CHUNK])
            .order_by("-reply_id")
            .values_list("in_reply_to_id", "reply_id")
        )
    return found


def report_unreadable_timeline(now: datetime) -> int:
    """Replies wait while our timeline cannot be read (a rate limit, a usage cap, X
    failing): nothing is sent or settled blind. After an hour of that the owner hears
    of it. Returns how many replies wait on it."""
    waiting = QueuedTweet.objects.filter(
        Q(status=Status.UNKNOWN) | Q(status=Status.APPROVED, scheduled_at__lte=now)
    )
    stuck = waiting.filter(updated_at__lt=now - UNREADABLE_FOR).count()
    if stuck:
        raise_alert(
            kind=AlertKind.TIMELINE_UNREADABLE,
            subject="x",
            message=(
                f"{stuck} replies have waited over an hour because X does not let Reply Guy "
                "read your timeline (see the log and the circuit breakers page). Nothing is "
                "sent until it can check that you have not answered already."
            ),
        )
    return waiting.count()


def _judge(
    tweet: QueuedTweet, reply_id: str | None, complete: bool, now: datetime
) -> Outcome | None:
    if reply_id is not None:
        if tweet.status in (Status.REJECTED, Status.SKIPPED):
            return _found_unwanted(tweet, reply_id, now)
        return _settle_posted(tweet, reply_id, now)
    if tweet.status == Status.UNKNOWN and complete:
        return _not_sent(tweet, now)
    return None


def _settle_posted(tweet: QueuedTweet, reply_id: str, now: datetime) -> Outcome | None:
    """Our reply to this post is on X: the row is posted, whichever path got it there."""
    claim = tweet.publish_request_id if tweet.status == Status.UNKNOWN else None
    with transaction.atomic():
        if not transition(
            tweet.id,
            expected=tweet.status,
            to=Status.POSTED,
            claim=claim,
            **posted_fields(reply_id, now, tweet.claimed_at),
        ):
            return None
        if tweet.status != Status.UNKNOWN:  # the bot's own call is its own record
            audit(
                tweet,
                Decision.Action.MARK_POSTED,
                actor="reply guy (seen on our timeline)",
                channel=Channel.SYSTEM,
                after=tweet.draft,
            )
    dead_letter_resolve(tweet)
    return Outcome.POSTED


def _found_unwanted(tweet: QueuedTweet, reply_id: str, now: datetime) -> Outcome | None:
    """A reply the owner no longer wants went out after all: record it and tell them."""
    with transaction.atomic():
        moved = QueuedTweet.objects.filter(
            id=tweet.id, status=tweet.status, reply_tweet_id=""
        ).update(reply_tweet_id=reply_id, posted_at=now, updated_at=now)
        if not moved:
            return None
        audit(
            tweet,
            Decision.Action.FOUND_LIVE,
            actor="reply guy (seen on our timeline)",
            channel=Channel.SYSTEM,
            after=tweet.draft,
        )
        raise_alert(
            kind=AlertKind.UNWANTED_REPLY_LIVE,
            subject=f"tweet {tweet.target_tweet_id}",
            message=(
                f"A reply you {tweet.get_status_display().lower()} is live on X: "
                f"https://x.com/i/status/{reply_id} (to {tweet.url}). It was sent before "
                "the decision and X answered unclearly; delete it on X if you do not want it."
            ),
        )
    return Outcome.FOUND_UNWANTED


def _not_sent(tweet: QueuedTweet, now: datetime) -> Outcome | None:
    """Not on our timeline, read to the end, once the call is surely over: it never went out.

    Sent again without spending an attempt (not knowing is the service's fault). Only
    the claim that was judged is requeued: a row that became unknown again meanwhile,
    from a newer attempt, is left to its own lease.
    """
    claim = tweet.publish_request_id
    if tweet.last_error_reason == Reason.DUPLICATE:
        # X refused the text as a copy of another of our replies: sending it again can
        # never work. The draft stage's dead-letter retry writes a new one for approval.
        error = (
            f"X refused this reply as a duplicate of another of ours: {tweet.draft!r}. "
            "Write a clearly different one."
        )
        failed = fail(
            tweet,
            stage=Stage.DRAFT,
            expected=Status.UNKNOWN,
            claim=claim,
            error=error,
            kind=ErrorKind.PERMANENT,
            now=now,
            last_error_kind=ErrorKind.PERMANENT,
            last_error_reason="",
            **UNCLAIMED,
        )
        return Outcome.REDRAFT if failed else None
    if tweet.last_error_reason == Reason.UNEXPECTED:
        # Our own code failed around the call and nothing went out: a bug repeats, so
        # this spends an attempt instead of looping for ever.
        spent = spend_attempt(
            tweet,
            expected=Status.UNKNOWN,
            claim=claim,
            now=now,
            error=tweet.last_error,
            kind=ErrorKind.PERMANENT,
            reason=Reason.UNEXPECTED,
        )
        return {Status.APPROVED: Outcome.REQUEUED, Status.FAILED: Outcome.FAILED}.get(spent)
    moved = transition(
        tweet.id,
        expected=Status.UNKNOWN,
        to=Status.APPROVED,
        claim=claim,
        scheduled_at=None,
        next_attempt_at=now + backoff(1),
        lease_until=None,
        claimed_at=None,
    )
    if not moved:
        return None
    # A fresh time by the rules of any approved reply: many requeued at once (after a
    # night of X failing, say) are spread by the caps and spacing, not all due at once.
    try:
        reply_schedule(tweet, now=now)
    except Exception:
        log.exception("reconcile: reply %s requeued; the schedule stage times it", tweet.id)
    return Outcome.REQUEUED
