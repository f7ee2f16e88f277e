"""Find posts worth answering: target accounts, mentions of us, search queries.

Each source is read from its cursor, page by page (``bot.services.cursors``): each
page's rows and the cursor are saved in one transaction, so nothing is skipped and a
read cut short resumes where it stopped instead of paying for its pages again. Sources
are read least recently read first, so a rate limit never starves the same ones.
Posts we will not answer are kept as ``skipped`` with the reason, so they are never
fetched and judged twice.

Discovery is the one stage that spends X's money on its own initiative, so it is the
one that stops when today's estimate reaches ``X_DAILY_BUDGET_USD``
(``bot.services.x_usage``): checked before every page, until 00:00 UTC, with one
alert a day. Reconcile and publishing go on: they keep our replies safe.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, transaction
from django.utils import timezone

from bot.clients.errors import ErrorKind, Reason
from bot.models import (
    Cursor,
    OptedOutAuthor,
    OurReply,
    QueuedTweet,
    SearchQuery,
    Source,
    Status,
    TargetAccount,
)
from bot.services import x_usage
from bot.services.account import our_account
from bot.services.cursors import Fetch, read_to_cursor
from bot.services.notices import notice_service_error
from resilience import ServiceError
from resilience.alerts import AlertKind, raise_alert
from resilience.events import event
from resilience.models import AlertEvent

if TYPE_CHECKING:
    from bot.clients.x import Page, Post, User, XClient

log = logging.getLogger(__name__)

# Requests of the user-context timeline window left for our own timeline, which
# publishing needs before it re-sends anything: target reads without a bearer token
# share that window, and stop when only this much is left.
OUR_TIMELINE_RESERVE = 10
WINDOW_KEY = "replyguy:x:window:user_tweets"


class BudgetReached(Exception):
    """Today's X budget is spent: no more discovery reads until the next UTC day."""


@dataclass(frozen=True)
class Feed:
    key: str  # the cursor's name
    source: Source
    fetch: Fetch  # (since_id, until_id, token) -> one page
    target_id: int | None = None


def discover_all(x: XClient, *, now: datetime | None = None) -> dict[str, int]:
    """One pass over every source. X being unavailable leaves every cursor where it was."""
    now = now or timezone.now()
    counts = {"found": 0, "queued": 0, "skipped": 0}
    if x_usage.budget_reached(now):
        _budget_spent(now)
        return {**counts, "budget_reached": 1}
    try:
        me = our_account(x)
        feeds = _feeds(x, me.id)
    except ServiceError as exc:
        log.warning("discover: X unavailable, nothing read: %s", exc)
        notice_service_error(exc)
        return counts
    for feed in feeds:
        if feed.source == Source.TARGET and _timeline_window_low(x):
            log.warning("discover: targets wait, the timeline window is kept for our own")
            continue
        # One source failing, for any reason, never stops the others; its cursor stays.
        try:
            found, queued = _read(feed, me, now)
        except BudgetReached:
            _budget_spent(now)
            counts["budget_reached"] = 1
            break
        except ServiceError as exc:
            log.warning("discover: %s not read, will try again: %s", feed.key, exc)
            notice_service_error(exc)
            if feed.target_id is not None and exc.kind is ErrorKind.PERMANENT and exc.status == 404:
                _target_gone(feed.target_id)
            if exc.reason == Reason.CIRCUIT_OPEN:
                break
            continue
        except Exception:
            log.exception("discover: %s failed unexpectedly; its cursor stays", feed.key)
            counts["crashed"] = counts.get("crashed", 0) + 1
            continue
        counts["found"] += found
        counts["queued"] += queued
        counts["skipped"] += found - queued
    return counts


