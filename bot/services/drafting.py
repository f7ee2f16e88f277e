"""Draft replies for new posts, and let stale ones expire."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from bot.clients.errors import ClientError, ErrorKind
from bot.models import QueuedTweet, Status, TargetAccount
from bot.services.queue import dead_letter, dead_letter_resolve, transition
from resilience import CircuitOpenError

if TYPE_CHECKING:
    from bot.clients.llm import LLMClient

log = logging.getLogger(__name__)

# The model gets this many tries at a valid reply (each with the last problem as
# feedback) before the post goes to the dead-letter queue.
MAX_DRAFT_ATTEMPTS = 3
# A worker drafting a post holds it this long (the model's timeout is 45 s).
DRAFT_LEASE = timedelta(minutes=2)


def draft_new(llm: LLMClient, *, now: datetime | None = None, limit: int = 20) -> dict[str, int]:
    """One pass of the draft stage over posts waiting for a draft."""
    now = now or timezone.now()
    counts = {"drafted": 0, "skipped": 0, "retry": 0, "failed": 0, "waiting": 0}
    waiting = QueuedTweet.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now), status=Status.NEW
    )
    for tweet in waiting.order_by("created_at")[:limit]:
        if not _claim(tweet, now):
            continue  # another worker is drafting it: one model call per draft
        outcome = reply_draft(tweet, llm, now=now)
        counts[outcome] += 1
        if outcome in ("waiting", "retry"):
            # Free it for the next pass at once, whoever runs it.
            QueuedTweet.objects.filter(id=tweet.id, status=Status.NEW).update(lease_until=None)
        if outcome == "waiting":
            break  # the model is unavailable: the rest wait too, nothing fails
    return counts


def _claim(tweet: QueuedTweet, now: datetime) -> bool:
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    return bool(
        QueuedTweet.objects.filter(free, id=tweet.id, status=Status.NEW).update(
            lease_until=now + DRAFT_LEASE
        )
    )


def reply_draft(tweet: QueuedTweet, llm: LLMClient, *, now: datetime | None = None) -> str:
    now = now or timezone.now()
    persona = _persona(tweet)
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
                    skip_reason=f"relevance {score:.2f} below {settings.RELEVANCE_THRESHOLD}",
                )
                return "skipped"
        variants = llm.draft_replies(
            post_text=tweet.text,
            author=tweet.author_username,
            persona=persona,
            variants=settings.DRAFT_VARIANTS,
            feedback=feedback,
        )
    except CircuitOpenError as exc:
        log.info("draft: model unavailable (%s); posts wait", exc)
        return "waiting"
    except ClientError as exc:
        if exc.kind is ErrorKind.TRANSIENT:
            log.info("draft: model unavailable (%s); posts wait", exc)
            return "waiting"
        return _invalid_output(tweet, exc, now)
    moved = transition(
        tweet.id,
        expected=Status.NEW,
        to=Status.PENDING,
        draft=variants[0],
        variants=variants,
        draft_attempts=tweet.draft_attempts + 1,
        last_error="",
        last_error_kind="",
        last_error_reason="",
        lease_until=None,
    )
    if moved:
        dead_letter_resolve(tweet)
    return "drafted"


def expire_stale(*, now: datetime | None = None) -> int:
    """Posts too old to answer while waiting for a decision are let go."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.MAX_POST_AGE_HOURS)
    return QueuedTweet.objects.filter(
        status__in=[Status.NEW, Status.PENDING], tweet_created_at__lt=cutoff
    ).update(status=Status.EXPIRED, skip_reason="too old to answer", updated_at=now)


def _invalid_output(tweet: QueuedTweet, exc: ClientError, now: datetime) -> str:
    attempts = tweet.draft_attempts + 1
    fields = {"draft_attempts": attempts, "last_error": str(exc), "last_error_kind": exc.kind}
    if attempts < MAX_DRAFT_ATTEMPTS:
        transition(tweet.id, expected=Status.NEW, to=Status.NEW, **fields)
        return "retry"
    with transaction.atomic():
        if transition(tweet.id, expected=Status.NEW, to=Status.FAILED, **fields):
            dead_letter(tweet, stage="draft", error=str(exc), kind=exc.kind, now=now)
    return "failed"


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
