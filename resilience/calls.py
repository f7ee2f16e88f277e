"""Calls through the shared circuit breakers, counted across every process.

A breaker whose state is shared counts its answered and refused calls in its own
memory (one integer increment on the success path) and adds them here at most every
``report_every`` seconds (``CircuitBreaker._report``). Each report is one atomic
``UPDATE ... SET calls = calls + n`` per outcome, so web processes, workers and machines
all count into the same rows and none is lost; what a process counted since its last
report is lost only if the process dies first (at most ``report_every`` seconds' worth).
Failures are the breaker state's own ``total_failures``, written as they happen.

The table lives in the database, like the default breaker store; a report that cannot
be written (the database is down) is kept by the breaker and sent with the next one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from resilience.models import CallCount, CallOutcome

__all__ = ["Calls", "calls_add", "calls_by_breaker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calls:
    """What every process reported for one breaker."""

    ok: int = 0
    rejected: int = 0
    last_ok_at: datetime | None = None


def calls_add(breaker: str, *, ok: int, rejected: int, last_ok_at: float | None) -> bool:
    """Add one process's counts; False (logged) when the database could not take them.

    Runs in a savepoint, so a failure never breaks a transaction the caller is in.
    """
    now = timezone.now()
    last = None if last_ok_at is None else datetime.fromtimestamp(last_ok_at, UTC)
    try:
        with transaction.atomic():
            if ok:
                _add(breaker, CallOutcome.OK, ok, last, now)
            if rejected:
                _add(breaker, CallOutcome.REJECTED, rejected, None, now)
    except DatabaseError as exc:
        log.warning("could not add the calls of breaker %s (kept for later): %s", breaker, exc)
        return False
    return True


def calls_by_breaker() -> dict[str, Calls]:
    """Every breaker's reported calls (one query)."""
    found: dict[str, dict[str, object]] = {}
    for name, outcome, calls, last_at in CallCount.objects.values_list(
        "breaker", "outcome", "calls", "last_at"
    ):
        row = found.setdefault(name, {})
        row[outcome] = calls
        if outcome == CallOutcome.OK:
            row["last_ok_at"] = last_at
    return {name: Calls(**row) for name, row in found.items()}  # type: ignore[arg-type]


def _add(breaker: str, outcome: str, n: int, last: datetime | None, now: datetime) -> None:
    changes: dict[str, object] = {"calls": F("calls") + n, "updated_at": now}
    if last is not None:
        # Greatest, because another process may have reported a later answer already;
        # Coalesce, because SQLite's MAX is NULL when any argument is.
        changes["last_at"] = Greatest(Coalesce(F("last_at"), Value(last)), Value(last))
    rows = CallCount.objects.filter(breaker=breaker, outcome=outcome)
    if rows.update(**changes):
        return
    try:
        with transaction.atomic():
            CallCount.objects.create(
                breaker=breaker, outcome=outcome, calls=n, last_at=last, updated_at=now
            )
    except IntegrityError:
        rows.update(**changes)  # another process created the row first
