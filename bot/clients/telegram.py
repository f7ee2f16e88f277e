"""The Telegram client: approval messages, alerts, button answers, updates, webhook.

The only module that imports python-telegram-bot. PTB is async and its HTTPX client is
bound to the event loop it first ran on, so every call builds a fresh ``Bot`` inside
its own loop and closes it afterwards: the sync methods (for the sync pipeline) run one
``asyncio.run`` each, the ``a``-prefixed ones run on the caller's loop. A fresh ``Bot``
costs no ``getMe``: we never ``initialize`` it, which only caches the bot's own user.

Every call goes through the ``telegram`` circuit breaker and has a timeout; nothing is
retried here. Failures become ``ClientError``:

- transient: connection refused, any failure of an edit, answer or poll that is not
  a 400, 5xx, 429 (``retry_at`` from ``retry_after``), 401 bad token,
  a malformed answer, and what is wrong with our one configured chat (403 blocked,
  "chat not found", migrated): every call to it would fail alike, so it is the
  service's business, not the item's;
- ambiguous: ``sendMessage`` went out and no readable answer came back;
- permanent: any other 400, and 409 (polling while a webhook is set, or a second
  poller): reason ``configuration``, the owner's to fix; it says nothing of Telegram's
  health, so the breaker does not count it.

"message is not modified" and "query is too old" are not failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
from telegram import (
    Bot,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    ReplyParameters,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBUserWarning

from bot.clients.errors import ClientError, ErrorKind, Reason
from resilience import CircuitBreaker, get_breaker

__all__ = ["MAX_CALLBACK_DATA_BYTES", "MAX_MESSAGE_LENGTH", "TelegramClient", "same_chat"]

T = TypeVar("T")

SERVICE = "telegram"
MAX_CALLBACK_DATA_BYTES = 64  # Telegram's limit; PTB does not check it
MAX_MESSAGE_LENGTH = 4096  # UTF-16 code units
UPDATE_TYPES = ["message", "callback_query"]

# httpx errors raised before a byte of the request reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
# Descriptions (lower-cased, as PTB capitalises them) that are outcomes, not failures.
_NOT_MODIFIED = "message is not modified"
_QUERY_TOO_OLD = "query is too old"
# A 400 about our one configured chat: every call would fail the same way.
_CHAT_GONE = ("chat not found", "chat_id is empty", "have no rights to send")

# (label, data): a callback button, or a link button when data is an http(s) URL.
Buttons = list[tuple[str, str]]


class TelegramClient:
    def __init__(
        self,
        *,
        token: str,
        chat_id: int | str,
        base_url: str = "https://api.telegram.org",
        timeout: float = 10.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not token:
            raise ValueError("a Telegram bot token is required")
        self._token = token
        self.chat_id = _chat_id(chat_id)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.breaker = breaker if breaker is not None else get_breaker(SERVICE)

    @classmethod
    def from_settings(cls, *, breaker: CircuitBreaker | None = None) -> TelegramClient:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured

        if not settings.TELEGRAM_BOT_TOKEN or not settings.TELEGRAM_CHAT_ID:
            raise ImproperlyConfigured("TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID must be set")
        return cls(
            token=settings.TELEGRAM_BOT_TOKEN,
            chat_id=settings.TELEGRAM_CHAT_ID,
            base_url=settings.TELEGRAM_API_BASE_URL,
            breaker=breaker,
        )

    def __repr__(self) -> str:  # never show the token
        return f"TelegramClient(chat_id={self.chat_id!r}, base_url={self.base_url!r})"

    # --- sync API (the pipeline) -------------------------------------------------------

    def send_approval(self, *, text: str, buttons: Buttons, reply_to: int | None = None) -> int:
        """Send a draft with its buttons to the owner; returns the message id.

        A ``callback_data`` over 64 bytes is refused here, before anything is sent.
        """
        _check_buttons(buttons)
        return self._sync(self._send, _fit(text), buttons, reply_to)

    def ask(self, text: str, *, reply_to: int | None = None) -> int:
        """A question the owner answers by replying (Telegram opens the reply box)."""
        return self._sync(self._send, _fit(text), [], reply_to, True)

    def edit_message(self, message_id: int, *, text: str, buttons: Buttons | None = None) -> None:
        """Replace a message's text; ``buttons=None`` removes its keyboard."""
        if buttons:
            _check_buttons(buttons)
        self._sync(self._edit, message_id, _fit(text), buttons)

    def answer_callback(self, callback_query_id: str, text: str | None = None) -> None:
        self._sync(self._answer, callback_query_id, text)

    def send_alert(self, text: str) -> int:
        """A plain message to the owner (cut to Telegram's length limit); returns its id."""
        return self._sync(self._send, _fit(text), [], None)

    def get_updates(self, *, offset: int | None, timeout: int) -> list[dict[str, Any]]:
        """Long-poll for up to ``timeout`` seconds; updates as Bot API dicts."""
        return self._sync(self._get_updates, offset, timeout)

    def set_webhook(self, url: str, secret: str) -> None:
        self._sync(self._set_webhook, url, secret)

    def delete_webhook(self) -> None:
        self._sync(self._delete_webhook)

    # --- async API (the long-polling command, async views) -----------------------------

    async def asend_approval(
        self, *, text: str, buttons: Buttons, reply_to: int | None = None
    ) -> int:
        _check_buttons(buttons)
        return await self.breaker.call_async(self._send, _fit(text), buttons, reply_to)

    async def aedit_message(
        self, message_id: int, *, text: str, buttons: Buttons | None = None
    ) -> None:
        if buttons:
            _check_buttons(buttons)
        await self.breaker.call_async(self._edit, message_id, _fit(text), buttons)

    async def aanswer_callback(self, callback_query_id: str, text: str | None = None) -> None:
        await self.breaker.call_async(self._answer, callback_query_id, text)

    async def asend_alert(self, text: str) -> int:
        return await self.breaker.call_async(self._send, _fit(text), [], None)

    async def aget_updates(self, *, offset: int | None, timeout: int) -> list[dict[str, Any]]:
        return await self.breaker.call_async(self._get_updates, offset, timeout)

    # --- one coroutine per call, errors already mapped ---------------------------------

    def _sync(self, coro_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if _loop_is_running():
            raise RuntimeError("inside an event loop, use the a-prefixed TelegramClient methods")
        # The breaker wraps the whole asyncio.run so its store I/O stays in this thread.
        return self.breaker.call(_run, coro_fn, *args)

    @contextlib.asynccontextmanager
    async def _bot(self) -> AsyncIterator[Bot]:
        request = HTTPXRequest(
            connection_pool_size=1,
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            write_timeout=self.timeout,
            pool_timeout=self.timeout,
        )
        try:
            yield Bot(
                self._token,
                base_url=f"{self.base_url}/bot",  # PTB appends the token
                request=request,
                get_updates_request=request,
            )
        finally:
            await request.shutdown()

    async def _send(
        self, text: str, buttons: Buttons, reply_to: int | None, force_reply: bool = False
    ) -> int:
        async with self._bot() as bot:
            try:
                message = await bot.send_message(
                    chat_id=self.chat_id,
                    text=text,
                    reply_markup=ForceReply(selective=False) if force_reply else _keyboard(buttons),
                    # Replying to a message the owner deleted must not lose the draft.
                    reply_parameters=(
                        ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
                        if reply_to is not None
                        else None
                    ),
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                )
            except TelegramError as exc:
                raise _client_error(exc, sends=True) from exc
        return message.message_id

    async def _edit(self, message_id: int, text: str, buttons: Buttons | None) -> None:
        async with self._bot() as bot:
            try:
                await bot.edit_message_text(
                    chat_id=self.chat_id,
                    message_id=message_id,
                    text=text,
                    reply_markup=_keyboard(buttons or []),
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                )
            except BadRequest as exc:
                if _NOT_MODIFIED not in exc.message.lower():
                    raise _client_error(exc) from exc
            except TelegramError as exc:
                raise _client_error(exc) from exc

    async def _answer(self, callback_query_id: str, text: str | None) -> None:
        async with self._bot() as bot:
            try:
                await bot.answer_callback_query(callback_query_id, text=text)
            except BadRequest as exc:
                # Too late to show a toast; the tap itself was still received.
                if _QUERY_TOO_OLD not in exc.message.lower():
                    raise _client_error(exc) from exc
            except TelegramError as exc:
                raise _client_error(exc) from exc

    async def _get_updates(self, offset: int | None, timeout: int) -> list[dict[str, Any]]:
        params = {"offset": offset, "timeout": timeout, "allowed_updates": UPDATE_TYPES}
        async with self._bot() as bot:
            try:
                with warnings.catch_warnings():
                    # The raw call, so updates reach us exactly as a webhook would receive
                    # them; PTB suggests its typed method, whose objects we do not want.
                    warnings.simplefilter("ignore", PTBUserWarning)
                    updates = await bot.do_api_request(
                        "getUpdates",
                        api_kwargs={k: v for k, v in params.items() if v is not None},
                        read_timeout=self.timeout + timeout,  # the long poll is no stall
                    )
            except TelegramError as exc:
                raise _client_error(exc) from exc
        return list(updates)

    async def _set_webhook(self, url: str, secret: str) -> None:
        async with self._bot() as bot:
            try:
                await bot.set_webhook(url=url, secret_token=secret, allowed_updates=UPDATE_TYPES)
            except TelegramError as exc:
                raise _client_error(exc) from exc

    async def _delete_webhook(self) -> None:
        async with self._bot() as bot:
            try:
                await bot.delete_webhook(drop_pending_updates=False)
            except TelegramError as exc:
                raise _client_error(exc) from exc


def _run(coro_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    async def main() -> T:
        return await coro_fn(*args)

    return asyncio.run(main())


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def same_chat(a: int | str, b: int | str) -> bool:
    """Whether two chat ids (as configured, or as Telegram sends them) name one chat."""
    return _chat_id(a) == _chat_id(b)


def _chat_id(value: int | str) -> int | str:
    """Numeric ids as ints; ``@channel`` names stay strings."""
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return text


def _check_buttons(buttons: Buttons) -> None:
    for label, data in buttons:
        if _is_url(data):
            continue
        size = len(data.encode())
        if not 1 <= size <= MAX_CALLBACK_DATA_BYTES:
            raise ClientError(
                f"callback_data of button {label!r} is {size} bytes; Telegram allows 1 to "
                f"{MAX_CALLBACK_DATA_BYTES}",
                kind=ErrorKind.PERMANENT,
                service=SERVICE,
            )


def _keyboard(buttons: Buttons) -> InlineKeyboardMarkup | None:
    """One button per row: labels stay readable on a phone."""
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(label, url=data)
                if _is_url(data)
                else InlineKeyboardButton(label, callback_data=data)
            ]
            for label, data in buttons
        ]
    )


