"""Alerts: an outbox of what the owner must hear, sent at most once per cooldown.

Recording. ``raise_alert`` writes in the caller's transaction, inside a savepoint: an
alert about work that rolled back is never sent, and a failing alert write never breaks
the caller's work (it is logged and the caller goes on).

Cooldown, across processes and machines. Each (kind, subject) has one ``AlertCooldown``
row, created by whoever raises it first (``INSERT ... ON CONFLICT DO NOTHING``). The
conditional update "window started before now - cooldown → now" is won by exactly one
raiser, whose row lock holds the others until it commits: it records the alert. Every
other raiser takes the row's lock, then counts a repeat on the current window's alert,
so no repeat is lost or counted in the wrong window. The next window's alert says how
many were held back.

Delivery. ``deliver_alerts`` claims due alerts oldest first, one at a time, with a
conditional update and a lease (a crashed deliverer's claim is taken back when its lease
runs out), and hands each text to ``settings.ALERT_NOTIFIER``. ``NotifierUnavailable``
(the channel is down or not configured) puts the alert back untouched and ends the pass;
any other error spends one of ``MAX_ATTEMPTS`` with exponential backoff. An alert not
delivered within ``GIVE_UP_AFTER`` is given up on rather than sent late.

Breakers. ``on_breaker_transition`` is every configured breaker's listener (see
``apps.py``): it raises ``circuit_breaker_open`` and ``breaker_recovered``.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, quote_plus
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.cache import cache
from django.db import Error, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string

from resilience.events import event as log_event
from resilience.models import AlertCooldown, AlertEvent, AlertStatus
from resilience.registry import get_breaker
from resilience.state import State

__all__ = [
    "DELIVERY_LEASE",
    "GIVE_UP_AFTER",
    "MAX_ATTEMPTS",
    "AlertKind",
    "NotifierUnavailable",
    "alerts_redeliver",
    "cooldown",
    "deliver_alerts",
    "format_alert",
    "on_breaker_transition",
    "raise_alert",
]

log = logging.getLogger(__name__)


class AlertKind(enum.StrEnum):
    """Every kind of alert, named once. ``raise_alert`` takes these or plain strings."""

    CIRCUIT_BREAKER_OPEN = "circuit_breaker_open"
    BREAKER_RECOVERED = "breaker_recovered"
    INITIALIZATION_FAILED = "initialization_failed"
    TWEET_PROCESSING_FAILED = "tweet_processing_failed"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    MULTIPLE_FAILURES = "multiple_failures"
    DEAD_LETTER_EXHAUSTED = "dead_letter_exhausted"
    CONFIGURATION_REFUSED = "configuration_refused"
    TARGET_NOT_FOUND = "target_not_found"
    WORKER_SILENT = "worker_silent"
    X_BUDGET_REACHED = "x_budget_reached"
    UNWANTED_REPLY_LIVE = "unwanted_reply_live"
    TIMELINE_UNREADABLE = "timeline_unreadable"


class NotifierUnavailable(Exception):
    """The notifier's channel is down or not configured: alerts wait, no attempt spent."""


# A notifier error spends an attempt; after this many the alert is marked failed.
MAX_ATTEMPTS = 5
# Waits after the 1st, 2nd, ... failed attempt: 1, 2, 4, 8 minutes. Not the retry module's
# full jitter, which may wait nothing: one outbox has no herd to spread out.
RETRY_FIRST_DELAY = timedelta(minutes=1)
# A deliverer that claimed an alert and never reported back (killed) loses it after this.
DELIVERY_LEASE = timedelta(minutes=5)
# After Telegram comes back from days away, the owner needs today's news, not a flood.
GIVE_UP_AFTER = timedelta(hours=24)
STALE_ERROR = "not delivered within 24 hours"
# What became of one claimed alert.
_SENT, _FAILED, _RETRY, _UNAVAILABLE = "sent", "failed", "retry", "unavailable"
# settings.ALERT_NOTIFIER: takes the text, returns the message's id (or None).
Notifier = Callable[[str], object]

# Before any real window: the first raise of a (kind, subject) always wins.
_NEVER = datetime(2000, 1, 1, tzinfo=UTC)
_MASK = "•••"
# Detail keys that may hold a credential; their values are never stored or shown.
_SECRET_NAME = re.compile(r"token|key|secret|password|passwd|credential|authorization", re.I)


def cooldown() -> timedelta:
    """How long after an alert the same kind and subject is only counted."""
    return timedelta(minutes=settings.ALERT_COOLDOWN_MINUTES)


# --- recording ---------------------------------------------------------------------------


