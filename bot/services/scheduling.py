"""When an approved reply goes out: a random delay, then every pacing rule; and, for the
owner, when it goes and why it waits (``reply_timing``)."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone
from django.utils.text import capfirst

from bot.models import PipelineControl, QueuedTweet, Status
from bot.pacing import Hold, Pacing, Rule, allowed_at
from bot.selectors import author_cap, published_times, publishing_paused, through_api
from resilience.events import event

__all__ = [
    "Timing",
    "Wait",
    "Why",
    "next_reply_out",
    "repace_after_release",
    "reply_schedule",
    "reply_timing",
]

log = logging.getLogger(__name__)


def reply_schedule(tweet: QueuedTweet, *, now: datetime | None = None) -> datetime | None:
    """Give an approved reply its time; None if it was no longer waiting for one."""
    now = now or timezone.now()
    pacing = Pacing.from_settings()
    planned = list(_planned(excluding=tweet.id).values())
    allowed = allowed_at(now + pacing.random_delay(), pacing, planned + published_times(now))
    when = allowed.at
    moved = QueuedTweet.objects.filter(
        id=tweet.id, status=Status.APPROVED, scheduled_at__isnull=True
    ).update(scheduled_at=when, updated_at=now)
    if not moved:
        return None
    tweet.scheduled_at = when
    # Why this time, from the rules that just set it (no second look at the queue).
    held = [_words(hold, pacing, tweet, now).words for hold in allowed.holds]
    event(
        "scheduled",
        tweet=tweet.id,
        post=tweet.target_tweet_id,
        at=when.isoformat(timespec="minutes"),
        why=", then ".join(held) or f"random delay until {clock(when, now)}",
    )
    return when


def schedule_approved(*, now: datetime | None = None) -> int:
    """Schedule approved replies that have no time yet (an approval cut short by a crash)."""
    scheduled = 0
    for tweet in QueuedTweet.objects.filter(status=Status.APPROVED, scheduled_at__isnull=True):
        try:
            scheduled += reply_schedule(tweet, now=now) is not None
        except Exception:
            log.exception("schedule: reply %s could not be scheduled; next pass", tweet.id)
    return scheduled


# --- why a reply waits ---------------------------------------------------------------------

# A time a rule set is the rule's own boundary (07:00:00, the spacing's end): the moment
# just before it breaks that rule. A random delay lands on one by chance, never exactly.
_JUST_BEFORE = timedelta(seconds=1)


class Why(enum.StrEnum):
    """What holds an approved reply back; pacing's rules are ``bot.pacing.Rule``."""

    PAUSED = "paused"
    UNSCHEDULED = "unscheduled"
    RANDOM_DELAY = "random delay"
    TRY_AGAIN = "try again"
    QUIET_HOURS = Rule.QUIET_HOURS.value
    SPACING = Rule.SPACING.value
    HOURLY_CAP = Rule.HOURLY_CAP.value
    DAILY_CAP = Rule.DAILY_CAP.value
    AUTHOR_CAP = Rule.AUTHOR_CAP.value


@dataclass(frozen=True)
class Wait:
    """One reason a reply is not out yet, with the time it stops holding (if known)."""

    why: Why
    until: datetime | None
    words: str


@dataclass(frozen=True)
class Timing:
    """When an approved reply goes out, or comes back to the owner as a link, and why it
    waits until then. ``at`` is the earliest a publish pass (every minute) may take it;
    None while it has no time yet or publishing is paused."""

    at: datetime | None
    waits: tuple[Wait, ...]
    through_api: bool
    paused: bool

    def sentence(self, now: datetime | None = None) -> str:
        """For the owner: "It goes out around 08:07: random delay until 08:07"."""
        now = now or timezone.now()
        verb = "It goes out" if self.through_api else "It comes back to you as a link to post"
        why = ", then ".join(wait.words for wait in self.waits if wait.why != Why.PAUSED)
        if self.at is None:
            said = f"{verb} once the schedule pass gives it a time, within a minute"
        elif self.at <= now:
            said = f"{verb} with the next publish pass, within a minute"
        else:
            said = f"{verb} around {clock(self.at, now)}" + (f": {why}" if why else "")
        if self.paused:
            paused = next(wait.words for wait in self.waits if wait.why == Why.PAUSED)
            then = said[0].lower() + said[1:]
            said = f"{capfirst(paused)}: nothing goes out until it is resumed; then {then}"
        return said