def _budget_spent(now: datetime) -> None:
    """Say once a day that discovery stopped for the budget (the day is the subject)."""
    day = x_usage.day_of(now)
    log.warning("discover: today's X budget is spent; no reads until 00:00 UTC")
    if AlertEvent.objects.filter(kind=AlertKind.X_BUDGET_REACHED, subject=str(day)).exists():
        return  # told already today: the cooldown alone would repeat it hourly
    usage = x_usage.usage_today(now)
    budget = settings.X_DAILY_BUDGET_USD
    raise_alert(
        kind=AlertKind.X_BUDGET_REACHED,
        subject=str(day),
        message=(
            f"X usage today is estimated at ${usage.cost_usd:.2f}, the daily budget of "
            f"${budget:.2f} (X_DAILY_BUDGET_USD): discovery stops until 00:00 UTC. "
            "Publishing and reconciling go on."
        ),
        details={
            "day (UTC)": str(day),
            "calls": usage.calls,
            "estimated cost (USD)": f"{usage.cost_usd:.4f}",
            "budget (USD)": f"{budget:.2f}",
            "reads again at": x_usage.next_day_starts(now).isoformat(),
        },
        now=now,
    )


def _timeline_window_low(x: XClient) -> bool:
    """Whether target reads must leave the rest of the user timeline window to ours.

    Each pass builds a new client, so the remaining count X last reported is kept in
    the shared cache between passes (and between workers) until the window resets.
    """
    if x.reads_as_app:
        return False
    window = x.rate_limits.get("user_tweets")
    if window is not None:
        remaining = window.remaining
        cache.set(WINDOW_KEY, remaining, max(1, int(window.reset_at - time.time())))
    else:
        remaining = cache.get(WINDOW_KEY)
    return remaining is not None and remaining <= OUR_TIMELINE_RESERVE


def _feeds(x: XClient, my_id: str) -> list[Feed]:
    _resolve_targets(x)
    feeds = [
        Feed(
            f"target:{target.x_user_id}",
            Source.TARGET,
            lambda since, until, token, uid=target.x_user_id: x.user_posts(
                uid, since_id=since, until_id=until, pagination_token=token
            ),
            target_id=target.id,
        )
        for target in TargetAccount.objects.filter(enabled=True).exclude(x_user_id="")
    ]
    feeds.append(
        Feed(
            "mentions",
            Source.MENTION,
            lambda since, until, token: x.mentions(
                my_id, since_id=since, until_id=until, pagination_token=token
            ),
        )
    )
    feeds += [
        Feed(
            f"search:{query.id}",
            Source.SEARCH,
            lambda since, until, token, q=query.query: x.search_recent(
                q, since_id=since, until_id=until, next_token=token
            ),
        )
        for query in SearchQuery.objects.filter(enabled=True)
    ]
    last_read = dict(
        Cursor.objects.filter(source__in=[f.key for f in feeds]).values_list("source", "updated_at")
    )
    never = datetime.min.replace(tzinfo=UTC)
    return sorted(feeds, key=lambda feed: last_read.get(feed.key) or never)


def _target_gone(target_id: int) -> None:
    """X says a target we read before no longer exists: stop paying to ask, say so."""
    target = TargetAccount.objects.filter(id=target_id, enabled=True).first()
    if target is None:
        return
    TargetAccount.objects.filter(id=target_id).update(enabled=False)
    raise_alert(
        kind=AlertKind.TARGET_NOT_FOUND,
        subject=f"@{target.username}",
        message=(
            f"@{target.username} is gone from X (deleted, suspended or renamed); it is "
            "disabled until you fix it."
        ),
    )


def _resolve_targets(x: XClient) -> None:
    unresolved = list(TargetAccount.objects.filter(enabled=True, x_user_id=""))
    if not unresolved:
        return
    try:
        users = x.lookup_users([target.username for target in unresolved])
    except ServiceError as exc:
        if exc.kind is ErrorKind.TRANSIENT:
            raise
        # An item-level refusal must not stop every other source from being read.
        log.warning("discover: cannot look up %s: %s", unresolved, exc)
        return
    for target in unresolved:
        user = users.get(target.username.lower())
        if user is not None:
            TargetAccount.objects.filter(id=target.id).update(x_user_id=user.id)
            continue
        # Asking again every pass would cost a paid read each time: switch it off, say so.
        TargetAccount.objects.filter(id=target.id).update(enabled=False)
        raise_alert(
            kind=AlertKind.TARGET_NOT_FOUND,
            subject=f"@{target.username}",
            message=f"@{target.username} does not exist on X; it is disabled until you fix it.",
        )


