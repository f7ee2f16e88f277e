"""The owner's decisions: approve, edit, regenerate, reject. Each leaves an audit row.

An approval names the text it approves: the caller passes the draft version it showed
the owner, and a draft that changed since (regenerated, redrafted) is refused.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from bot.models import Channel, Decision, QueuedTweet, Status
from bot.replies import InvalidReply, validate_reply
from bot.services.scheduling import reply_schedule
from bot.services.transitions import audit, transition

__all__ = ["ReviewError", "reply_approve", "reply_regenerate", "reply_reject"]


class ReviewError(Exception):
    """The decision cannot be applied; the message says why, for the person deciding."""


def reply_approve(
    tweet: QueuedTweet,
    *,
    actor: str,
    channel: Channel,
    version: int,
    text: str | None = None,
) -> QueuedTweet:
    """Approve draft ``version`` as it is, or the owner's ``text`` exactly as typed.

    The owner's text is checked against X's rule only (never cleaned like a model's
    output) and may keep a link (``LINK_COST_NOTE`` says what that costs).
    """
    edited = text is not None and text.strip() != tweet.draft
    try:
        final = validate_reply(text, allow_links=True) if edited else tweet.draft
    except InvalidReply as exc:
        raise ReviewError(f"This reply cannot be posted: {exc}") from exc
    now = timezone.now()
    with transaction.atomic():
        moved = transition(
            tweet.id,
            expected=Status.PENDING,
            to=Status.APPROVED,
            version=version,
            draft=final,
            approved_at=now,
            approved_by=actor,
            approved_via=channel,
            scheduled_at=None,
        )
        if not moved:
            raise ReviewError(_refusal(tweet, version))
        audit(
            tweet,
            Decision.Action.EDIT if edited else Decision.Action.APPROVE,
            actor=actor,
            channel=channel,
            before=tweet.draft,
            after=final,
        )
    tweet.status, tweet.draft, tweet.approved_at = Status.APPROVED, final, now
    tweet.approved_by, tweet.approved_via = actor, channel
    tweet.scheduled_at = reply_schedule(tweet)
    return tweet


def reply_regenerate(tweet: QueuedTweet, *, actor: str, channel: Channel) -> None:
    """Throw the draft away; the draft stage writes a new one."""
    with transaction.atomic():
        if not transition(tweet.id, expected=Status.PENDING, to=Status.NEW, draft_attempts=0):
            raise ReviewError(_refusal(tweet))
        audit(tweet, Decision.Action.REGENERATE, actor=actor, channel=channel, before=tweet.draft)


def reply_reject(tweet: QueuedTweet, *, actor: str, channel: Channel) -> None:
    """Never answer this post. Possible until publishing starts."""
    with transaction.atomic():
        if not transition(tweet.id, expected=[Status.PENDING, Status.APPROVED], to=Status.REJECTED):
            raise ReviewError(_refusal(tweet))
        audit(tweet, Decision.Action.REJECT, actor=actor, channel=channel, before=tweet.draft)


def _refusal(tweet: QueuedTweet, version: int | None = None) -> str:
    current = QueuedTweet.objects.filter(id=tweet.id).values_list("status", "draft_version").first()
    if current is None:
        return f"The reply to {tweet.url} is gone."
    status, current_version = current
    if status == Status.PENDING and version is not None and version != current_version:
        return (
            f"The draft for {tweet.url} changed since it was shown to you (it was rewritten); "
            "nothing was approved. Look at the new draft and decide again."
        )
    label = Status(status).label.lower()
    return f"The reply to {tweet.url} is no longer waiting for a decision (it is {label})."