def reply_timing(tweet: QueuedTweet, *, now: datetime | None = None) -> Timing | None:
    """Why an approved reply is not out yet and when it goes; None if it is not approved.

    Read-only, with the publish stage's own rules (``bot.pacing.allowed_at``): first what
    set its time (a random delay, or a rule the time is the boundary of), then a retry's
    wait, then what would hold it now (caps filled since it was scheduled). Hand-offs
    keep no caps: they go when due.
    """
    if tweet.status != Status.APPROVED:
        return None
    now = now or timezone.now()
    pacing = Pacing.from_settings()
    api = through_api(QueuedTweet.objects.filter(id=tweet.id)).exists()
    paused = publishing_paused()
    waits: list[Wait] = []
    if paused:
        waits.append(Wait(Why.PAUSED, None, paused_words()))
    scheduled = tweet.scheduled_at
    if scheduled is None:
        waits.append(Wait(Why.UNSCHEDULED, None, "not scheduled yet"))
        return Timing(None, tuple(waits), api, paused)
    published = published_times(now)
    mine = published_times(now, author_id=tweet.author_id)
    cap = author_cap(tweet)
    if scheduled > now:
        pinned = _pinned(tweet, pacing, published, mine, cap)
        if pinned:
            waits.extend(_words(hold, pacing, tweet, now) for hold in pinned)
        elif _retried(tweet):
            waits.append(Wait(Why.TRY_AGAIN, scheduled, f"another try at {clock(scheduled, now)}"))
        else:
            words = f"random delay until {clock(scheduled, now)}"
            waits.append(Wait(Why.RANDOM_DELAY, scheduled, words))
    base = max(now, scheduled)
    if tweet.next_attempt_at and tweet.next_attempt_at > base:
        base = tweet.next_attempt_at
        after = f" ({tweet.last_error_kind} error)" if tweet.last_error_kind else ""
        words = f"a retry after an error{after} until {clock(base, now)}"
        waits.append(Wait(Why.TRY_AGAIN, base, words))
    at = base
    if api:
        live = allowed_at(base, pacing, published, mine, cap)
        waits.extend(_words(hold, pacing, tweet, now) for hold in live.holds)
        at = live.at
    return Timing(at, tuple(waits), api, paused)


def repace_after_release(tweet_id: int, *, now: datetime | None = None) -> int:
    """A claim given up (nothing went out) no longer fills the caps: replies to the same
    author that wait past their random delay get the earliest time the rules now allow,
    never a later one. Returns how many moved.

    Without this a reply the author cap moved by a day, for a claim that then sent
    nothing, would wait that day for nothing (and expire).
    """
    now = now or timezone.now()
    pacing = Pacing.from_settings()
    later = QueuedTweet.objects.filter(
        status=Status.APPROVED,
        scheduled_at__gt=now + pacing.min_delay,
        author_id__in=QueuedTweet.objects.filter(id=tweet_id).values("author_id"),
    ).order_by("scheduled_at", "id")
    held = [tweet for tweet in later if not _retried(tweet)]
    if not held:
        return 0
    published = published_times(now)
    mine = published_times(now, author_id=held[0].author_id)
    cap = author_cap(held[0])
    planned = _planned()
    moved = 0
    for tweet in held:
        base = max(now, (tweet.approved_at or now) + pacing.min_delay)
        others = [at for other, at in planned.items() if other != tweet.id]
        allowed = allowed_at(base, pacing, others + published, mine, cap)
        if allowed.at >= tweet.scheduled_at or not QueuedTweet.objects.filter(
            id=tweet.id, status=Status.APPROVED, scheduled_at=tweet.scheduled_at
        ).update(scheduled_at=allowed.at, updated_at=now):
            continue
        planned[tweet.id] = allowed.at
        mine.append(allowed.at)  # it will fill the author's cap in its turn
        moved += 1
        held_by = [_words(hold, pacing, tweet, now).words for hold in allowed.holds]
        event(
            "scheduled",
            tweet=tweet.id,
            post=tweet.target_tweet_id,
            at=allowed.at.isoformat(timespec="minutes"),
            why="sooner, a claim to the same author given up"
            + (f": {', then '.join(held_by)}" if held_by else ""),
        )
    return moved


