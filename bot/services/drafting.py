"""Draft replies for new posts, and let stale ones expire."""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from bot.clients.errors import ClientError, ErrorKind, Reason
from bot.models import QueuedTweet, Status, TargetAccount
from bot.policy import MAX_DRAFT_ATTEMPTS, backoff, draft_lease
from bot.replies import SIMILAR, most_similar
from bot.selectors import our_recent_reply_texts
from bot.services.dead_letters import Stage, dead_letter_resolve, fail
from bot.services.notices import as_configuration_error, item_succeeded, notice_service_error
from bot.services.transitions import NO_ERROR, next_draft_version, transition
from resilience import ServiceError
from resilience.events import event

if TYPE_CHECKING:
    from bot.clients.llm import LLMClient

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    DRAFTED = "drafted"
    SKIPPED = "skipped"
    RETRY = "retry"
    FAILED = "failed"
    WAITING = "waiting"


def draft_new(llm: LLMClient, *, now: datetime | None = None, limit: int = 20) -> dict[str, int]:
    """One pass of the draft stage over posts waiting for a draft.

    Each post is handled on its own: an unexpected error (a bug, a value the database
    refuses) marks that post, spends one of its attempts and pushes its next one back;
    the pass goes on with the next post.
    """
    now = now or timezone.now()
    counts = {outcome.value: 0 for outcome in Outcome}
    for tweet in _waiting(now).order_by("created_at")[:limit]:
        if not _claim(tweet, llm):
            continue  # another worker is drafting it: one model call per draft
        try:
            outcome = reply_draft(tweet, llm)
        except Exception as exc:
            log.exception("draft: post %s failed unexpectedly", tweet.target_tweet_id)
            outcome = _crashed(tweet, exc)
            counts["crashed"] = counts.get("crashed", 0) + 1
        counts[outcome] += 1
        if outcome in (Outcome.WAITING, Outcome.RETRY):
            # Free it for the next pass at once, whoever runs it.
            QueuedTweet.objects.filter(
                id=tweet.id, status=Status.NEW, lease_until=tweet.lease_until
            ).update(lease_until=None)
        if outcome == Outcome.WAITING:
            break  # the model is unavailable: the rest wait too, nothing fails
    return counts


def _waiting(now: datetime) -> QuerySet[QueuedTweet]:
    return QueuedTweet.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now),
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
        status=Status.NEW,
    )


def _claim(tweet: QueuedTweet, llm: LLMClient) -> bool:
    # Stamped when this claim is made (a pass that started minutes ago must not hand
    # out leases that have already run out), and long enough for the slowest draft.
    now = timezone.now()
    lease = now + draft_lease(settings.DRAFT_VARIANTS, llm.timeout)
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    if not QueuedTweet.objects.filter(free, id=tweet.id, status=Status.NEW).update(
        lease_until=lease
    ):
        return False
    tweet.lease_until = lease
    return True


def reply_draft(tweet: QueuedTweet, llm: LLMClient) -> Outcome:
    now = timezone.now()
    feedback = tweet.last_error if tweet.last_error_kind == ErrorKind.PERMANENT else None
    try:
        if _needs_relevance(tweet):
            score = llm.relevance(post_text=tweet.text, topics=settings.TOPIC_KEYWORDS)
            QueuedTweet.objects.filter(id=tweet.id).update(relevance=score)
            if score < settings.RELEVANCE_THRESHOLD:
                transition(
                    tweet.id,
                    expected=Status.NEW,
                    to=Status.SKIPPED,
                    lease=tweet.lease_until,
                    skip_reason=f"relevance {score:.2f} below {settings.RELEVANCE_THRESHOLD}",
                )
                event(
                    "skipped",
                    tweet=tweet.id,
                    post=tweet.target_tweet_id,
                    why="relevance",
                    score=f"{score:.2f}",
                )
                return Outcome.SKIPPED
        variants = llm.draft_replies(
            post_text=tweet.text,
            author=tweet.author_username,
            persona=_persona(tweet),
            variants=settings.DRAFT_VARIANTS,
            feedback=feedback,
            allow_links=settings.ALLOW_LINKS_IN_REPLIES,
        )
        variants = _unlike_our_replies(variants, now)
    except ServiceError as exc:
        if exc.kind is ErrorKind.PERMANENT and isinstance(exc, ClientError):
            return _invalid_output(tweet, exc, now)
        log.info("draft: model unavailable (%s); posts wait", exc)
        notice_service_error(exc)
        return Outcome.WAITING
    # Written only under this worker's lease: one that outlived it leaves the post to
    # the worker that took it over.
    moved = transition(
        tweet.id,
        expected=Status.NEW,
        to=Status.PENDING,
        lease=tweet.lease_until,
        draft=variants[0],
        variants=variants,
        draft_version=next_draft_version(),
        draft_attempts=tweet.draft_attempts + 1,
        lease_until=None,
        next_attempt_at=None,
        **NO_ERROR,
    )
    item_succeeded(Stage.DRAFT, "llm")
    if moved:
        dead_letter_resolve(tweet)
        event("drafted", tweet=tweet.id, post=tweet.target_tweet_id, variants=len(variants))
    return Outcome.DRAFTED


