"""Find posts worth answering: target accounts, mentions of us, search queries.

Each source is read from its cursor; the new rows and the advanced cursor are saved
in one transaction, so a crash between the two reads the same posts again (and the
unique post id drops the repeats) rather than skipping any. Posts we will not answer
are kept as ``skipped`` with the reason, so they are never fetched and judged twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bot.clients.errors import ClientError
from bot.models import (
    Cursor,
    OptedOutAuthor,
    QueuedTweet,
    SearchQuery,
    Source,
    Status,
    TargetAccount,
)
from resilience import CircuitOpenError

if TYPE_CHECKING:
    from bot.clients.x import Page, Post, User, XClient

log = logging.getLogger(__name__)

MAX_PAGES = 5  # per source and pass; the cursor carries the rest to the next pass


@dataclass(frozen=True)
class Feed:
    key: str  # the cursor's name
    source: Source
    fetch: Callable[[str | None, str | None], Page]


def discover_all(x: XClient, *, now: datetime | None = None) -> dict[str, int]:
    """One pass over every source. X being unavailable leaves every cursor where it was."""
    now = now or timezone.now()
    counts = {"found": 0, "queued": 0, "skipped": 0}
    try:
        me = x.me()
        feeds = _feeds(x, me.id)
    except (ClientError, CircuitOpenError) as exc:
        log.warning("discover: X unavailable, nothing read: %s", exc)
        return counts
    for feed in feeds:
        try:
            posts, newest = _read(feed)
        except (ClientError, CircuitOpenError) as exc:
            log.warning("discover: %s not read, will try again: %s", feed.key, exc)
            if isinstance(exc, CircuitOpenError):
                break
            continue
        found, queued = _save(feed, posts, newest, me, now)
        counts["found"] += found
        counts["queued"] += queued
        counts["skipped"] += found - queued
    return counts


def _feeds(x: XClient, my_id: str) -> list[Feed]:
    _resolve_targets(x)
    feeds = [
        Feed(
            f"target:{target.x_user_id}",
            Source.TARGET,
            lambda since, token, uid=target.x_user_id: x.user_posts(
                uid, since_id=since, pagination_token=token
            ),
        )
        for target in TargetAccount.objects.filter(enabled=True).exclude(x_user_id="")
    ]
    feeds.append(
        Feed(
            "mentions",
            Source.MENTION,
            lambda since, token: x.mentions(my_id, since_id=since, pagination_token=token),
        )
    )
    feeds += [
        Feed(
            f"search:{query.id}",
            Source.SEARCH,
            lambda since, token, q=query.query: x.search_recent(
                q, since_id=since, next_token=token
            ),
        )
        for query in SearchQuery.objects.filter(enabled=True)
    ]
    return feeds


def _resolve_targets(x: XClient) -> None:
    unresolved = list(TargetAccount.objects.filter(enabled=True, x_user_id=""))
    if not unresolved:
        return
    users = x.lookup_users([target.username for target in unresolved])
    for target in unresolved:
        user = users.get(target.username.lower())
        if user is not None:
            TargetAccount.objects.filter(id=target.id).update(x_user_id=user.id)
        else:
            log.warning("discover: @%s not found on X", target.username)


def _read(feed: Feed) -> tuple[list[Post], str | None]:
    since = Cursor.objects.filter(source=feed.key).values_list("since_id", flat=True).first()
    posts: list[Post] = []
    newest: str | None = None
    token: str | None = None
    for _ in range(MAX_PAGES):
        page = feed.fetch(since or None, token)
        newest = newest or page.newest_id
        posts += page.posts
        token = page.next_token
        if not token:
            break
    return posts, newest


def _save(
    feed: Feed, posts: list[Post], newest: str | None, me: User, now: datetime
) -> tuple[int, int]:
    opted_out = set(OptedOutAuthor.objects.values_list("username", flat=True))
    rows = [_row(feed, post, me, now, opted_out) for post in posts]
    with transaction.atomic():
        known = set(
            QueuedTweet.objects.filter(
                target_tweet_id__in=[row.target_tweet_id for row in rows]
            ).values_list("target_tweet_id", flat=True)
        )
        fresh = [row for row in rows if row.target_tweet_id not in known]
        QueuedTweet.objects.bulk_create(fresh, ignore_conflicts=True)
        if newest:
            Cursor.objects.update_or_create(source=feed.key, defaults={"since_id": newest})
    return len(fresh), sum(1 for row in fresh if row.status == Status.NEW)


def _row(feed: Feed, p: Post, me: User, now: datetime, opted_out: set[str]) -> QueuedTweet:
    summoned = feed.source == Source.MENTION or p.mentions_user(me.username)
    reason = _skip_reason(feed, p, me, now, opted_out, summoned)
    return QueuedTweet(
        target_tweet_id=p.id,
        author_id=p.author_id,
        author_username=p.author_username or "",
        text=p.text,
        tweet_created_at=p.created_at,
        source=feed.source,
        summoned=summoned,
        status=Status.SKIPPED if reason else Status.NEW,
        skip_reason=reason,
    )


def _skip_reason(
    feed: Feed, p: Post, me: User, now: datetime, opted_out: set[str], summoned: bool
) -> str:
    if p.author_id == me.id:
        return "our own post"
    if p.is_retweet:
        return "a repost"
    if p.is_reply and not summoned:
        return "a reply in someone else's thread"
    if (p.author_username or "").lower() in opted_out:
        return "the author opted out"
    if p.created_at < now - timedelta(hours=settings.MAX_POST_AGE_HOURS):
        return f"older than {settings.MAX_POST_AGE_HOURS} hours"
    keywords = [word.lower() for word in settings.TOPIC_KEYWORDS]
    if keywords and not summoned and not any(w in p.text.lower() for w in keywords):
        return "off topic (no keyword)"
    return ""