def _pinned(
    tweet: QueuedTweet,
    pacing: Pacing,
    published: list[datetime],
    mine: list[datetime],
    cap: int,
) -> tuple[Hold, ...]:
    """The rules that hold ``tweet`` at its time now; () if none does (a random delay, a
    retry's wait, or a rule that no longer holds)."""
    assert tweet.scheduled_at is not None
    planned = list(_planned(excluding=tweet.id).values())
    pinned = allowed_at(tweet.scheduled_at - _JUST_BEFORE, pacing, planned + published, mine, cap)
    return pinned.holds if pinned.holds and pinned.at >= tweet.scheduled_at else ()


def _planned(*, excluding: int | None = None) -> dict[int, datetime]:
    """The times given to approved replies (each holds its slot), by reply id."""
    rows = QueuedTweet.objects.filter(status=Status.APPROVED, scheduled_at__isnull=False)
    if excluding is not None:
        rows = rows.exclude(id=excluding)
    return dict(rows.order_by().values_list("id", "scheduled_at"))


def _retried(tweet: QueuedTweet) -> bool:
    """Whether ``tweet`` has been tried already: its time is then a retry's."""
    return bool(tweet.attempts or tweet.sent_at or tweet.last_error)


def next_reply_out(*, now: datetime | None = None) -> tuple[QueuedTweet, Timing] | None:
    """The approved reply that goes out first, and why it waits; None if none waits.

    Looks at the few earliest scheduled (a retry's wait or a cap can reorder them).
    """
    now = now or timezone.now()
    rows = QueuedTweet.objects.filter(status=Status.APPROVED).order_by(
        F("scheduled_at").asc(nulls_first=True), "id"
    )[:5]
    timed = [(tweet, reply_timing(tweet, now=now)) for tweet in rows]
    found = [(tweet, timing) for tweet, timing in timed if timing is not None]
    if not found:
        return None
    never = datetime.max.replace(tzinfo=UTC)
    return min(found, key=lambda pair: pair[1].at or never)


def paused_words() -> str:
    """Why publishing is paused, as the owner reads it."""
    if settings.PUBLISHING_PAUSED:
        return "publishing is paused (PUBLISHING_PAUSED is set in the environment)"
    reason = PipelineControl.objects.filter(pk=1).values_list("paused_reason", flat=True)
    said = next(iter(reason), "")
    return "publishing is paused" + (f" ({said})" if said else "")


def clock(when: datetime, now: datetime) -> str:
    """A time as the owner reads it (TIME_ZONE): "08:07", "tomorrow 07:00", "Mon 12 Jan 07:00"."""
    local, today = timezone.localtime(when), timezone.localtime(now).date()
    if local.date() == today:
        return local.strftime("%H:%M")
    if local.date() == today + timedelta(days=1):
        return local.strftime("tomorrow %H:%M")
    return local.strftime("%a %d %b %H:%M")


def _words(hold: Hold, pacing: Pacing, tweet: QueuedTweet, now: datetime) -> Wait:
    rule = {
        Rule.QUIET_HOURS: "quiet hours",
        Rule.SPACING: f"spacing of {_minutes(pacing.spacing)} between replies",
        Rule.HOURLY_CAP: f"hourly cap of {pacing.per_hour} an hour",
        Rule.DAILY_CAP: f"daily cap of {pacing.per_day} a day",
        Rule.AUTHOR_CAP: f"author cap for @{tweet.author_username}",
    }[hold.rule]
    return Wait(Why(hold.rule.value), hold.until, f"{rule} until {clock(hold.until, now)}")


def _minutes(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes} min"