def _read(feed: Feed, me: User, now: datetime) -> tuple[int, int]:
    """Every post newer than the cursor that is young enough to answer, saved page by page.

    Reading stops at the end, or at a page whose oldest post is past the age limit
    (older ones would be skipped anyway). Returns (posts found, posts queued).
    """
    oldest_wanted = now - timedelta(hours=settings.MAX_POST_AGE_HOURS)
    counts = [0, 0]

    def fetch(since: str | None, until: str | None, token: str | None) -> Page:
        # Each page is paid for: the budget is looked at before every one.
        if x_usage.budget_reached(now):
            raise BudgetReached
        return feed.fetch(since, until, token)

    def keep(posts: list[Post]) -> None:
        found, queued = _save(feed, posts, me, now)
        counts[0] += found
        counts[1] += queued

    read_to_cursor(
        feed.key,
        fetch,
        keep,
        enough=lambda page, cursor: min(p.created_at for p in page.posts) < oldest_wanted,
    )
    return counts[0], counts[1]


def _save(feed: Feed, posts: list[Post], me: User, now: datetime) -> tuple[int, int]:
    opted_out = set(OptedOutAuthor.objects.values_list("username", flat=True))
    # Quoting one of our posts summons us too. We know our replies (read once for
    # reconciling), which is what people quote; a quote of another post of ours is
    # handed off, the safe side of X's rule.
    quoted_ours = set(
        OurReply.objects.filter(
            reply_id__in=[p.quoted_id for p in posts if p.quoted_id]
        ).values_list("reply_id", flat=True)
    )
    rows = [_row(feed, post, me, now, opted_out, quoted_ours) for post in posts]
    known = set(
        QueuedTweet.objects.filter(
            target_tweet_id__in=[row.target_tweet_id for row in rows]
        ).values_list("target_tweet_id", flat=True)
    )
    fresh = [row for row in rows if row.target_tweet_id not in known]
    try:
        with transaction.atomic():
            QueuedTweet.objects.bulk_create(fresh, ignore_conflicts=True)
    except DatabaseError:
        fresh = _save_one_by_one(fresh)
    _tell_found(feed, fresh)
    return len(fresh), sum(1 for row in fresh if row.status == Status.NEW)


def _tell_found(feed: Feed, rows: list[QueuedTweet]) -> None:
    """One line per post found, with the id its later stages' lines carry."""
    if not rows:
        return
    saved = QueuedTweet.objects.filter(target_tweet_id__in=[r.target_tweet_id for r in rows])
    for tweet_id, post_id, author, status, reason in saved.values_list(
        "id", "target_tweet_id", "author_username", "status", "skip_reason"
    ):
        if status == Status.SKIPPED:
            event("skipped", tweet=tweet_id, post=post_id, author=author, why=reason)
        else:
            event("discovered", tweet=tweet_id, post=post_id, author=author, source=feed.source)


def _save_one_by_one(rows: list[QueuedTweet]) -> list[QueuedTweet]:
    """The database refused the batch: save each post alone, and keep a bad one as skipped.

    Nothing is lost: a post the database will not take as it is (a value past what a
    column holds, say) is kept as ``skipped`` with the reason and its text left out.
    """
    for row in rows:
        try:
            with transaction.atomic():
                QueuedTweet.objects.bulk_create([row], ignore_conflicts=True)
        except DatabaseError as exc:
            log.warning("discover: post %s cannot be stored as it is: %s", row.target_tweet_id, exc)
            row.author_username = row.author_username[:100]
            row.text = ""
            row.status = Status.SKIPPED
            row.skip_reason = f"could not be stored: {str(exc)[:150]}"
            with transaction.atomic():
                QueuedTweet.objects.bulk_create([row], ignore_conflicts=True)
    return rows


def _row(
    feed: Feed, p: Post, me: User, now: datetime, opted_out: set[str], quoted_ours: set[str]
) -> QueuedTweet:
    summoned = (
        feed.source == Source.MENTION or p.mentions_user(me.username) or p.quoted_id in quoted_ours
    )
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