def raise_alert(
    *,
    kind: AlertKind | str,
    subject: str,
    message: str,
    details: Mapping[str, object] | None = None,
    now: datetime | None = None,
) -> AlertEvent | None:
    """Record an alert in the caller's transaction; None when it was a repeat within the
    cooldown (counted on the alert that was sent) or could not be written (logged).

    ``details`` are shown as a list under the message; keys that look like credentials
    are masked, but callers must not pass secrets in the first place.
    """
    kind, subject = str(kind), subject[:200]
    now = timezone.now() if now is None else now
    try:
        with transaction.atomic():
            recorded = _record(kind, subject, _scrub(message), _plain(details), now)
    except Error as exc:  # the database's: a lost connection is an InterfaceError too
        log.error("alert %s (%s) not recorded: %s", kind, subject, _short(exc))
        return None
    if recorded is None:
        log_event("alert_suppressed", kind=kind, subject=subject, why="cooldown")
    else:
        log_event("alert_raised", alert=recorded.id, kind=kind, subject=subject)
    return recorded


def _record(
    kind: str, subject: str, message: str, details: dict[str, Any], now: datetime
) -> AlertEvent | None:
    AlertCooldown.objects.bulk_create(
        [AlertCooldown(kind=kind, subject=subject, window_started_at=_NEVER)],
        ignore_conflicts=True,
    )
    key = AlertCooldown.objects.filter(kind=kind, subject=subject)
    won = key.filter(window_started_at__lt=now - cooldown()).update(window_started_at=now)
    if not won:
        # The lock waits for a winner still committing, so the repeat is counted on the
        # alert of the window it falls in, never on one whose count was already told.
        current = key.select_for_update().values_list("event_id", flat=True).get()
        AlertEvent.objects.filter(id=current).update(repeats=F("repeats") + 1)
        return None
    previous = key.select_related("event").get().event
    held_back = previous.repeats if previous is not None else 0
    event = AlertEvent.objects.create(
        kind=kind,
        subject=subject,
        message=message,
        details=details,
        created_at=now,
        queued_at=now,
        suppressed_before=held_back,
        suppressed_since=previous.created_at if held_back else None,
    )
    key.update(event=event)
    return event


def _plain(details: Mapping[str, object] | None) -> dict[str, Any]:
    """Details as JSON can store them (dates as text), credentials masked."""
    if not details:
        return {}
    return json.loads(json.dumps(_masked(dict(details)), default=str))


