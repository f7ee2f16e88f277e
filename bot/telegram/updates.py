"""Updates from Telegram, from the webhook or the poller, each handled once.

``receive`` keeps an update by its ``update_id`` (Telegram redelivers after any
non-2xx, and a restarted poller sees unconfirmed ones again), so a redelivery is
ignored. ``handle_received`` then handles kept updates in order, each on its own: one
that fails is marked with its error and the others go on.

Only the configured chat acts (and, when ``TELEGRAM_ALLOWED_USER_IDS`` is set, only
those users): anything else is refused, changes nothing, and is logged as a security
event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from bot.clients.telegram import TelegramClient, same_chat
from bot.models import ApprovalMessage, Channel, QueuedTweet, Status, TelegramUpdate
from bot.services.review import (
    InvalidEdit,
    ReviewError,
    reply_approve,
    reply_posted_by_hand,
    reply_regenerate,
    reply_reject,
    reply_revise,
)
from bot.telegram import commands
from bot.telegram.buttons import Act, Press, parse
from bot.telegram.render import FINAL, render
from bot.text import clean_text
from resilience import ServiceError
from resilience.errors import ErrorKind

__all__ = ["Sender", "handle", "handle_received", "receive"]

log = logging.getLogger(__name__)
security = logging.getLogger("replyguy.security")

HANDLE_LEASE = timedelta(minutes=2)
MAX_UPDATE_ID = 2**63  # a BIGINT; Telegram's ids are far below
# An update Telegram's own failure stopped (a 502 on the Edit question, say) is tried
# again this often, for this long; then it is marked with its error.
RETRY_AFTER = timedelta(seconds=20)
RETRY_FOR = timedelta(minutes=10)
KEEP_HANDLED = timedelta(days=2)  # Telegram redelivers for a day at most
TOAST_LIMIT = 200  # characters Telegram shows in a button's answer


@dataclass(frozen=True)
class Sender:
    user_id: int
    chat_id: int
    name: str

    @property
    def actor(self) -> str:
        return f"telegram:{self.name}"

    @classmethod
    def of(cls, user: dict[str, Any], chat: dict[str, Any]) -> Sender:
        name = user.get("username") or str(user.get("id"))
        return cls(user_id=int(user.get("id", 0)), chat_id=int(chat.get("id", 0)), name=name)

    def allowed(self) -> bool:
        """The configured chat, and in it the allowed users: by default the chat's own
        user (a private chat's id is its user's); a group needs TELEGRAM_ALLOWED_USER_IDS."""
        chat = settings.TELEGRAM_CHAT_ID
        if not chat or not same_chat(self.chat_id, chat):
            return False
        allowed_users = settings.TELEGRAM_ALLOWED_USER_IDS or [chat]
        return any(same_chat(self.user_id, user) for user in allowed_users)


def receive(payload: Any) -> bool:
    """Keep an update for handling; False for a redelivery or something not an update."""
    update_id = payload.get("update_id") if isinstance(payload, dict) else None
    if type(update_id) is not int or not 0 <= update_id < MAX_UPDATE_ID:
        log.warning("telegram: ignored a body that is not an update")
        return False
    try:
        with transaction.atomic():
            TelegramUpdate.objects.create(update_id=update_id, payload=_cleaned(payload))
    except IntegrityError:
        return False  # already kept: Telegram sent it again
    return True


def _cleaned(value: Any) -> Any:
    """The payload with every string storable (no NUL, which PostgreSQL's JSON refuses)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(key)): _cleaned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    return value


def handle_received(client: TelegramClient, *, limit: int = 50) -> int:
    """Handle kept updates in order; each on its own. Returns how many were handled."""
    handled = 0
    now = timezone.now()
    TelegramUpdate.objects.filter(handled_at__lt=now - KEEP_HANDLED).delete()
    waiting = TelegramUpdate.objects.filter(handled_at__isnull=True).filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    )
    for update in waiting.order_by("update_id")[:limit]:
        claim = timezone.now() + HANDLE_LEASE
        if not TelegramUpdate.objects.filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=timezone.now()),
            id=update.id,
            handled_at__isnull=True,
        ).update(claimed_until=claim):
            continue  # another process has it
        error = ""
        try:
            handle(client, update.payload)
        except ServiceError as exc:
            if exc.kind is ErrorKind.TRANSIENT and update.received_at > now - RETRY_FOR:
                # Telegram failed us, not the owner: a press or answer is handled again
                # (each one is safe twice) instead of lost.
                log.warning("telegram: update %s waits (%s); tried again", update.update_id, exc)
                TelegramUpdate.objects.filter(id=update.id, claimed_until=claim).update(
                    claimed_until=timezone.now() + RETRY_AFTER
                )
                continue
            log.exception("telegram: update %s could not be handled", update.update_id)
            error = f"{type(exc).__name__}: {exc}"[:500]
        except Exception as exc:
            log.exception("telegram: update %s could not be handled", update.update_id)
            error = f"{type(exc).__name__}: {exc}"[:500]
        TelegramUpdate.objects.filter(id=update.id, claimed_until=claim).update(
            handled_at=timezone.now(), error=error
        )
        handled += 1
    return handled


