"""Everything Reply Guy sends the owner unasked: approval messages, their updates,
reminders and alerts, at the pace Telegram allows.

Telegram allows about one message a second per chat. Every process that sends to the
owner's chat takes a turn first (``take_turn``): turns are numbered slots of
``TELEGRAM_SEND_INTERVAL_SECONDS`` claimed in the shared cache, so two workers never
send in the same second. A 429 holds every sender until its ``retry_after``.

Nothing is lost when Telegram fails: a draft whose message did not go out stays
``pending`` with no message id and is sent by a later pass; one that went out is
recorded at once under its sender's claim, so it is not sent again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from bot.clients.errors import ClientError, ErrorKind
from bot.clients.telegram import TelegramClient
from bot.models import ApprovalMessage, QueuedTweet, Status
from bot.telegram.render import FINAL, render
from resilience import CircuitOpenError, ServiceError
from resilience.alerts import AlertKind, NotifierUnavailable, raise_alert
from resilience.events import event
from resilience.holds import held_until, hold

__all__ = ["ask_owner", "owner_client", "send_alert", "take_turn"]

log = logging.getLogger(__name__)

SENDS = "replyguy:telegram:sends"  # the hold every sender respects after a 429
SLOT_KEY = "replyguy:telegram:slot:{}"
TURNS_AHEAD = 5  # a sender waits at most this many turns; more means another is busy
SEND_LEASE = timedelta(minutes=2)
MAX_SEND_ATTEMPTS = 3  # a message Telegram refuses outright (400) is tried this often
CHANGED_AT_ONCE = 500  # messages whose tweet changed, looked at per pass
SWEPT_AT_ONCE = 20  # and open messages looked at in turn, whatever their tweet says
SWEPT_TO = "replyguy:telegram:swept-to"  # the last message id the turn reached


class NotYourTurn(Exception):
    """The owner's chat is busy or held: send later, nothing was spent."""


def owner_client() -> TelegramClient | None:
    """The client for the owner's chat, or None while Telegram is not configured."""
    try:
        return TelegramClient.from_settings()
    except ImproperlyConfigured:
        return None


def take_turn(*, now: float | None = None) -> None:
    """Wait for this process's turn to send to the owner's chat (a second or so).

    Raises ``NotYourTurn`` when Telegram asked us to wait (429) or the next few turns
    are all taken by another sender.
    """
    now = time.time() if now is None else now
    until = held_until(SENDS, now)
    if until is not None:
        raise NotYourTurn(f"Telegram asked us to wait until {until:.0f}")
    interval = settings.TELEGRAM_SEND_INTERVAL_SECONDS
    if interval <= 0:
        return
    first = math.ceil(now / interval)
    expiry = math.ceil(interval * TURNS_AHEAD) + 60
    for slot in range(first, first + TURNS_AHEAD):
        if cache.add(SLOT_KEY.format(slot), 1, timeout=expiry):
            delay = slot * interval - time.time()
            if delay > 0:
                time.sleep(delay)
            return
    raise NotYourTurn("another process is sending to the owner's chat")


def note_refusal(exc: ClientError) -> None:
    """A 429 holds every sender until Telegram's ``retry_after``."""
    if exc.status == 429 and exc.retry_at:
        hold(SENDS, exc.retry_at)


# --- alerts (settings.ALERT_NOTIFIER) -------------------------------------------------------


def send_alert(text: str) -> str:
    """Deliver one alert to the owner; its message id. ``NotifierUnavailable`` when
    Telegram is not configured, down, or asked us to wait: the alert stays queued."""
    client = owner_client()
    if client is None:
        raise NotifierUnavailable(
            "Telegram is not configured (TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID)"
        )
    try:
        take_turn()
        return str(client.send_alert(text))
    except NotYourTurn as exc:
        raise NotifierUnavailable(str(exc)) from exc
    except CircuitOpenError as exc:
        raise NotifierUnavailable(str(exc)) from exc
    except ClientError as exc:
        note_refusal(exc)
        if exc.kind is ErrorKind.TRANSIENT:
            raise NotifierUnavailable(str(exc)) from exc
        if exc.kind is ErrorKind.AMBIGUOUS:
            # Telegram may have shown it: sending it again could tell the owner twice.
            log.warning("telegram: an alert was sent without a readable answer (%s)", exc)
            return "unconfirmed"
        raise


# --- approval messages --------------------------------------------------------------------