def _is_url(data: str) -> bool:
    return data.startswith(("https://", "http://"))


def _fit(text: str) -> str:
    """Cut to Telegram's limit, counted in UTF-16 code units as Telegram counts."""
    if len(text.encode("utf-16-le")) // 2 <= MAX_MESSAGE_LENGTH:
        return text
    kept: list[str] = []
    units = 0
    for char in text:
        units += 2 if ord(char) > 0xFFFF else 1
        if units > MAX_MESSAGE_LENGTH - 1:  # room for the ellipsis
            break
        kept.append(char)
    return "".join(kept) + "…"


def _retry_after_seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        # PTB 22 warns that the attribute becomes a timedelta; accept either.
        warnings.simplefilter("ignore", PTBUserWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def _client_error(exc: TelegramError, *, sends: bool = False) -> ClientError:
    """Whose business this failure is; ``sends`` marks a call that may create a message."""
    message = exc.message

    def error(kind: ErrorKind, status: int | None = None, **extra: Any) -> ClientError:
        return ClientError(message, kind=kind, service=SERVICE, status=status, **extra)

    if isinstance(exc, RetryAfter):
        return error(ErrorKind.TRANSIENT, 429, retry_at=time.time() + _retry_after_seconds(exc))
    if isinstance(exc, InvalidToken):
        return error(ErrorKind.TRANSIENT, 401)  # configuration: every call fails alike
    if isinstance(exc, Conflict):
        return error(ErrorKind.PERMANENT, 409, reason=Reason.CONFIGURATION)
    if isinstance(exc, Forbidden | ChatMigrated):
        return error(ErrorKind.TRANSIENT, 403 if isinstance(exc, Forbidden) else 400)
    if isinstance(exc, BadRequest):
        if any(phrase in message.lower() for phrase in _CHAT_GONE):
            return error(ErrorKind.TRANSIENT, 400)
        return error(ErrorKind.PERMANENT, 400)
    if isinstance(exc, NetworkError):  # includes TimedOut; HTTP 5xx land here too
        cause = exc.__cause__
        maybe_sent = isinstance(cause, httpx.TransportError) and not isinstance(cause, _NOT_SENT)
        if sends and maybe_sent:
            return error(ErrorKind.AMBIGUOUS)
        return error(ErrorKind.TRANSIENT)
    # A 2xx whose body is not JSON: the server did the work, we cannot read the answer.
    if sends and "invalid server response" in message.lower():
        return error(ErrorKind.AMBIGUOUS)
    return error(ErrorKind.TRANSIENT)
