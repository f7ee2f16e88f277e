"""Reads the stages share: each rule that picks rows is written once, here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet

from bot.models import OptedOutAuthor, OurReply, PipelineControl, QueuedTweet, Status, TargetAccount
from bot.policy import SIMILAR_WITHIN

# Rows whose claim counts against the caps: they went, or may have gone, out.
PUBLISHED = [Status.PUBLISHING, Status.POSTED, Status.UNKNOWN]


def publishing_paused(control: PipelineControl | None = None) -> bool:
    """The pause switch: the environment's, or the operator's row (``control`` if read)."""
    if settings.PUBLISHING_PAUSED:
        return True
    if control is not None:
        return control.publishing_paused
    return PipelineControl.objects.filter(pk=1, publishing_paused=True).exists()


def through_api(rows: QuerySet[QueuedTweet]) -> QuerySet[QueuedTweet]:
    """The rows REPLY_MODE sends through X's API (X's 2026 rule: summoned ones in auto)."""
    mode = settings.REPLY_MODE
    if mode == "api":
        return rows
    if mode == "auto":
        return rows.filter(summoned=True)
    return rows.none()


def through_handoff(rows: QuerySet[QueuedTweet]) -> QuerySet[QueuedTweet]:
    """The rows REPLY_MODE hands to the owner as a prefilled link."""
    mode = settings.REPLY_MODE
    if mode == "handoff":
        return rows
    if mode == "auto":
        return rows.filter(summoned=False)
    return rows.none()


def due_replies(now: datetime) -> QuerySet[QueuedTweet]:
    return QueuedTweet.objects.filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
        status=Status.APPROVED,
        scheduled_at__lte=now,
    )


def published_times(now: datetime, *, author_id: str | None = None) -> list[datetime]:
    """Claim times of the replies of the last day that went or may have gone out."""
    rows = QueuedTweet.objects.filter(status__in=PUBLISHED, claimed_at__gt=now - timedelta(days=1))
    if author_id is not None:
        rows = rows.filter(author_id=author_id)
    return list(rows.order_by().values_list("claimed_at", flat=True))


def author_cap(tweet: QueuedTweet) -> int:
    cap = (
        TargetAccount.objects.filter(x_user_id=tweet.author_id)
        .values_list("replies_per_author_per_day", flat=True)
        .first()
    )
    return cap or settings.MAX_REPLIES_PER_AUTHOR_PER_DAY


def opted_out(usernames: Iterable[str]) -> set[str]:
    """Which of ``usernames`` (any case) asked never to be answered, lower-cased."""
    wanted = {name.lower() for name in usernames if name}
    if not wanted:
        return set()
    return {
        name.lower()
        for name in OptedOutAuthor.objects.values_list("username", flat=True)
        if name.lower() in wanted
    }


def our_reply_to(target_tweet_id: str) -> str | None:
    """The id of a reply of ours to this post that we know of, by the bot or by hand."""
    return (
        OurReply.objects.filter(in_reply_to_id=target_tweet_id)
        .order_by("reply_id")
        .values_list("reply_id", flat=True)
        .first()
    )


def our_recent_reply_texts(now: datetime) -> list[str]:
    """The texts of our replies of the last week, for the near-duplicate check."""
    return list(
        OurReply.objects.filter(seen_at__gte=now - SIMILAR_WITHIN)
        .exclude(text="")
        .values_list("text", flat=True)
    )
