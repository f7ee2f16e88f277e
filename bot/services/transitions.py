"""Moving queued tweets between statuses, and the audit trail of every decision."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from bot.models import Channel, Decision, OurReply, QueuedTweet, Status
from bot.services.scheduling import repace_after_release

__all__ = [
    "NO_ERROR",
    "SETTLED",
    "UNCLAIMED",
    "audit",
    "next_draft_version",
    "posted_fields",
    "remember_our_reply",
    "transition",
]

log = logging.getLogger(__name__)

# A tweet in one of these is done with; its dead-letter row, if any, is resolved.
SETTLED = [Status.POSTED, Status.REJECTED, Status.SKIPPED, Status.EXPIRED, Status.HANDOFF]
# A reply that did not go out gives up its claim: it no longer counts against the caps
# (``transition`` then lets replies to the same author it held go sooner).
UNCLAIMED = {"lease_until": None, "publish_request_id": None, "claimed_at": None}
# Statuses a claim is held in.
CLAIMING = {Status.PUBLISHING, Status.UNKNOWN}
NO_ERROR = {"last_error": "", "last_error_kind": "", "last_error_reason": ""}


def transition(
    tweet_id: int,
    *,
    expected: Status | Iterable[Status],
    to: Status,
    claim: uuid.UUID | None = None,
    version: int | None = None,
    lease: datetime | None = None,
    **fields: object,
) -> bool:
    """Move one row if, and only if, it is still in an expected status.

    The conditional UPDATE is what lets any number of workers run the same stage: the
    one whose update counts 1 row owns the move; the others see 0 and leave it.
    ``claim`` is the publish request a write belongs to: a write made after a call to X
    names it, so a late answer can never move a row another attempt now owns.
    ``version`` is the draft version a decision was made on: a draft rewritten since
    is not the one decided about. ``lease`` is the drafting lease a model's answer
    belongs to: a worker that outlived its lease does not overwrite its successor.
    """
    statuses = [expected] if isinstance(expected, str) else list(expected)
    rows = QueuedTweet.objects.filter(id=tweet_id, status__in=statuses)
    if claim is not None:
        rows = rows.filter(publish_request_id=claim)
    if version is not None:
        rows = rows.filter(draft_version=version)
    if lease is not None:
        rows = rows.filter(lease_until=lease)
    moved = rows.update(status=to, updated_at=timezone.now(), **fields) == 1
    if moved and "claimed_at" in fields and fields["claimed_at"] is None and CLAIMING & {*statuses}:
        _claim_given_up(tweet_id)
    return moved


def _claim_given_up(tweet_id: int) -> None:
    """A claim given up no longer fills the caps: replies to the same author that it
    held may go sooner. A failure here never undoes the move itself."""
    try:
        with transaction.atomic():
            repace_after_release(tweet_id)
    except Exception:
        log.exception("pacing: replies held with reply %s keep their time", tweet_id)


def posted_fields(reply_id: str, now: datetime, claimed_at: datetime | None) -> dict[str, object]:
    """What every path that settles a row as posted writes.

    The claim time is kept (or set): the caps count claims, so a reply that went out
    counts whichever path settled it.
    """
    return {
        "reply_tweet_id": reply_id,
        "posted_at": now,
        "lease_until": None,
        "next_attempt_at": None,
        "claimed_at": claimed_at or now,
        **NO_ERROR,
    }


def remember_our_reply(reply_id: str, target_tweet_id: str, text: str) -> None:
    """Known as ours from now on: reconcile need not find it, and a quote of it summons us."""
    OurReply.objects.bulk_create(
        [OurReply(reply_id=reply_id, in_reply_to_id=target_tweet_id, text=text)],
        ignore_conflicts=True,
    )


def audit(
    tweet: QueuedTweet,
    action: Decision.Action,
    *,
    actor: str,
    channel: Channel,
    before: str = "",
    after: str = "",
    reference: str = "",
) -> Decision:
    """The one writer of the audit trail: who decided what, where, with which text."""
    return Decision.objects.create(
        queued_tweet_id=tweet.id,
        action=action,
        actor=actor,
        channel=channel,
        text_before=before,
        text_after=after,
        reference=reference[:100],
    )


def next_draft_version() -> F:
    return F("draft_version") + 1