def handle(client: TelegramClient, update: dict[str, Any]) -> None:
    if "callback_query" in update:
        _on_press(client, update["callback_query"])
    elif "message" in update:
        _on_message(client, update["message"])


# --- button presses -----------------------------------------------------------------------


def _on_press(client: TelegramClient, query: dict[str, Any]) -> None:
    message = query.get("message") or {}
    sender = Sender.of(query.get("from") or {}, message.get("chat") or {})
    if not sender.allowed():
        _refuse(sender, f"button {query.get('data')!r}")
        _answer(client, query, "You are not allowed to act here.")
        return
    press = parse(str(query.get("data") or ""))
    message_id = int(message.get("message_id") or 0)
    if press is None:
        _answer(client, query, "This button is not one Reply Guy knows.")
        return
    if press.act is Act.PAGE:
        _answer(client, query, None)
        reply = commands.page(press.command, press.page)
        client.edit_message(message_id, text=reply.text, buttons=reply.buttons)
        return
    tweet = QueuedTweet.objects.filter(id=press.tweet_id).first()
    if tweet is None:
        _answer(client, query, "That post is no longer in the queue.")
        return
    reference = f"telegram message {message_id}"
    try:
        toast = _decide(client, press, tweet, sender, reference, message_id)
    except ReviewError as exc:
        toast = str(exc)
    _answer(client, query, toast)
    show(client, tweet.id, message_id)


def _decide(
    client: TelegramClient,
    press: Press,
    tweet: QueuedTweet,
    sender: Sender,
    reference: str,
    message_id: int,
) -> str:
    """Apply one press through the review services; the answer shown on the phone."""
    who = {"actor": sender.actor, "channel": Channel.TELEGRAM, "reference": reference}
    if press.act in (Act.APPROVE, Act.VARIANT):
        variant = press.variant if press.act is Act.VARIANT else None
        approved = reply_approve(tweet, version=press.version, variant=variant, **who)
        return _approved_toast(approved)
    if press.act is Act.REJECT:
        reply_reject(tweet, version=press.version, **who)
        return "Rejected: this post will not be answered."
    if press.act is Act.REGENERATE:
        reply_regenerate(tweet, version=press.version, **who)
        return "Asking the model for a new draft; this message shows it when it is ready."
    if press.act is Act.POSTED_BY_HAND:
        reply_posted_by_hand(tweet, **who)
        return "Marked posted. Thank you!"
    return _ask_for_edit(client, press, tweet, message_id)


def _approved_toast(tweet: QueuedTweet) -> str:
    if tweet.scheduled_at is None:
        return "Approved."
    local = timezone.localtime(tweet.scheduled_at).strftime("%H:%M")
    return f"Approved: it goes out around {local} ({settings.TIME_ZONE})."


def _ask_for_edit(client: TelegramClient, press: Press, tweet: QueuedTweet, message_id: int) -> str:
    if tweet.status != Status.PENDING or tweet.draft_version != press.version:
        raise ReviewError(
            "This draft changed since that message was sent; here is the current one."
            if tweet.status == Status.PENDING
            else "This reply is no longer waiting for a decision."
        )
    # Asked under the copy that keeps the buttons (``show`` retires an older one pressed).
    live = (
        ApprovalMessage.objects.filter(queued_tweet=tweet)
        .values_list("message_id", flat=True)
        .first()
    )
    prompt = client.ask(
        f"✏️ Send the new reply to @{tweet.author_username} as an answer to this message.\n\n"
        f"The draft now:\n{tweet.draft}",
        reply_to=live or message_id,
    )
    ApprovalMessage.objects.update_or_create(
        queued_tweet=tweet, defaults={"edit_prompt_id": prompt, "edit_version": press.version}
    )
    return "Send the new text as an answer to my question below."


def _answer(client: TelegramClient, query: dict[str, Any], text: str | None) -> None:
    if text and len(text) > TOAST_LIMIT:
        text = text[: TOAST_LIMIT - 1] + "…"
    try:
        client.answer_callback(str(query.get("id")), text)
    except ServiceError as exc:
        # The press is handled whatever happens to its answer.
        log.info("telegram: could not answer a button press: %s", exc)


