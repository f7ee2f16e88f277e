"""The owner's decisions: approve, edit, regenerate, reject. Each leaves an audit row."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from bot.clients.errors import ClientError
from bot.clients.llm import validate_reply
from bot.models import Channel, Decision, QueuedTweet, Status
from bot.services.publishing import reply_schedule
from bot.services.queue import transition

__all__ = ["ReviewError", "reply_approve", "reply_regenerate", "reply_reject"]


class ReviewError(Exception):
    """The decision cannot be applied; the message says why, for the person deciding."""


def reply_approve(
    tweet: QueuedTweet, *, actor: str, channel: Channel, text: str | None = None
) -> QueuedTweet:
    """Approve the draft, or an edited ``text`` (checked like a model's draft)."""
    final = tweet.draft if text is None else text
    try:
        final = validate_reply(final)
    except ClientError as exc:
        raise ReviewError(f"This reply cannot be posted: {exc.args[0]}") from exc
    action = Decision.Action.APPROVE if final == tweet.draft else Decision.Action.EDIT
    now = timezone.now()
    with transaction.atomic():
        moved = transition(
            tweet.id,
            expected=Status.PENDING,
            to=Status.APPROVED,
            draft=final,
            approved_at=now,
            approved_by=actor,
            approved_via=channel,
            scheduled_at=None,
        )
        if not moved:
            raise ReviewError(_not_waiting(tweet))
        Decision.objects.create(
            queued_tweet=tweet,
            action=action,
            actor=actor,
            channel=channel,
            text_before=tweet.draft,
            text_after=final,
        )
    tweet.status, tweet.draft, tweet.approved_at = Status.APPROVED, final, now
    tweet.approved_by, tweet.approved_via = actor, channel
    tweet.scheduled_at = reply_schedule(tweet)
    return tweet


def reply_regenerate(tweet: QueuedTweet, *, actor: str, channel: Channel) -> None:
    """Throw the draft away; the draft stage writes a new one."""
    with transaction.atomic():
        if not transition(tweet.id, expected=Status.PENDING, to=Status.NEW, draft_attempts=0):
            raise ReviewError(_not_waiting(tweet))
        Decision.objects.create(
            queued_tweet=tweet,
            action=Decision.Action.REGENERATE,
            actor=actor,
            channel=channel,
            text_before=tweet.draft,
        )


def reply_reject(tweet: QueuedTweet, *, actor: str, channel: Channel) -> None:
    """Never answer this post. Possible until publishing starts."""
    with transaction.atomic():
        if not transition(tweet.id, expected=[Status.PENDING, Status.APPROVED], to=Status.REJECTED):
            raise ReviewError(_not_waiting(tweet))
        Decision.objects.create(
            queued_tweet=tweet,
            action=Decision.Action.REJECT,
            actor=actor,
            channel=channel,
            text_before=tweet.draft,
        )


def _not_waiting(tweet: QueuedTweet) -> str:
    current = QueuedTweet.objects.filter(id=tweet.id).values_list("status", flat=True).first()
    label = Status(current).label.lower() if current else "gone"
    return f"The reply to {tweet.url} is no longer waiting for a decision (it is {label})."
