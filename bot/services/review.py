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
from bot.services.transitions import audit, next_draft_version, posted_fields, transition
from resilience.events import event

__all__ = [
    "InvalidEdit",
    "ReviewError",
    "checked_edit",
    "reply_approve",
    "reply_posted_by_hand",
    "reply_regenerate",
    "reply_reject",
    "reply_revise",
]


class ReviewError(Exception):
    """The decision cannot be applied; the message says why, for the person deciding."""


class InvalidEdit(ReviewError):
    """The owner's text breaks X's rules; they may try again with another."""


def reply_approve(
    tweet: QueuedTweet,
    *,
    actor: str,
    channel: Channel,
    version: int,
    text: str | None = None,
    variant: int | None = None,
    reference: str = "",
) -> QueuedTweet:
    """Approve draft ``version`` as it is, its ``variant`` (an index into the variants
    shown with it), or the owner's ``text`` exactly as typed.

    The owner's text is checked against X's rule only (never cleaned like a model's
    output) and may keep a link (``LINK_COST_NOTE`` says what that costs).
    ``reference`` names where the decision was taken (a Telegram message, say).
    """
    if variant is not None:
        variants = tweet.variants or []
        if not 0 <= variant < len(variants) or not isinstance(variants[variant], str):
            raise ReviewError(f"The draft for {tweet.url} has no variant {variant + 1}.")
        text = variants[variant]
    edited = text is not None and text.strip() != tweet.draft and variant is None
    final = checked_edit(text) if edited else (text if variant is not None else tweet.draft)
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
            reference=reference,
        )
    tweet.status, tweet.draft, tweet.approved_at = Status.APPROVED, final, now
    tweet.approved_by, tweet.approved_via = actor, channel
    tweet.scheduled_at = reply_schedule(tweet)
    event(
        "edited_and_approved" if edited else "approved",
        tweet=tweet.id,
        post=tweet.target_tweet_id,
        by=actor,
        via=channel,
        version=version,
        goes_out=tweet.scheduled_at.isoformat(timespec="minutes") if tweet.scheduled_at else None,
    )
    return tweet


def reply_revise(
    tweet: QueuedTweet,
    text: str,
    *,
    actor: str,
    channel: Channel,
    version: int,
    reference: str = "",
) -> QueuedTweet:
    """Replace draft ``version`` with the owner's text, to be approved like any draft.

    The text becomes a new draft version: a button shown with the old one can no
    longer approve anything.
    """
    final = checked_edit(text)
    with transaction.atomic():
        if not transition(
            tweet.id,
            expected=Status.PENDING,
            to=Status.PENDING,
            version=version,
            draft=final,
            draft_version=next_draft_version(),
        ):
            raise ReviewError(_refusal(tweet, version))
        audit(
            tweet,
            Decision.Action.REVISE,
            actor=actor,
            channel=channel,
            before=tweet.draft,
            after=final,
            reference=reference,
        )
    event("revised", tweet=tweet.id, post=tweet.target_tweet_id, by=actor, via=channel)
    return QueuedTweet.objects.get(id=tweet.id)


def reply_regenerate(
    tweet: QueuedTweet,
    *,
    actor: str,
    channel: Channel,
    version: int | None = None,
    reference: str = "",
) -> None:
    """Throw the draft away; the draft stage writes a new one."""
    with transaction.atomic():
        if not transition(
            tweet.id, expected=Status.PENDING, to=Status.NEW, version=version, draft_attempts=0
        ):
            raise ReviewError(_refusal(tweet, version))
        _audit_before(tweet, Decision.Action.REGENERATE, actor, channel, reference)
    event("regenerate_asked", tweet=tweet.id, post=tweet.target_tweet_id, by=actor, via=channel)


def reply_reject(
    tweet: QueuedTweet,
    *,
    actor: str,
    channel: Channel,
    version: int | None = None,
    reference: str = "",
) -> None:
    """Never answer this post. Possible until publishing starts."""
    with transaction.atomic():
        if not transition(
            tweet.id,
            expected=[Status.PENDING, Status.APPROVED],
            to=Status.REJECTED,
            version=version,
        ):
            raise ReviewError(_refusal(tweet, version))
        _audit_before(tweet, Decision.Action.REJECT, actor, channel, reference)
    event("rejected", tweet=tweet.id, post=tweet.target_tweet_id, by=actor, via=channel)


def reply_posted_by_hand(
    tweet: QueuedTweet, *, actor: str, channel: Channel, reference: str = ""
) -> None:
    """The owner says they posted a handed-off reply: it is settled as posted.

    Reconcile settles it by itself when it sees the reply on our timeline; the owner's
    word settles it sooner (with no reply id: X's answer went to the owner's app).
    """
    now = timezone.now()
    with transaction.atomic():
        if not transition(
            tweet.id,
            expected=Status.HANDOFF,
            to=Status.POSTED,
            **posted_fields("", now, tweet.claimed_at),
        ):
            current = (
                QueuedTweet.objects.filter(id=tweet.id).values_list("status", flat=True).first()
            )
            label = Status(current).label.lower() if current else "gone"
            raise ReviewError(f"Only a handed-off reply can be marked posted; this one is {label}.")
        audit(
            tweet,
            Decision.Action.MARK_POSTED,
            actor=actor,
            channel=channel,
            after=tweet.draft,
            reference=reference,
        )
    event("posted_by_hand", tweet=tweet.id, post=tweet.target_tweet_id, by=actor, via=channel)


def _audit_before(
    tweet: QueuedTweet, action: Decision.Action, actor: str, channel: Channel, reference: str
) -> None:
    """A decision that throws the draft away: the audit keeps the text it had."""
    audit(tweet, action, actor=actor, channel=channel, before=tweet.draft, reference=reference)


def checked_edit(text: str | None) -> str:
    """The owner's text as X will take it, or ``InvalidEdit`` saying why not."""
    try:
        return validate_reply(text or "", allow_links=True)
    except InvalidReply as exc:
        raise InvalidEdit(f"This reply cannot be posted: {exc}") from exc


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