def ask_owner(
    client: TelegramClient, *, now: datetime | None = None, limit: int = 20
) -> dict[str, int]:
    """One pass: bring sent messages up to date, send new ones, remind once.

    Each message is handled on its own; a service problem (Telegram down, a 429) ends
    the pass, which the next one resumes.
    """
    now = now or timezone.now()
    counts = {"sent": 0, "updated": 0, "reminded": 0}
    try:
        _update_shown(client, now, counts)
        _send_new(client, now, limit, counts)
        _remind(client, now, limit, counts)
    except (NotYourTurn, ServiceError) as exc:
        if isinstance(exc, ClientError):
            note_refusal(exc)
        log.info("telegram: owner's chat unavailable (%s); the next pass goes on", exc)
        counts["waiting"] = 1
    return counts


def needs_message() -> Q:
    """Tweets the owner must see: a draft to decide on, or a reply to post by hand."""
    return Q(status__in=[Status.PENDING, Status.HANDOFF]) & (
        Q(approval_message__isnull=True) | Q(approval_message__message_id__isnull=True)
    )


def _send_new(client: TelegramClient, now: datetime, limit: int, counts: dict[str, int]) -> None:
    waiting = (
        QueuedTweet.objects.filter(needs_message())
        .exclude(approval_message__send_attempts__gte=MAX_SEND_ATTEMPTS)
        .order_by("created_at")
    )
    for tweet in waiting[:limit]:
        claim = _claim_send(tweet, now)
        if claim is None:
            continue  # another sender has it
        try:
            take_turn()
            rendering = render(tweet, now=now)
            message_id = client.send_approval(text=rendering.text, buttons=rendering.buttons)
        except (NotYourTurn, ServiceError) as exc:
            _release_send(tweet, claim, exc)
            if isinstance(exc, ClientError) and exc.kind is ErrorKind.PERMANENT:
                continue  # this message's own problem; the others go on
            raise
        except Exception as exc:
            log.exception("telegram: the message for reply %s could not be sent", tweet.id)
            _release_send(tweet, claim, exc, spend=True)
            continue
        # Recorded under this sender's claim at once: it is never sent again.
        ApprovalMessage.objects.filter(queued_tweet=tweet, sending_until=claim).update(
            message_id=message_id,
            rendered=rendering.fingerprint,
            drawn_from=tweet.updated_at,
            sent_at=now,
            sending_until=None,
            last_error="",
        )
        event("asked_owner", tweet=tweet.id, post=tweet.target_tweet_id, message=message_id)
        counts["sent"] += 1


def _claim_send(tweet: QueuedTweet, now: datetime) -> datetime | None:
    ApprovalMessage.objects.bulk_create(
        [ApprovalMessage(queued_tweet=tweet)], ignore_conflicts=True
    )
    until = now + SEND_LEASE
    claimed = (
        ApprovalMessage.objects.filter(queued_tweet=tweet, message_id__isnull=True)
        .filter(Q(sending_until__isnull=True) | Q(sending_until__lt=now))
        .update(sending_until=until)
    )
    return until if claimed else None


def _release_send(
    tweet: QueuedTweet, claim: datetime, exc: Exception, *, spend: bool = False
) -> None:
    own = isinstance(exc, ClientError) and exc.kind is ErrorKind.PERMANENT
    fields: dict[str, object] = {"sending_until": None, "last_error": str(exc)[:500]}
    rows = ApprovalMessage.objects.filter(queued_tweet=tweet, sending_until=claim)
    if not (spend or own):
        rows.update(**fields)
        return
    fields["send_attempts"] = F("send_attempts") + 1
    with transaction.atomic():
        rows.update(**fields)
        if ApprovalMessage.objects.filter(
            queued_tweet=tweet, send_attempts__gte=MAX_SEND_ATTEMPTS
        ).exists():
            raise_alert(
                kind=AlertKind.TWEET_PROCESSING_FAILED,
                subject="telegram approval message",
                message=(
                    f"The draft for {tweet.url} cannot be sent to Telegram ({exc}); decide "
                    "on it in the admin under Queued tweets."
                ),
                details={"post": tweet.url, "error": str(exc)[:200]},
            )