def _unlike_our_replies(variants: list[str], now: datetime) -> list[str]:
    """Drop drafts nearly identical to a reply of ours of the last week.

    X flags repetitive replies, and its duplicate check catches only exact copies. If
    every variant is too close, the model is asked again with the reason as feedback.
    """
    ours = our_recent_reply_texts(now)
    kept: list[str] = []
    closest: tuple[float, str] | None = None
    for text in variants:
        similar = most_similar(text, ours)
        if similar is not None and similar[0] >= SIMILAR:
            closest = max(closest or similar, similar)
            continue
        kept.append(text)
    if kept:
        return kept
    assert closest is not None
    raise ClientError(
        f"too close to a reply we already posted ({closest[0]:.0%} the same words): "
        f"{closest[1]!r}; write something clearly different",
        kind=ErrorKind.PERMANENT,
        service="llm",
    )


def expire_stale(*, now: datetime | None = None) -> int:
    """Posts too old to answer while waiting for a decision are let go."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.MAX_POST_AGE_HOURS)
    return QueuedTweet.objects.filter(
        status__in=[Status.NEW, Status.PENDING], tweet_created_at__lt=cutoff
    ).update(status=Status.EXPIRED, skip_reason="too old to answer", updated_at=now)


def _invalid_output(tweet: QueuedTweet, exc: ClientError, now: datetime) -> Outcome:
    configuration = as_configuration_error(Stage.DRAFT, str(tweet.id), exc)
    if configuration is not None:
        notice_service_error(configuration)
        return Outcome.WAITING  # the model's setup, not this post: nothing spent
    return _spend_attempt(tweet, str(exc), exc.kind, exc.reason, now)


def _crashed(tweet: QueuedTweet, exc: Exception) -> Outcome:
    error = f"unexpected error while drafting: {type(exc).__name__}: {exc}"[:2000]
    return _spend_attempt(tweet, error, ErrorKind.PERMANENT, Reason.UNEXPECTED, timezone.now())


def _spend_attempt(
    tweet: QueuedTweet, error: str, kind: str, reason: str, now: datetime
) -> Outcome:
    attempts = tweet.draft_attempts + 1
    fields = {
        "draft_attempts": attempts,
        "last_error_kind": kind,
        "last_error_reason": reason,
        "lease_until": None,
    }
    if attempts >= MAX_DRAFT_ATTEMPTS:
        fail(
            tweet,
            stage=Stage.DRAFT,
            expected=Status.NEW,
            lease=tweet.lease_until,
            error=error,
            kind=kind,
            now=now,
            **fields,
        )
        return Outcome.FAILED
    # A bug or a bad value is not fixed by asking again at once; invalid output may be.
    delay = backoff(attempts) if reason == Reason.UNEXPECTED else None
    transition(
        tweet.id,
        expected=Status.NEW,
        to=Status.NEW,
        lease=tweet.lease_until,
        last_error=error,
        next_attempt_at=now + delay if delay else None,
        **fields,
    )
    return Outcome.RETRY


def _needs_relevance(tweet: QueuedTweet) -> bool:
    # Authors who summoned us get an answer whatever the score.
    return settings.RELEVANCE_THRESHOLD > 0 and tweet.relevance is None and not tweet.summoned


def _persona(tweet: QueuedTweet) -> str:
    override = (
        TargetAccount.objects.filter(x_user_id=tweet.author_id)
        .exclude(persona="")
        .values_list("persona", flat=True)
        .first()
    )
    return override or settings.PERSONA
