"""Publish approved replies exactly once, or hand them to the owner.

One rule: look before you post, record the intent before calling X, and never call X
again for a row whose outcome is unknown until our own timeline has been read. X has
no idempotency key, so a reply that may exist is looked for, not re-sent.

A publish is three steps, each its own function so that a test can interleave them
across workers: ``claim_next`` (under a lock, keeping every cap), ``reply_send`` (the
claim is checked and the send recorded, then X is called), ``reply_record`` (the answer
is written, naming the claim it belongs to).
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists
from django.utils import timezone

from bot.clients.errors import ClientError, ErrorKind, Reason
from bot.models import Channel, Decision, PipelineControl, QueuedTweet, Status
from bot.pacing import Pacing, earliest_allowed
from bot.policy import PUBLISH_LEASE, service_wait_until
from bot.selectors import (
    author_cap,
    due_replies,
    opted_out,
    our_reply_to,
    published_times,
    publishing_paused,
    through_api,
    through_handoff,
)
from bot.services.dead_letters import Stage, dead_letter_resolve, spend_attempt
from bot.services.notices import as_configuration_error, item_succeeded, notice_service_error
from bot.services.reconciling import our_replies_refresh, report_unreadable_timeline
from bot.services.transitions import UNCLAIMED, audit, posted_fields, remember_our_reply, transition
from resilience import ServiceError
from resilience.events import event

if TYPE_CHECKING:
    from bot.clients.x import XClient

log = logging.getLogger(__name__)

SYSTEM = "reply guy"


class Screen(enum.StrEnum):
    """What the last look before a send found."""

    ANSWERED = "already_answered"
    OPTED_OUT = "opted_out"
    TOO_OLD = "too_old"


def reply_link(reply_id: str) -> str:
    return f"https://x.com/i/web/status/{reply_id}"


def handoff_link(tweet: QueuedTweet) -> str:
    """X's web intent: opens the composer as a reply with the approved text filled in."""
    query = urlencode({"in_reply_to": tweet.target_tweet_id, "text": tweet.draft})
    return f"https://x.com/intent/post?{query}"


# --- the pass ----------------------------------------------------------------------------


def publish_due(x: XClient, *, now: datetime | None = None, limit: int = 20) -> dict[str, int]:
    """Bring our replies up to date, then claim and publish due replies, one at a time.

    Each reply is handled on its own: an unexpected error is logged with the row and
    the pass goes on (``_publish_crashed`` says what becomes of the row).
    """
    now = now or timezone.now()
    counts: Counter[str] = Counter()
    if publishing_paused() or not through_api(due_replies(now)).exists():
        return dict(counts)
    # Look before you post: the owner may have answered by hand, an earlier attempt may
    # have gone out after all. While we cannot look, nothing goes out.
    if not our_replies_refresh(x):
        counts["waiting_for_timeline"] = report_unreadable_timeline(now)
        return dict(counts)
    for _ in range(limit):
        tweet = claim_next(now=now, counts=counts)
        if tweet is None:
            break
        counts["claimed"] += 1
        try:
            status = reply_publish(tweet, x)
        except Exception as exc:
            log.exception("publish: reply %s failed unexpectedly", tweet.id)
            counts["crashed"] += 1
            _publish_crashed(tweet, exc)
            continue
        if status == Status.POSTED:
            counts["published"] += 1
    return dict(counts)


def hand_off_due(*, now: datetime | None = None) -> int:
    """Due replies the API may not send go to the owner as a prefilled link."""
    now = now or timezone.now()
    if publishing_paused():
        return 0
    handed = 0
    for tweet in through_handoff(due_replies(now)):
        try:
            if _screened(tweet, now) is None and transition(
                tweet.id, expected=Status.APPROVED, to=Status.HANDOFF
            ):
                handed += 1
                event(
                    "handed_off", tweet=tweet.id, post=tweet.target_tweet_id, why="X's reply rule"
                )
        except Exception as exc:
            log.exception("handoff: reply %s could not be handed off", tweet.id)
            spend_attempt(tweet, expected=Status.APPROVED, now=now, **_crash(exc))
    return handed


# --- step 1: claim -------------------------------------------------------------------------


