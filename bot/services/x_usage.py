"""What X costs us today: every call counted per endpoint per day, with its estimated cost.

X bills pay-per-use per resource it returns or creates, and its usage periods are UTC
days (the usage cap's period, too), so the meter's day is the UTC day, whatever
``TIME_ZONE`` says: the budget resets at 00:00 UTC.

Counts live in the database (``bot.models.XUsage``, one row per day and endpoint) and
each call adds to its row with one atomic ``UPDATE ... SET calls = calls + 1``, so any
number of processes and machines count into the same row and none is lost. (The
Django database cache's ``incr`` reads, then writes: it would lose counts.)

X's prices, and which one applies to each call, are the X client's (``bot.clients.x``):
it tells ``record`` the unit price of every call. The estimate is ours, not X's
invoice: a failed call counts as a call at no cost, a reply whose answer never came
back (ambiguous) is not priced, and a request that certainly never reached X
(connection refused) is not counted at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from bot.models import XUsage

__all__ = [
    "EndpointUsage",
    "Usage",
    "budget_reached",
    "day_of",
    "next_day_starts",
    "record",
    "usage_today",
]

log = logging.getLogger(__name__)

MICROS = 1_000_000  # costs are kept in millionths of a dollar: exact sums, no float drift


@dataclass(frozen=True)
class EndpointUsage:
    calls: int
    units: int
    cost_usd: float


@dataclass(frozen=True)
class Usage:
    """One UTC day of X calls, by endpoint (X's route names: ``user_tweets``, ...)."""

    day: date
    by_endpoint: dict[str, EndpointUsage] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(usage.calls for usage in self.by_endpoint.values())

    @property
    def units(self) -> int:
        return sum(usage.units for usage in self.by_endpoint.values())

    @property
    def cost_usd(self) -> float:
        return round(sum(usage.cost_usd for usage in self.by_endpoint.values()), 6)


def day_of(now: datetime | None = None) -> date:
    """The UTC day ``now`` falls in: X's billing day."""
    return (now or timezone.now()).astimezone(UTC).date()


def next_day_starts(now: datetime | None = None) -> datetime:
    """When the next billing day (and budget) starts: the coming 00:00 UTC."""
    return datetime.combine(day_of(now) + timedelta(days=1), time(), tzinfo=UTC)


def record(
    endpoint: str,
    *,
    calls: int = 1,
    units: int = 0,
    unit_price_usd: float,
    now: datetime | None = None,
) -> None:
    """Add ``calls`` calls returning ``units`` units at ``unit_price_usd`` each to today.

    Never raises for the database: the X call it counts has happened and its outcome
    matters more than its count (a lost count is logged). Runs in a savepoint, so a
    failure here never breaks a caller's transaction.
    """
    now = now or timezone.now()
    day = day_of(now)
    cost = round(units * unit_price_usd * MICROS)
    try:
        with transaction.atomic():
            _add(day, endpoint, calls, units, cost, now)
    except DatabaseError as exc:
        log.warning("x usage: %d call(s) to %s not counted: %s", calls, endpoint, exc)


def _add(day: date, endpoint: str, calls: int, units: int, cost: int, now: datetime) -> None:
    row = XUsage.objects.filter(day=day, endpoint=endpoint)
    increment = {
        "calls": F("calls") + calls,
        "units": F("units") + units,
        "cost_micros": F("cost_micros") + cost,
        "updated_at": now,
    }
    if row.update(**increment):
        return
    # The day's first call to this endpoint: create the row. Another process may create
    # it between our update and this insert; the unique constraint refuses the second,
    # which then adds to the first.
    try:
        with transaction.atomic():
            XUsage.objects.create(
                day=day,
                endpoint=endpoint,
                calls=calls,
                units=units,
                cost_micros=cost,
                updated_at=now,
            )
    except IntegrityError:
        row.update(**increment)


def usage_today(now: datetime | None = None) -> Usage:
    """Today's (UTC) calls, units and estimated cost, per endpoint."""
    day = day_of(now)
    rows = XUsage.objects.filter(day=day).order_by("endpoint")
    return Usage(
        day=day,
        by_endpoint={
            endpoint: EndpointUsage(calls=calls, units=units, cost_usd=micros / MICROS)
            for endpoint, calls, units, micros in rows.values_list(
                "endpoint", "calls", "units", "cost_micros"
            )
        },
    )


def budget_reached(now: datetime | None = None) -> bool:
    """Whether today's estimate has reached ``X_DAILY_BUDGET_USD`` (never when unset)."""
    budget = settings.X_DAILY_BUDGET_USD
    if budget is None:
        return False
    spent = XUsage.objects.filter(day=day_of(now)).aggregate(total=Sum("cost_micros"))["total"]
    return (spent or 0) >= round(budget * MICROS)
