"""What the owner's message about a queued tweet says, and which buttons it has.

One pure function of the tweet's current state: the outbox sends it, and edits the
message whenever the rendering changes (a new draft, a decision, the result), so
every path that moves a tweet updates the owner's phone without knowing about it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

from bot.models import QueuedTweet, Status
from bot.selectors import through_api
from bot.services.publishing import handoff_link, reply_link
from bot.telegram.buttons import Act, button

# Statuses whose message is final: it is never edited again.
FINAL = {Status.POSTED, Status.REJECTED, Status.EXPIRED, Status.SKIPPED}
POST_PREVIEW = 600  # characters of the post shown; a long post is cut


@dataclass(frozen=True)
class Rendering:
    text: str
    # (label, callback data) for a callback button; (label, "https://...") for a link.
    buttons: list[tuple[str, str]]

    @property
    def fingerprint(self) -> str:
        data = json.dumps([self.text, self.buttons], ensure_ascii=False)
        return hashlib.sha256(data.encode()).hexdigest()


def render(tweet: QueuedTweet, *, now: datetime | None = None) -> Rendering:
    """``now`` is when the message was first sent: the post's age is shown as of then."""
    now = now or timezone.now()
    header = _header(tweet, now)
    status = Status(tweet.status)
    if status == Status.PENDING:
        return Rendering(f"{header}\n\n{_draft_block(tweet)}\n\n{_route(tweet)}", _decide(tweet))
    if status == Status.NEW:
        return Rendering(f"{header}\n\n🔄 Writing a new draft…", [])
    if status == Status.HANDOFF:
        text = (
            f"{header}\n\n👉 Your turn: X does not let Reply Guy answer this post through "
            f"the API. Tap “Post on X” (the reply is filled in), then “I posted it”.\n\n"
            f"Reply:\n{tweet.draft}"
        )
        return Rendering(
            text,
            [
                ("Post on X", handoff_link(tweet)),
                ("✅ I posted it", button(Act.POSTED_BY_HAND, tweet.id, tweet.draft_version)),
            ],
        )
    return Rendering(f"{header}\n\n{_outcome(tweet)}\n\nReply:\n{tweet.draft}", [])


def _header(tweet: QueuedTweet, now: datetime) -> str:
    post = tweet.text if len(tweet.text) <= POST_PREVIEW else tweet.text[:POST_PREVIEW] + "…"
    return (
        f"@{tweet.author_username} · {_age(now - tweet.tweet_created_at)} ago\n{post}\n{tweet.url}"
    )


def _draft_block(tweet: QueuedTweet) -> str:
    lines = [f"Draft:\n{tweet.draft}"]
    for number, variant in _variants(tweet):
        lines.append(f"Variant {number}:\n{variant}")
    return "\n\n".join(lines)


def _variants(tweet: QueuedTweet) -> list[tuple[int, str]]:
    """The other drafts, numbered as the buttons number them (1 is the draft itself)."""
    return [
        (index + 1, text)
        for index, text in enumerate(tweet.variants or [])
        if index > 0 and isinstance(text, str) and text and text != tweet.draft
    ]


def _decide(tweet: QueuedTweet) -> list[tuple[str, str]]:
    version = tweet.draft_version
    buttons = [("✅ Approve", button(Act.APPROVE, tweet.id, version))]
    buttons += [
        (f"✅ Use variant {number}", button(Act.VARIANT, tweet.id, version, number - 1))
        for number, _ in _variants(tweet)
    ]
    buttons += [
        ("✏️ Edit", button(Act.EDIT, tweet.id, version)),
        ("🔄 Regenerate", button(Act.REGENERATE, tweet.id, version)),
        ("❌ Reject", button(Act.REJECT, tweet.id, version)),
    ]
    return buttons


def _route(tweet: QueuedTweet) -> str:
    api = through_api(QueuedTweet.objects.filter(id=tweet.id)).exists()
    if api:
        return "If approved, Reply Guy posts it through the API (the author summoned us)."
    return "If approved, it comes back to you as a link to post on X yourself (X's reply rule)."


def _outcome(tweet: QueuedTweet) -> str:
    status = Status(tweet.status)
    if status == Status.APPROVED:
        who = f"✅ Approved by {tweet.approved_by}"
        if tweet.scheduled_at:
            return f"{who}; goes out around {_local(tweet.scheduled_at)}."
        return f"{who}; its time is being set."
    if status == Status.PUBLISHING:
        return "📤 Publishing now…"
    if status == Status.POSTED:
        if tweet.reply_tweet_id:
            return f"✅ Posted: {reply_link(tweet.reply_tweet_id)}"
        return "✅ Posted (by hand)."
    if status == Status.UNKNOWN:
        return "❔ Sent to X without a clear answer; checking our timeline before anything else."
    if status == Status.REJECTED:
        return "❌ Rejected."
    if status == Status.EXPIRED:
        return f"⌛ Expired: {tweet.skip_reason or 'the post is too old to answer'}."
    if status == Status.SKIPPED:
        return f"⏭ Not sent: {tweet.skip_reason or 'skipped'}."
    return f"⚠️ Failed: {tweet.last_error or 'see the admin'}"


def _age(delta: object) -> str:
    seconds = max(0, int(delta.total_seconds()))  # type: ignore[attr-defined]
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def _local(when: datetime) -> str:
    local = when.astimezone(ZoneInfo(settings.TIME_ZONE))
    return local.strftime("%H:%M") + f" {settings.TIME_ZONE}"