def claim_next(*, now: datetime, counts: Counter[str] | None = None) -> QueuedTweet | None:
    """Claim the next due reply for this worker, keeping every cap across all workers.

    Claims are serialised on the pipeline-control row (PostgreSQL row lock; SQLite's
    IMMEDIATE transactions serialise writers anyway), so the caps counted here cannot
    be passed by two workers at once. A reply that may not go yet is rescheduled; one
    that must not go at all (answered already, author opted out, post too old) is
    settled with an audit row. Call it with our replies freshly read
    (``our_replies_refresh``): that is what "answered already" is judged on.
    """
    pacing = Pacing.from_settings()
    with transaction.atomic():
        control, _ = PipelineControl.objects.select_for_update().get_or_create(pk=1)
        if publishing_paused(control):
            return None
        # The lock may have been a while coming: judge and stamp the claim by the time
        # it is granted, not by when this pass started.
        now = max(now, timezone.now())
        candidates = through_api(due_replies(now)).order_by("scheduled_at", "id")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        published = published_times(now)
        for tweet in candidates[:20]:
            try:
                with transaction.atomic():
                    verdict = _consider(tweet, now, pacing, published)
            except Exception as exc:
                # One bad row never stops the others from going out.
                log.exception("publish: reply %s could not be considered", tweet.id)
                spend_attempt(tweet, expected=Status.APPROVED, now=now, **_crash(exc))
                verdict = "crashed"
            if isinstance(verdict, QueuedTweet):
                return verdict
            if counts is not None and verdict is not None:
                counts[verdict] += 1
    return None


def _consider(
    tweet: QueuedTweet, now: datetime, pacing: Pacing, published: list[datetime]
) -> QueuedTweet | str | None:
    """Claim ``tweet`` if it may go now; else settle or reschedule it and say why not."""
    screened = _screened(tweet, now)
    if screened is not None:
        return screened
    allowed = earliest_allowed(
        max(now, tweet.scheduled_at or now),
        pacing,
        published,
        published_times(now, author_id=tweet.author_id),
        author_cap(tweet),
    )
    if allowed > now:
        # A full cap or quiet hours move the reply, never fail it.
        QueuedTweet.objects.filter(id=tweet.id, status=Status.APPROVED).update(
            scheduled_at=allowed, updated_at=now
        )
        return None
    claim = {
        "claimed_at": now,
        "lease_until": now + PUBLISH_LEASE,
        "publish_request_id": uuid.uuid4(),
    }
    if not transition(tweet.id, expected=Status.APPROVED, to=Status.PUBLISHING, **claim):
        return None
    for name, value in claim.items():
        setattr(tweet, name, value)
    tweet.status = Status.PUBLISHING
    return tweet


def _screened(tweet: QueuedTweet, now: datetime) -> Screen | None:
    """The last look at an approved reply before it goes: settle it if it must not go."""
    reply_id = our_reply_to(tweet.target_tweet_id)
    if reply_id is not None:
        with transaction.atomic():
            if transition(
                tweet.id,
                expected=Status.APPROVED,
                to=Status.POSTED,
                **posted_fields(reply_id, now, tweet.claimed_at or now),
            ):
                audit(
                    tweet,
                    Decision.Action.MARK_POSTED,
                    actor=f"{SYSTEM} (already answered on X, not sent again)",
                    channel=Channel.SYSTEM,
                    after=tweet.draft,
                )
        dead_letter_resolve(tweet)
        return Screen.ANSWERED
    if opted_out([tweet.author_username]):
        _withdraw(tweet, Status.SKIPPED, Decision.Action.SKIP, "the author opted out")
        return Screen.OPTED_OUT
    limit = timedelta(hours=settings.MAX_REPLY_AGE_HOURS)
    if tweet.tweet_created_at < now - limit:
        reason = (
            f"the post was over {settings.MAX_REPLY_AGE_HOURS} hours old when its turn came; "
            "a reply this late reads oddly"
        )
        _withdraw(tweet, Status.EXPIRED, Decision.Action.EXPIRE, reason)
        return Screen.TOO_OLD
    return None


def _withdraw(tweet: QueuedTweet, to: Status, action: Decision.Action, reason: str) -> None:
    with transaction.atomic():
        if transition(tweet.id, expected=Status.APPROVED, to=to, skip_reason=reason):
            audit(tweet, action, actor=SYSTEM, channel=Channel.SYSTEM, before=tweet.draft)
            event("not_sent", tweet=tweet.id, post=tweet.target_tweet_id, status=to, why=reason)


