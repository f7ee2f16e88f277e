"""When a reply may go out: random delay, quiet hours, spacing and caps. Pure functions.

The publish stage asks ``earliest_allowed`` with the publish times it counted in the
database (under a lock, so every worker sees the same counts); scheduling asks it for
the first time a newly approved reply may go. ``allowed_at`` gives the same answer with
the rules that moved it and how far (``Hold``): what the owner is told a reply waits for.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings

__all__ = [
    "Allowed",
    "Hold",
    "Pacing",
    "Rule",
    "allowed_at",
    "earliest_allowed",
    "in_quiet_hours",
    "quiet_hours_end",
]

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Pacing:
    min_delay: timedelta
    max_delay: timedelta
    quiet_start: int  # local hour, inclusive
    quiet_end: int  # local hour, exclusive; equal to start means no quiet hours
    tz: ZoneInfo
    per_hour: int
    per_day: int
    spacing: timedelta
    per_author: int = 1  # a day, unless a target account sets its own

    @classmethod
    def from_settings(cls) -> Pacing:
        return cls(
            min_delay=timedelta(minutes=settings.MIN_DELAY_MINUTES),
            max_delay=timedelta(minutes=settings.MAX_DELAY_MINUTES),
            quiet_start=settings.QUIET_HOURS_START,
            quiet_end=settings.QUIET_HOURS_END,
            tz=ZoneInfo(settings.TIME_ZONE),
            per_hour=settings.MAX_POSTS_PER_HOUR,
            per_day=settings.MAX_POSTS_PER_DAY,
            spacing=timedelta(minutes=settings.MIN_SPACING_MINUTES),
            per_author=settings.MAX_REPLIES_PER_AUTHOR_PER_DAY,
        )

    def summary(self) -> str:
        """When an approved reply goes out, in words (said at start and in the docs)."""
        low, high = (int(span.total_seconds() // 60) for span in (self.min_delay, self.max_delay))
        delay = f"{low} min" if low == high else f"{low} to {high} min"
        quiet = (
            "no quiet hours"
            if self.quiet_start == self.quiet_end
            else f"none {self.quiet_start:02d}:00-{self.quiet_end:02d}:00 ({self.tz.key})"
        )
        spacing = int(self.spacing.total_seconds() // 60)
        return (
            f"an approved reply goes out {delay} after approval, at least {spacing} min "
            f"after the last one, at most {self.per_hour} an hour and {self.per_day} a day "
            f"({self.per_author} a day to one author), {quiet}"
        )

    def random_delay(self, rng: random.Random | None = None) -> timedelta:
        low, high = self.min_delay.total_seconds(), self.max_delay.total_seconds()
        return timedelta(seconds=(rng or random).uniform(low, high))


def in_quiet_hours(when: datetime, pacing: Pacing) -> bool:
    if pacing.quiet_start == pacing.quiet_end:
        return False
    hour = when.astimezone(pacing.tz).hour
    if pacing.quiet_start < pacing.quiet_end:
        return pacing.quiet_start <= hour < pacing.quiet_end
    return hour >= pacing.quiet_start or hour < pacing.quiet_end  # the span crosses midnight


def quiet_hours_end(when: datetime, pacing: Pacing) -> datetime:
    """The first moment at or after ``when`` that is outside quiet hours."""
    if not in_quiet_hours(when, pacing):
        return when
    local = when.astimezone(pacing.tz)
    end = datetime.combine(local.date(), time(pacing.quiet_end), tzinfo=pacing.tz)
    if end <= local:
        end = datetime.combine(local.date() + DAY, time(pacing.quiet_end), tzinfo=pacing.tz)
    # A DST jump can land the wall-clock hour elsewhere; normalise through UTC.
    return end.astimezone(when.tzinfo)


class Rule(enum.StrEnum):
    """A pacing rule that can hold a reply back, named as the owner reads it."""

    QUIET_HOURS = "quiet hours"
    SPACING = "spacing"
    HOURLY_CAP = "hourly cap"
    DAILY_CAP = "daily cap"
    AUTHOR_CAP = "author cap"


@dataclass(frozen=True)
class Hold:
    """``rule`` moved the reply to ``until``."""

    rule: Rule
    until: datetime


@dataclass(frozen=True)
class Allowed:
    """The first allowed time and the holds that led there, in the order they applied."""

    at: datetime
    holds: tuple[Hold, ...] = ()


def earliest_allowed(
    when: datetime,
    pacing: Pacing,
    published: Sequence[datetime],
    author_published: Sequence[datetime] = (),
    author_cap: int = 1,
) -> datetime:
    """The first time at or after ``when`` that keeps every rule, given past publish times.

    ``published`` are the claim times of every reply in the last day (all workers);
    ``author_published`` those to this post's author. A cap of 0 means no publishing.
    """
    return allowed_at(when, pacing, published, author_published, author_cap).at


def allowed_at(
    when: datetime,
    pacing: Pacing,
    published: Sequence[datetime],
    author_published: Sequence[datetime] = (),
    author_cap: int = 1,
) -> Allowed:
    """``earliest_allowed``, with the rules that moved ``when`` and the time each allowed."""
    if pacing.per_hour == 0 or pacing.per_day == 0:
        raise ValueError("a cap of 0 allows no publishing")
    times = sorted(published)
    mine = sorted(author_published)

    def spaced(moment: datetime) -> datetime:
        for earlier in times:
            if abs(moment - earlier) < pacing.spacing:
                moment = max(moment, earlier + pacing.spacing)
        return moment

    rules: list[tuple[Rule, Callable[[datetime], datetime]]] = [
        (Rule.QUIET_HOURS, lambda moment: quiet_hours_end(moment, pacing)),
        (Rule.SPACING, spaced),
        (Rule.HOURLY_CAP, lambda moment: _after_cap(moment, times, HOUR, pacing.per_hour)),
        (Rule.DAILY_CAP, lambda moment: _after_cap(moment, times, DAY, pacing.per_day)),
        (Rule.AUTHOR_CAP, lambda moment: _after_cap(moment, mine, DAY, author_cap)),
    ]
    holds: list[Hold] = []
    candidate = when
    for _ in range(1000):  # each step moves forward; the bound is a guard, never reached
        moved = candidate
        for rule, apply in rules:
            later = apply(moved)
            if later != moved:
                if holds and holds[-1].rule is rule:
                    holds.pop()  # the same rule again: only how far it went counts
                holds.append(Hold(rule, later))
                moved = later
        if moved == candidate:
            return Allowed(candidate, tuple(holds))
        candidate = moved
    raise RuntimeError("pacing did not settle")  # pragma: no cover


def _after_cap(when: datetime, times: Sequence[datetime], window: timedelta, cap: int) -> datetime:
    """Move ``when`` until fewer than ``cap`` of ``times`` fall in the window ending there.

    Times after ``when`` count too: another worker (or machine, with its own clock) may
    have claimed a moment "later" than this worker's now, and it still fills the window.
    """
    inside = [t for t in times if t > when - window]
    if len(inside) < cap:
        return when
    # The window must drop the oldest (len - cap + 1) entries.
    return inside[len(inside) - cap] + window