def _update_shown(client: TelegramClient, now: datetime, counts: dict[str, int]) -> None:
    """Edit every sent message whose tweet changed since it was drawn (new draft,
    decision, result), the oldest change first, so none waits behind newer ones; and a
    few others in turn, whatever their tweet says (a new ``REPLY_MODE``, a clock that
    went back), so none stays wrong for good."""
    open_ = ApprovalMessage.objects.filter(settled=False, message_id__isnull=False).select_related(
        "queued_tweet"
    )
    changed = list(
        open_.filter(
            Q(drawn_from__isnull=True) | ~Q(queued_tweet__updated_at=F("drawn_from"))
        ).order_by("queued_tweet__updated_at", "id")[:CHANGED_AT_ONCE]
    )
    for message in changed + _swept(open_, {message.id for message in changed}):
        tweet = message.queued_tweet
        # The post's age as of the message's first sending: what changes a message is
        # its tweet, never the clock.
        rendering = render(tweet, now=message.sent_at or now)
        if rendering.fingerprint == message.rendered:
            if message.drawn_from != tweet.updated_at:
                ApprovalMessage.objects.filter(id=message.id, rendered=message.rendered).update(
                    drawn_from=tweet.updated_at
                )
            continue
        take_turn()  # edits count against Telegram's pace too
        # Read again after the wait for a turn: a press may have moved the tweet meanwhile.
        tweet = QueuedTweet.objects.get(id=tweet.id)
        rendering = render(tweet, now=message.sent_at or now)
        drawn = {"drawn_from": tweet.updated_at}
        try:
            client.edit_message(message.message_id, text=rendering.text, buttons=rendering.buttons)
        except ClientError as exc:
            if exc.kind is not ErrorKind.PERMANENT:
                raise
            # The owner deleted it, say: a decision still needed goes out again.
            log.info("telegram: message %s cannot be edited (%s)", message.message_id, exc)
            _forget_message(message, tweet)
            continue
        except ServiceError:
            raise
        except Exception:
            log.exception("telegram: message %s could not be updated", message.message_id)
            continue
        if not ApprovalMessage.objects.filter(id=message.id, rendered=message.rendered).update(
            rendered=rendering.fingerprint, settled=tweet.status in FINAL, **drawn
        ):
            # Redrawn meanwhile (a press): this edit may have landed last, from an older
            # state. The next pass draws it again.
            ApprovalMessage.objects.filter(id=message.id, message_id=message.message_id).update(
                drawn_from=None, rendered="", settled=False
            )
        counts["updated"] += 1


def _swept(open_: QuerySet[ApprovalMessage], seen: set[int]) -> list[ApprovalMessage]:
    """The next few open messages after the last pass's, round the whole set in turn."""
    try:
        after = int(cache.get(SWEPT_TO) or 0)
    except Exception:
        after = 0  # the cache is down: from the start (its failure is logged elsewhere)
    rows = list(open_.filter(id__gt=after).order_by("id")[:SWEPT_AT_ONCE])
    if len(rows) < SWEPT_AT_ONCE and after:
        rows += list(open_.filter(id__lte=after).order_by("id")[: SWEPT_AT_ONCE - len(rows)])
    if rows:
        with contextlib.suppress(Exception):
            cache.set(SWEPT_TO, rows[-1].id, timeout=None)
    return [message for message in rows if message.id not in seen]


def _forget_message(message: ApprovalMessage, tweet: QueuedTweet) -> None:
    if tweet.status in (Status.PENDING, Status.HANDOFF):
        ApprovalMessage.objects.filter(id=message.id, message_id=message.message_id).update(
            message_id=None, rendered="", sent_at=None
        )
    else:
        ApprovalMessage.objects.filter(id=message.id).update(settled=True)


def _remind(client: TelegramClient, now: datetime, limit: int, counts: dict[str, int]) -> None:
    """A draft waiting long for a decision gets one reminder, under its message."""
    due = ApprovalMessage.objects.filter(
        queued_tweet__status=Status.PENDING,
        message_id__isnull=False,
        reminded_at__isnull=True,
        sent_at__lt=now - timedelta(hours=settings.APPROVAL_REMINDER_HOURS),
    ).select_related("queued_tweet")
    for message in due[:limit]:
        if not ApprovalMessage.objects.filter(id=message.id, reminded_at__isnull=True).update(
            reminded_at=now
        ):
            continue
        tweet = message.queued_tweet
        expires = tweet.tweet_created_at + timedelta(hours=settings.MAX_POST_AGE_HOURS)
        left = max(0, int((expires - now).total_seconds() // 3600))
        try:
            take_turn()
            client.send_approval(
                text=(
                    f"⏰ Still waiting for your decision on the reply to "
                    f"@{tweet.author_username} (above). It expires in about {left} h, when "
                    "the post is too old to answer."
                ),
                buttons=[],
                reply_to=message.message_id,
            )
        except BaseException:
            ApprovalMessage.objects.filter(id=message.id, reminded_at=now).update(reminded_at=None)
            raise
        counts["reminded"] += 1