def show(client: TelegramClient, tweet_id: int, pressed: int | None = None) -> None:
    """Redraw the tweet's message now (the outbox catches up if Telegram fails here).

    A press on a copy we never recorded (a send whose answer was lost) adopts it; a
    press on an older copy retires that copy, so only one message has live buttons.
    """
    tweet = QueuedTweet.objects.get(id=tweet_id)
    message, _ = ApprovalMessage.objects.get_or_create(queued_tweet=tweet)
    rendering = render(tweet, now=message.sent_at)
    if (
        pressed
        and message.message_id is None
        # A press carries its tweet's id only as data: a copy shown for another tweet
        # is never taken over.
        and not ApprovalMessage.objects.filter(message_id=pressed).exists()
    ):
        ApprovalMessage.objects.filter(id=message.id, message_id__isnull=True).update(
            message_id=pressed, sent_at=timezone.now(), sending_until=None
        )
        message.message_id = pressed
    try:
        if pressed and pressed != message.message_id:
            client.edit_message(pressed, text="This copy is out of date; see the newer message.")
            return
        if message.message_id is None:
            return
        client.edit_message(message.message_id, text=rendering.text, buttons=rendering.buttons)
    except ServiceError as exc:
        log.info("telegram: message for reply %s not redrawn now (%s)", tweet.id, exc)
        return
    ApprovalMessage.objects.filter(id=message.id, message_id=message.message_id).update(
        rendered=rendering.fingerprint, settled=tweet.status in FINAL, drawn_from=tweet.updated_at
    )


# --- messages -----------------------------------------------------------------------------


def _on_message(client: TelegramClient, message: dict[str, Any]) -> None:
    sender = Sender.of(message.get("from") or {}, message.get("chat") or {})
    if not sender.allowed():
        _refuse(sender, "message")
        return
    text = str(message.get("text") or "").strip()
    replied = (message.get("reply_to_message") or {}).get("message_id")
    prompt = (
        ApprovalMessage.objects.filter(edit_prompt_id=replied)
        .select_related("queued_tweet")
        .first()
        if replied
        else None
    )
    if prompt is not None:
        _on_edited_text(client, prompt, text, sender, int(message["message_id"]))
    elif text.startswith("/"):
        reply = commands.run(text, sender)
        client.send_approval(text=reply.text, buttons=reply.buttons, reply_to=message["message_id"])
    else:
        client.send_approval(
            text=(
                "To change a draft, press ✏️ Edit under it and answer my question. "
                "/help lists the commands."
            ),
            buttons=[],
            reply_to=message["message_id"],
        )


def _on_edited_text(
    client: TelegramClient, prompt: ApprovalMessage, text: str, sender: Sender, message_id: int
) -> None:
    tweet = prompt.queued_tweet
    try:
        tweet = reply_revise(
            tweet,
            text,
            actor=sender.actor,
            channel=Channel.TELEGRAM,
            version=prompt.edit_version or 0,
            reference=f"telegram message {message_id}",
        )
    except InvalidEdit as exc:
        again = client.ask(
            f"{exc}\n\nSend another version as an answer to this message.", reply_to=message_id
        )
        ApprovalMessage.objects.filter(id=prompt.id).update(edit_prompt_id=again)
        return
    except ReviewError as exc:
        ApprovalMessage.objects.filter(id=prompt.id).update(edit_prompt_id=None, edit_version=None)
        client.send_approval(text=str(exc), buttons=[], reply_to=message_id)
        return
    ApprovalMessage.objects.filter(id=prompt.id).update(edit_prompt_id=None, edit_version=None)
    # Shown for approval again at the bottom of the chat; the old message is retired.
    now = timezone.now()
    rendering = render(tweet, now=now)
    new_id = client.send_approval(
        text=rendering.text, buttons=rendering.buttons, reply_to=message_id
    )
    old = prompt.message_id
    ApprovalMessage.objects.filter(id=prompt.id).update(
        message_id=new_id, rendered=rendering.fingerprint, sent_at=now, reminded_at=None
    )
    if old and old != new_id:
        try:
            client.edit_message(old, text="✏️ Replaced by your edited draft below.")
        except ServiceError as exc:
            log.info("telegram: old message %s not retired (%s)", old, exc)


def _refuse(sender: Sender, what: str) -> None:
    security.warning(
        "security: refused a %s from Telegram user %s (%s) in chat %s: not the owner's chat "
        "or not an allowed user; nothing changed",
        what,
        sender.user_id,
        sender.name,
        sender.chat_id,
    )