# --- step 2: send ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one call to X gave: a reply id or the error; neither when nothing was sent."""

    reply_id: str | None = None
    error: ServiceError | None = None


def reply_publish(tweet: QueuedTweet, x: XClient) -> Status:
    """Send a claimed reply to X and record what happened. Returns the row's status."""
    return reply_record(tweet, reply_send(tweet, x), x)


def reply_send(tweet: QueuedTweet, x: XClient) -> Answer:
    """Call X for a claimed reply, if the claim still holds; the send is recorded first.

    A worker that stalled after its claim may have lost it (its lease ran out and the
    row moved on): then nothing is sent. Any error that is not X's answer (a bug in the
    call) may come after the bytes went out, so it is taken as ambiguous.
    """
    now = timezone.now()
    # One statement checks the claim and the pause switch and records the send, so a
    # pause set a moment ago holds this reply too.
    began = not settings.PUBLISHING_PAUSED and QueuedTweet.objects.filter(
        ~Exists(PipelineControl.objects.filter(pk=1, publishing_paused=True)),
        id=tweet.id,
        status=Status.PUBLISHING,
        publish_request_id=tweet.publish_request_id,
        lease_until__gt=now,
    ).update(sent_at=now, updated_at=now)
    if not began:
        if publishing_paused():
            # Paused after the claim: the reply goes back, untouched, for after the pause.
            transition(
                tweet.id,
                expected=Status.PUBLISHING,
                to=Status.APPROVED,
                claim=tweet.publish_request_id,
                **UNCLAIMED,
            )
        return Answer()
    try:
        return Answer(reply_id=x.create_reply(in_reply_to=tweet.target_tweet_id, text=tweet.draft))
    except ServiceError as exc:
        return Answer(error=exc)
    except Exception as exc:
        log.exception("publish: unexpected error calling X for reply %s", tweet.id)
        return Answer(
            error=ClientError(
                f"unexpected error while calling X (the post may exist): {exc!r}",
                kind=ErrorKind.AMBIGUOUS,
                service="x",
                reason=Reason.UNEXPECTED,
            )
        )


# --- step 3: record -----------------------------------------------------------------------


def reply_record(tweet: QueuedTweet, answer: Answer, x: XClient) -> Status:
    """Write what X answered; every write names the claim (``publish_request_id``)."""
    now = timezone.now()
    if answer.reply_id is not None:
        return _mark_posted(tweet, answer.reply_id, now)
    exc = answer.error
    if exc is None:  # the claim was lost before anything was sent
        return _current(tweet)
    if exc.kind is ErrorKind.TRANSIENT:
        return _wait_for_service(tweet, now, exc)
    if exc.kind is ErrorKind.NOT_PERMITTED:
        event("handed_off", tweet=tweet.id, post=tweet.target_tweet_id, why=str(exc))
        return _release(tweet, Status.HANDOFF, exc, **UNCLAIMED)
    if exc.kind is ErrorKind.AMBIGUOUS:
        # The call is over: judge it after X's timeline lag, not after the lease.
        event("outcome_unknown", tweet=tweet.id, post=tweet.target_tweet_id, error=str(exc))
        return _release(tweet, Status.UNKNOWN, exc, lease_until=now)
    assert isinstance(exc, ClientError)
    return _item_failure(tweet, now, exc, x)


def _mark_posted(tweet: QueuedTweet, reply_id: str, now: datetime) -> Status:
    # Matched on the request id, whatever recovery did meanwhile (judged it unknown, or
    # even queued it again): the answer we now hold settles it, and it counts against
    # the caps from the time it was claimed.
    moved = QueuedTweet.objects.filter(
        id=tweet.id,
        publish_request_id=tweet.publish_request_id,
        status__in=[Status.PUBLISHING, Status.UNKNOWN, Status.APPROVED],
    ).update(status=Status.POSTED, updated_at=now, **posted_fields(reply_id, now, tweet.claimed_at))
    remember_our_reply(reply_id, tweet.target_tweet_id, tweet.draft)
    item_succeeded(Stage.PUBLISH, "x")
    if not moved:
        current = _current(tweet)
        log.error(
            "publish: reply %s to %s was posted but row %s is now %s; reconcile will see it",
            reply_id,
            tweet.target_tweet_id,
            tweet.id,
            current,
        )
        return current
    dead_letter_resolve(tweet)
    event("published", tweet=tweet.id, post=tweet.target_tweet_id, link=reply_link(reply_id))
    return Status.POSTED