def _masked(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            str(key): _MASK if _SECRET_NAME.search(str(key)) else _masked(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    if isinstance(value, str):
        return _scrub(value)
    return value


def _scrub(text: str) -> str:
    """``text`` without the value of any setting named like a credential."""
    for name in dir(settings):
        if name.isupper() and _SECRET_NAME.search(name):
            value = getattr(settings, name, None)
            if not isinstance(value, str) or len(value) < 8:
                continue
            for form in {value, quote(value, safe=""), quote_plus(value)}:
                text = text.replace(form, _MASK)
    return text


def _short(exc: BaseException) -> str:
    """An error as one short line, for ``last_error`` and the log."""
    text = " ".join((str(exc) or type(exc).__name__).split())
    return _scrub(text)[:300]


# --- the text ----------------------------------------------------------------------------


def format_alert(event: AlertEvent) -> str:
    """The alert as the owner reads it: plain text, no parse mode."""
    recovered = event.kind == AlertKind.BREAKER_RECOVERED
    lines = [
        "✅ RECOVERED" if recovered else "🚨 CRITICAL ALERT",
        "",
        f"Type: `{event.kind}`",
        f"Time: {_when(event.created_at)}",
        f"Message: {event.message}",
    ]
    if event.suppressed_before:
        since = f" since {_when(event.suppressed_since)}" if event.suppressed_since else ""
        lines.append(
            f"Repeats: {event.suppressed_before} more like it{since}, held back by the cooldown"
        )
    details = _masked(event.details or {})
    if details:
        lines += ["", "Details:"]
        lines += [f"  • {key}: `{_shown(value)}`" for key, value in details.items()]
    return "\n".join(lines)


def _when(moment: datetime) -> str:
    zone = settings.TIME_ZONE
    return f"{moment.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M:%S} {zone}"


def _shown(value: object) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


# --- delivery ----------------------------------------------------------------------------


def deliver_alerts(*, limit: int = 20, now: datetime | None = None) -> dict[str, int]:
    """Send up to ``limit`` due alerts through ``settings.ALERT_NOTIFIER``.

    Returns how many were ``sent``, ``failed`` (given up on in this pass) and how many
    are ``waiting`` afterwards (pending, or being sent by someone). Never raises: a
    failure is logged in one line, and one bad alert never stops the others.
    """
    now = timezone.now() if now is None else now
    counts = {"sent": 0, "failed": 0, "waiting": 0}
    try:
        counts["failed"] += _give_up_stale(now)
        notifier = _notifier()
        if notifier is not None:
            _send_due(notifier, limit, now, counts)
        counts["waiting"] = AlertEvent.objects.filter(
            status__in=(AlertStatus.PENDING, AlertStatus.SENDING)
        ).count()
    except Error as exc:  # the database: nothing more can be claimed or recorded now
        log.error("alerts: delivery pass stopped: %s", _short(exc))
    return counts


def _send_due(notifier: Notifier, limit: int, now: datetime, counts: dict[str, int]) -> None:
    for _ in range(limit):
        event = _claim_next(now)
        if event is None:
            return
        outcome = _deliver(event, notifier, now)
        if outcome == _UNAVAILABLE:
            return
        if outcome in (_SENT, _FAILED):
            counts[outcome] += 1


def alerts_redeliver(events: QuerySet[AlertEvent], *, now: datetime | None = None) -> int:
    """Put failed alerts back in the queue with every attempt restored; how many."""
    now = timezone.now() if now is None else now
    return events.filter(status=AlertStatus.FAILED).update(
        status=AlertStatus.PENDING, attempts=0, next_attempt_at=None, queued_at=now, last_error=""
    )


def _notifier() -> Notifier | None:
    try:
        return import_string(settings.ALERT_NOTIFIER)
    except ImportError as exc:
        log.error("alerts wait: notifier %s cannot be loaded: %s", settings.ALERT_NOTIFIER, exc)
        return None


def _give_up_stale(now: datetime) -> int:
    undelivered = Q(status=AlertStatus.PENDING) | Q(
        status=AlertStatus.SENDING, next_attempt_at__lte=now
    )
    stale = AlertEvent.objects.filter(undelivered, queued_at__lt=now - GIVE_UP_AFTER).update(
        status=AlertStatus.FAILED, next_attempt_at=None, last_error=STALE_ERROR
    )
    if stale:
        log.warning("alerts: %d given up on, %s", stale, STALE_ERROR)
    return stale


def _claim_next(now: datetime) -> AlertEvent | None:
    due = (
        Q(status=AlertStatus.PENDING)
        & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    ) | Q(status=AlertStatus.SENDING, next_attempt_at__lte=now)
    while True:
        event = AlertEvent.objects.filter(due).order_by("created_at", "id").first()
        if event is None:
            return None
        lease = now + DELIVERY_LEASE
        claimed = AlertEvent.objects.filter(due, id=event.id).update(
            status=AlertStatus.SENDING, next_attempt_at=lease
        )
        if claimed:
            event.status, event.next_attempt_at = AlertStatus.SENDING, lease
            return event
        # Another deliverer took it between the read and the update: try the next one.


def _deliver(event: AlertEvent, notifier: Notifier, now: datetime) -> str:
    """One claimed alert: sent, retried later, failed, or the channel unavailable."""
    # Writes after the call name the claim (the lease), so a deliverer whose lease ran
    # out cannot undo the next one's work; only "it was sent" is a fact whoever writes it.
    claim = AlertEvent.objects.filter(
        id=event.id, status=AlertStatus.SENDING, next_attempt_at=event.next_attempt_at
    )
    try:
        reference = notifier(format_alert(event))
    except NotifierUnavailable as exc:
        claim.update(status=AlertStatus.PENDING, next_attempt_at=None)
        log.warning("alerts wait: the notifier is unavailable: %s", _short(exc))
        return _UNAVAILABLE
    except Exception as exc:  # the notifier's own failure is this alert's attempt
        return _attempt_failed(claim, event, exc, now)
    AlertEvent.objects.filter(id=event.id).update(
        status=AlertStatus.SENT,
        delivered_at=now,
        delivered_ref=str(reference or "")[:64],
        next_attempt_at=None,
        last_error="",
    )
    log_event("alert_sent", alert=event.id, kind=event.kind, subject=event.subject)
    return _SENT


def _attempt_failed(
    claim: QuerySet[AlertEvent], event: AlertEvent, exc: Exception, now: datetime
) -> str:
    attempts, error = event.attempts + 1, _short(exc)
    if attempts >= MAX_ATTEMPTS:
        claim.update(
            status=AlertStatus.FAILED, attempts=attempts, next_attempt_at=None, last_error=error
        )
        log.error("alert %s not delivered after %d attempts: %s", event.id, attempts, error)
        return _FAILED
    retry_at = now + RETRY_FIRST_DELAY * 2 ** (attempts - 1)
    claim.update(
        status=AlertStatus.PENDING, attempts=attempts, next_attempt_at=retry_at, last_error=error
    )
    log.warning(
        "alert %s not delivered (attempt %d of %d, next at %s): %s",
        event.id,
        attempts,
        MAX_ATTEMPTS,
        retry_at.isoformat(timespec="seconds"),
        error,
    )
    return _RETRY


# --- circuit breakers --------------------------------------------------------------------

# resilience.db's breaker: its store is never the database, and neither are its alerts
# while it is open.
DATABASE_BREAKER = "database"
_OPENED = {
    (State.CLOSED, State.OPEN),
    (State.CLOSED, State.HALF_OPEN),  # tripped with a retry time already past
    (State.HALF_OPEN, State.OPEN),  # a trial call failed
}
_RECOVERED = {(State.HALF_OPEN, State.CLOSED), (State.OPEN, State.CLOSED)}
# Where the start of a breaker's outage is kept for its recovery alert: the shared cache,
# since the process that sees a breaker close is often not the one that saw it open.
_OUTAGE_KEY = "replyguy:breaker-down-since:{}"
_OUTAGE_KEEP = 30 * 24 * 60 * 60  # seconds
_down_since: dict[str, float] = {}  # this process's copy, for when the cache fails


def on_breaker_transition(name: str, old: str, new: str) -> None:
    """A breaker listener: the owner hears when a breaker opens and when it closes again.

    Operators' controls need no alert: forcing open or closed and disabling are modes
    (``forced_open``...), not ``open``; a reset of an open breaker is told as its
    recovery. Listeners run only in the process that made the transition.
    """
    if (old, new) in _OPENED:
        _breaker_opened(name, again=old == State.HALF_OPEN)
    elif (old, new) in _RECOVERED:
        _breaker_recovered(name)


def _breaker_opened(name: str, *, again: bool) -> None:
    _outage_began(name, time.time(), first=not again)
    status = get_breaker(name).get_status()
    details: dict[str, object] = {"service": name, "failures": status["failures"]}
    if status["last_error"]:
        details["error"] = status["last_error"]
    refused = "calls are refused"
    if status["open_until"]:
        details["reopens_at"] = status["open_until"]
        refused += f" until {_when(datetime.fromisoformat(status['open_until']))}"
    cause = " again: a trial call failed" if again else ""
    # The database breaker's alert is written to the database it says is down: it fails
    # and is logged (raise_alert), and the recovery alert tells the owner instead.
    raise_alert(
        kind=AlertKind.CIRCUIT_BREAKER_OPEN,
        subject=name,
        message=f"{name} circuit breaker opened{cause}; {refused}, then trial calls go through.",
        details=details,
    )


def _breaker_recovered(name: str) -> None:
    now = time.time()
    since = _outage_ended(name)
    details: dict[str, object] = {"service": name}
    how_long = ""
    if since is not None:
        details["down_since"] = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
        details["down_for"] = _duration(now - since)
        how_long = f" for {details['down_for']} (since {_when(datetime.fromtimestamp(since, UTC))})"
    if name == DATABASE_BREAKER:
        message = (
            f"The database is reachable again after being unreachable{how_long}. Alerts "
            "raised while it was down could not be recorded; see the log for them."
        )
    else:
        message = (
            f"{name} circuit breaker closed: calls go through again after being open{how_long}."
        )
    raise_alert(kind=AlertKind.BREAKER_RECOVERED, subject=name, message=message, details=details)


def _outage_began(name: str, at: float, *, first: bool) -> None:
    """Remember when ``name``'s outage began; a reopening keeps the first time."""
    if first or name not in _down_since:
        _down_since[name] = at
    key = _OUTAGE_KEY.format(name)
    try:
        if first:
            cache.set(key, at, _OUTAGE_KEEP)
        else:
            cache.add(key, at, _OUTAGE_KEEP)
    except Exception as exc:  # any backend's failure (the database, when that is what is down)
        # Only the recovery alert's "how long" depends on it: not worth a warning.
        log.debug("breaker %s: outage start not shared: %s", name, exc)


def _outage_ended(name: str) -> float | None:
    """When ``name``'s outage began (forgotten now), or None when nobody knows."""
    local = _down_since.pop(name, None)
    key = _OUTAGE_KEY.format(name)
    try:
        shared = cache.get(key)
        cache.delete(key)
    except Exception as exc:  # any backend's failure: this process's copy will do
        log.debug("breaker %s: outage start not read: %s", name, exc)
        shared = None
    return float(shared) if isinstance(shared, int | float) else local


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