def _wait_for_service(tweet: QueuedTweet, now: datetime, exc: ServiceError) -> Status:
    """X is unwell or refuses our setup: the reply waits, keeping its attempts."""
    notice_service_error(exc)
    fields: dict[str, object] = {}
    if exc.reason in (Reason.CIRCUIT_OPEN, Reason.RATE_LIMITED):
        fields["sent_at"] = tweet.sent_at  # refused before sending: nothing went out
    moved = transition(
        tweet.id,
        expected=Status.PUBLISHING,
        to=Status.APPROVED,
        claim=tweet.publish_request_id,
        next_attempt_at=service_wait_until(now, exc.retry_at),
        last_error=str(exc),
        last_error_kind=ErrorKind.TRANSIENT,
        last_error_reason=exc.reason,
        **UNCLAIMED,
        **fields,
    )
    return Status.APPROVED if moved else _current(tweet)


def _release(tweet: QueuedTweet, to: Status, exc: ServiceError, **fields: object) -> Status:
    moved = transition(
        tweet.id,
        expected=Status.PUBLISHING,
        to=to,
        claim=tweet.publish_request_id,
        last_error=str(exc),
        last_error_kind=exc.kind,
        last_error_reason=exc.reason,
        **fields,
    )
    return to if moved else _current(tweet)


def _item_failure(tweet: QueuedTweet, now: datetime, exc: ClientError, x: XClient) -> Status:
    """X refused this reply: one attempt spent, or the dead-letter queue.

    A 404 is confirmed with a lookup of the target before the item is failed for it (a
    misrouted URL answers 404 too), and the same refusal on several different replies
    in a row is taken as our setup's, not theirs.
    """
    target_gone = exc.status == 404 or exc.reason == Reason.TARGET_GONE
    if target_gone:
        try:
            target_gone = not x.post_visible(tweet.target_tweet_id)
        except ServiceError as lookup_error:
            return _wait_for_service(tweet, now, lookup_error)
    # A post really gone is this item's alone; any other refusal may be our setup's.
    configuration = (
        None if target_gone else as_configuration_error(Stage.PUBLISH, str(tweet.id), exc)
    )
    if configuration is not None:
        return _wait_for_service(tweet, now, configuration)
    spent = spend_attempt(
        tweet,
        expected=Status.PUBLISHING,
        claim=tweet.publish_request_id,
        now=now,
        error=str(exc),
        kind=exc.kind,
        reason=exc.reason,
        final=target_gone,
    )
    return spent or _current(tweet)


def _publish_crashed(tweet: QueuedTweet, exc: Exception) -> None:
    """An unexpected error in a claimed reply's publish.

    Before the send was recorded nothing can have gone out: the attempt is spent and
    the reply waits. After it, X may have posted: the row becomes ``unknown`` (the call
    is over) for reconcile to judge, and if it never went out reconcile spends the
    attempt, so a bug that repeats cannot loop.
    """
    now = timezone.now()
    crash = _crash(exc)
    sent_at = QueuedTweet.objects.filter(id=tweet.id).values_list("sent_at", flat=True).first()
    if sent_at == tweet.sent_at:
        spend_attempt(
            tweet, expected=Status.PUBLISHING, claim=tweet.publish_request_id, now=now, **crash
        )
        return
    transition(
        tweet.id,
        expected=Status.PUBLISHING,
        to=Status.UNKNOWN,
        claim=tweet.publish_request_id,
        lease_until=now,
        last_error=crash["error"],
        last_error_kind=ErrorKind.AMBIGUOUS,
        last_error_reason=crash["reason"],
    )


def _crash(exc: Exception) -> dict[str, str]:
    return {
        "error": f"unexpected error: {type(exc).__name__}: {exc}"[:2000],
        "kind": ErrorKind.PERMANENT,
        "reason": Reason.UNEXPECTED,
    }


def _current(tweet: QueuedTweet) -> Status:
    status = QueuedTweet.objects.filter(id=tweet.id).values_list("status", flat=True).first()
    return Status(status) if status else Status.PUBLISHING
