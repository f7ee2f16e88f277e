"""A stand-in for the Telegram Bot API that python-telegram-bot cannot tell from the real one.

Routes are ``/bot{token}/{method}`` (GET or POST; method names are case-insensitive, as
on api.telegram.org) with parameters in the query string, a JSON body, a form-encoded
body (nested fields such as ``reply_markup`` JSON-encoded, which is what PTB sends) or
a multipart body. Answers are ``{"ok": true, "result": ...}`` or Telegram's error shape
``{"ok": false, "error_code": N, "description": "..."}`` with its exact descriptions.

Tests and demos act as the owner through ``press_button`` and ``send_user_message``,
or in a browser at ``/phone`` (``sandbox.telegram_phone``); the resulting updates are
served by ``getUpdates`` (real long polling) or, when a webhook is set, POSTed to it
from a background thread, as Telegram does. Time-based rules (the callback-query answer
window, the optional per-chat flood limit, message dates) read ``app.clock``, which a
test may replace.
"""

from __future__ import annotations

import contextlib
import html
import itertools
import json
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from copy import deepcopy
from http import HTTPStatus
from typing import Any

from sandbox import telegram_phone
from sandbox.faults import Fault
from sandbox.http import App, Request, Response, json_response

__all__ = ["TelegramApp"]

Params = dict[str, Any]

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
POLL_CONFLICT = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
MAX_TEXT = 4096  # UTF-16 code units, after entity parsing
MAX_CALLBACK_DATA = 64  # bytes, UTF-8
MAX_POLL_TIMEOUT = 50  # seconds; longer long polls are shortened

# Injected errors (faults) carry the description Telegram sends with that status.
_FAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: POLL_CONFLICT,
}
_HTML_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
    "a", "code", "pre", "blockquote", "tg-emoji",
}  # fmt: skip
_MARKDOWN_V2_RESERVED = set("#+-=|{}.!")  # never markup, so always in need of a backslash
_BUTTON_ACTIONS = (
    "callback_data", "url", "web_app", "login_url", "switch_inline_query",
    "switch_inline_query_current_chat", "switch_inline_query_chosen_chat", "copy_text",
    "callback_game", "pay",
)  # fmt: skip
_UPDATE_TYPES = ("message", "callback_query")


class ApiError(Exception):
    """A Bot API error answer: ``status`` and Telegram's exact ``description``."""

    def __init__(self, status: int, description: str, parameters: Params | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


class TelegramApp(App):
    name = "telegram"

    DEFAULT_TOKEN = "123456:SANDBOX-token"  # noqa: S105 (a well-known fake, not a secret)
    OWNER_ID = 1001  # a private chat's id is its user's id

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.token = token
        self.clock = clock
        self.owner_user_id = self.OWNER_ID
        self.owner_chat_id = self.OWNER_ID
        # Knobs a test may turn.
        self.callback_answer_window = 15 * 60.0  # seconds a callback query can be answered
        self.per_chat_interval: float | None = None  # e.g. 1.0 for Telegram's ~1 msg/s/chat
        self.require_https_webhook = False  # real Telegram does; loopback receivers cannot
        self.webhook_max_attempts = 3
        self.webhook_retry_delay = 0.05  # real seconds between delivery attempts
        self.webhook_timeout = 5.0
        self._cond = threading.Condition(self.lock)
        self._deliverer: threading.Thread | None = None
        self._methods: dict[str, Callable[[Params], Any]] = {
            "getMe": self._get_me,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "answerCallbackQuery": self._answer_callback_query,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
        }
        self._by_lower = {name.lower(): name for name in self._methods}
        self._init_state()

    # --- state -------------------------------------------------------------------------

    def _init_state(self) -> None:
        self._closed = False
        self._epoch = getattr(self, "_epoch", 0) + 1  # a delivery in flight across reset() is void
        self.users: dict[int, Params] = {}
        self.chats: dict[int, Params] = {}
        self.add_user(self.owner_user_id, first_name="Owner", username="owner")
        # chat id -> message id -> {"message": current Message, "history": earlier versions,
        # "force_reply": the ForceReply markup it was sent with, which Messages do not echo}
        self.messages: dict[int, dict[int, Params]] = {}
        self._next_message_id: dict[int, int] = {}
        self.callback_queries: dict[str, Params] = {}
        self.callback_answers: list[Params] = []
        self._updates: list[Params] = []  # not yet confirmed (getUpdates) or delivered (webhook)
        self._update_ids = itertools.count(700_000_001)
        self._query_ids = itertools.count(1)
        self._poll_generation = 0
        self.allowed_updates: list[str] = []
        self._last_send: dict[int, float] = {}
        self.webhook: Params = {"url": "", "secret_token": None, "allowed_updates": None}
        self.last_error_date: int | None = None
        self.last_error_message: str | None = None
        self._attempts: dict[int, int] = {}
        self.delivered: list[Params] = []  # one entry per webhook POST attempt

    @property
    def bot_user(self) -> Params:
        return {
            "id": int(self.token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "Reply Guy Sandbox",
            "username": "replyguy_sandbox_bot",
        }

    def add_user(self, user_id: int, *, first_name: str, username: str | None = None) -> Params:
        """A Telegram user and their private chat with the bot."""
        with self.lock:
            user: Params = {"id": user_id, "is_bot": False, "first_name": first_name}
            chat: Params = {"id": user_id, "first_name": first_name, "type": "private"}
            if username:
                user["username"] = chat["username"] = username
            user["language_code"] = "en"
            self.users[user_id] = user
            self.chats[user_id] = chat
            return user

    def reset(self) -> None:
        """Forget chats' messages, updates, webhook and faults; keep token and clock."""
        with self.lock:
            super().reset()
            self._init_state()
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the webhook deliverer and release long polls (call when the server stops)."""
        with self.lock:
            self._closed = True
            self._cond.notify_all()
            deliverer = self._deliverer
        if deliverer is not None:
            deliverer.join(5)

    def snapshot(self) -> Params:
        with self.lock:
            return {
                "bot": self.bot_user,
                "chats": list(self.chats.values()),
                "messages": {
                    str(chat_id): [
                        {**entry["message"], "history": entry["history"]}
                        for entry in by_id.values()
                    ]
                    for chat_id, by_id in self.messages.items()
                },
                "pending_updates": deepcopy(self._updates),
                "callback_answers": list(self.callback_answers),
                "webhook": self._webhook_info(),
                "delivered": list(self.delivered),
            }

    def seed_state(self, data: Params) -> None:
        """Accepts ``token``, ``users`` ([{id, first_name, username}]), ``chats`` (Chat
        objects, e.g. groups) and ``per_chat_interval``."""
        with self.lock:
            if "token" in data:
                self.token = str(data["token"])
            for user in data.get("users", []):
                self.add_user(
                    int(user["id"]),
                    first_name=user.get("first_name", f"User {user['id']}"),
                    username=user.get("username"),
                )
            for chat in data.get("chats", []):
                self.chats[int(chat["id"])] = dict(chat)
            if "per_chat_interval" in data:
                self.per_chat_interval = data["per_chat_interval"]

    # --- inspection helpers for tests --------------------------------------------------

    def message(self, message_id: int, *, chat_id: int | None = None) -> Params:
        """The current version of a stored message (KeyError if there is none)."""
        chat = self.owner_chat_id if chat_id is None else chat_id
        with self.lock:
            return deepcopy(self.messages[chat][message_id]["message"])

    def history(self, message_id: int, *, chat_id: int | None = None) -> list[Params]:
        """Earlier versions of an edited message, oldest first."""
        chat = self.owner_chat_id if chat_id is None else chat_id
        with self.lock:
            return deepcopy(self.messages[chat][message_id]["history"])

    def bot_messages(self, *, chat_id: int | None = None) -> list[Params]:
        """Current versions of the messages the bot sent to a chat, oldest first."""
        chat = self.owner_chat_id if chat_id is None else chat_id
        bot_id = self.bot_user["id"]
        with self.lock:
            return [
                deepcopy(entry["message"])
                for entry in self.messages.get(chat, {}).values()
                if entry["message"]["from"]["id"] == bot_id
            ]

    @property
    def pending_updates(self) -> list[Params]:
        with self.lock:
            return deepcopy(self._updates)

    # --- acting as the owner -----------------------------------------------------------

    def press_button(
        self,
        message_id: int,
        data: str,
        *,
        user_id: int | None = None,
        chat_id: int | None = None,
    ) -> str:
        """The user taps an inline button under a bot message; returns the callback query id.

        ``data`` is not checked against the keyboard: a modified client can send anything.
        """
        chat_id = self.owner_chat_id if chat_id is None else chat_id
        user_id = self.owner_user_id if user_id is None else user_id
        with self.lock:
            stored = self.messages.get(chat_id, {}).get(message_id)
            if stored is None:
                raise KeyError(f"no message {message_id} in chat {chat_id}")
            query_id = str(4_382_000_000_000_000_000 + next(self._query_ids))
            self.callback_queries[query_id] = {
                "created_at": self.clock(),
                "answered": False,
                "chat_id": chat_id,
                "message_id": message_id,
            }
            query = {
                "id": query_id,
                "from": self._user(user_id),
                "message": deepcopy(stored["message"]),
                "chat_instance": str(-6_000_000_000_000_000_000 - chat_id),
                "data": data,
            }
            self._enqueue("callback_query", query)
            return query_id

    def send_user_message(
        self,
        text: str,
        *,
        chat_id: int | None = None,
        user_id: int | None = None,
        reply_to_message_id: int | None = None,
    ) -> int:
        """The user writes to the bot (optionally replying to a message); returns the update id."""
        chat_id = self.owner_chat_id if chat_id is None else chat_id
        user_id = self.owner_user_id if user_id is None else user_id
        with self.lock:
            chat = self.chats.get(chat_id)
            if chat is None:
                raise KeyError(f"unknown chat {chat_id}")
            message = self._new_message(chat, self._user(user_id), text)
            if text.startswith("/"):
                command = text.split()[0]
                message["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
            if reply_to_message_id is not None:
                message["reply_to_message"] = self._replied(chat_id, reply_to_message_id)
            self._store(chat_id, message)
            return self._enqueue("message", message)["update_id"]

    def _user(self, user_id: int) -> Params:
        if user_id not in self.users:
            self.add_user(user_id, first_name=f"User {user_id}")
        return deepcopy(self.users[user_id])

    def _enqueue(self, kind: str, payload: Params) -> Params:
        update = {"update_id": next(self._update_ids), kind: deepcopy(payload)}
        # Telegram drops updates of a type the bot did not ask for.
        if not self.allowed_updates or kind in self.allowed_updates:
            self._updates.append(update)
            self._cond.notify_all()
        return update

    # --- HTTP --------------------------------------------------------------------------

    def control(self, request: Request) -> Response:
        """The base control API, plus the phone's under ``/_sandbox/phone/``."""
        action = request.path.removeprefix("/_sandbox/").strip("/")
        if action.startswith("phone/"):
            return telegram_phone.control(self, request, action.removeprefix("phone/"))
        return super().control(request)

    def page(self, request: Request) -> Response | None:
        if request.method == "GET" and request.path.rstrip("/") == "/phone":
            return telegram_phone.page()
        return None

    def resolve(self, method: str, path: str) -> tuple[str, Any, dict[str, str]] | None:
        match = re.fullmatch(r"/bot([^/]*)/([^/]*)", path)
        if match is None or method not in ("GET", "POST"):
            return None
        token, api_method = match.groups()
        name = self._by_lower.get(api_method.lower(), "unknown")
        return name, self._handle, {"token": token, "api_method": name}

    def error_response(self, status: int, fault: Fault) -> Response:
        if status == 429:
            retry_after = fault.retry_after
            error = ApiError(
                429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
            )
        else:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            error = ApiError(status, _FAULT_DESCRIPTIONS.get(status, phrase))
        return _error_body(error)

    def _handle(self, request: Request, token: str, api_method: str) -> Response:
        try:
            if not re.fullmatch(r"\d+:[\w-]+", token):
                raise ApiError(404, "Not Found")  # Telegram's answer to a malformed token
            if token != self.token:
                raise ApiError(401, "Unauthorized")
            if api_method == "unknown":
                raise ApiError(404, "Not Found")
            params = _request_params(request)
            result = self._methods[api_method](params)
        except ApiError as error:
            return _error_body(error)
        if isinstance(result, Response):
            return result
        return json_response({"ok": True, "result": result})

    # --- methods -----------------------------------------------------------------------

    def _get_me(self, params: Params) -> Params:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _send_message(self, params: Params) -> Params:
        with self.lock:
            chat = self._chat(params)
            text = _message_text(params)
            markup = _reply_markup(params.get("reply_markup"))
            reply_to, allow_without = _reply_target(params)
            replied = None
            if reply_to is not None:
                try:
                    replied = self._replied(chat["id"], reply_to)
                except KeyError:
                    if not allow_without:
                        raise _bad("message to be replied not found") from None
            self._flood_check(chat["id"])
            message = self._new_message(chat, self.bot_user, text)
            if replied is not None:
                message["reply_to_message"] = replied
            preview = _link_preview(params)
            if preview is not None:
                message["link_preview_options"] = preview
            if markup:
                message["reply_markup"] = markup
            self._store(chat["id"], message, force_reply=_force_reply(params.get("reply_markup")))
            return deepcopy(message)

    def _edit_message_text(self, params: Params) -> Params:
        with self.lock:
            stored = self._editable(params)
            self._flood_check(stored["message"]["chat"]["id"])  # edits count, as on Telegram
            text = _message_text(params)
            markup = _reply_markup(params.get("reply_markup"))
            # Omitting reply_markup removes the keyboard, as on Telegram.
            return self._apply_edit(stored, text, markup)

    def _edit_message_reply_markup(self, params: Params) -> Params:
        with self.lock:
            stored = self._editable(params)
            markup = _reply_markup(params.get("reply_markup"))
            return self._apply_edit(stored, stored["message"]["text"], markup)

    def _answer_callback_query(self, params: Params) -> bool:
        with self.lock:
            query_id = str(params.get("callback_query_id") or "")
            query = self.callback_queries.get(query_id)
            if query is None or query["answered"]:
                raise ApiError(400, QUERY_TOO_OLD)
            if self.clock() - query["created_at"] > self.callback_answer_window:
                raise ApiError(400, QUERY_TOO_OLD)
            text = params.get("text")
            if text is not None and len(str(text)) > 200:
                raise _bad("MESSAGE_TOO_LONG")
            query["answered"] = True
            self.callback_answers.append(
                {
                    "callback_query_id": query_id,
                    "text": text,
                    "show_alert": _bool(params.get("show_alert")),
                    "url": params.get("url"),
                    "answered_at": self.clock(),
                }
            )
            return True

    def _get_updates(self, params: Params) -> list[Params]:
        offset = _int(params, "offset")
        limit = min(max(_int(params, "limit") or 100, 1), 100)
        timeout = min(max(_int(params, "timeout") or 0, 0), MAX_POLL_TIMEOUT)
        allowed = _json_list(params.get("allowed_updates"))
        deadline = time.monotonic() + timeout
        with self.lock:
            if self.webhook["url"]:
                raise ApiError(409, WEBHOOK_CONFLICT)
            if allowed is not None:
                self.allowed_updates = [kind for kind in allowed if kind in _UPDATE_TYPES]
            self._confirm(offset)
            self._poll_generation += 1
            generation = self._poll_generation
            self._cond.notify_all()  # an earlier poll still waiting gets its 409
            while True:
                if self._updates or self._closed:
                    return deepcopy(self._updates[:limit])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
                if self.webhook["url"]:
                    raise ApiError(409, WEBHOOK_CONFLICT)
                if generation != self._poll_generation:
                    raise ApiError(409, POLL_CONFLICT)

    def _set_webhook(self, params: Params) -> Response:
        with self.lock:
            url = str(params.get("url") or "")
            if not url:
                return self._remove_webhook(params)
            scheme = r"https://" if self.require_https_webhook else r"https?://"
            if not re.match(scheme + r"[^/\s]+", url):
                raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
            secret = params.get("secret_token")
            if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
                raise _bad("secret token contains unallowed characters")
            allowed = _json_list(params.get("allowed_updates"))
            if allowed is not None:
                self.allowed_updates = [kind for kind in allowed if kind in _UPDATE_TYPES]
            if _bool(params.get("drop_pending_updates")):
                self._updates.clear()
            new = {"url": url, "secret_token": secret, "allowed_updates": allowed}
            unchanged = new == self.webhook
            self.webhook = new
            self._cond.notify_all()  # long polls now conflict; the deliverer wakes
            self._ensure_deliverer()
            description = "Webhook is already set" if unchanged else "Webhook was set"
            return json_response({"ok": True, "result": True, "description": description})

    def _delete_webhook(self, params: Params) -> Response:
        with self.lock:
            return self._remove_webhook(params)

    def _remove_webhook(self, params: Params) -> Response:
        had_one = bool(self.webhook["url"])
        self.webhook = {"url": "", "secret_token": None, "allowed_updates": None}
        if _bool(params.get("drop_pending_updates")):
            self._updates.clear()
        self._cond.notify_all()
        description = "Webhook was deleted" if had_one else "Webhook is already deleted"
        return json_response({"ok": True, "result": True, "description": description})

    def _get_webhook_info(self, params: Params) -> Params:
        with self.lock:
            return self._webhook_info()

    def _webhook_info(self) -> Params:
        info: Params = {
            "url": self.webhook["url"],
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook["url"]:
            info["max_connections"] = 40
            info["ip_address"] = "127.0.0.1"
            if self.webhook["allowed_updates"] is not None:
                info["allowed_updates"] = self.webhook["allowed_updates"]
        if self.last_error_date is not None:
            info["last_error_date"] = self.last_error_date
            info["last_error_message"] = self.last_error_message
        return info

    # --- messages ----------------------------------------------------------------------

    def _chat(self, params: Params) -> Params:
        raw = params.get("chat_id")
        if raw is None or raw == "":
            raise _bad("chat_id is empty")
        raw = str(raw)
        if raw.startswith("@"):
            for chat in self.chats.values():
                if chat.get("username") == raw[1:]:
                    return chat
            raise _bad("chat not found")
        try:
            chat_id = int(raw)
        except ValueError:
            raise _bad("chat not found") from None
        chat = self.chats.get(chat_id)
        if chat is None:
            raise _bad("chat not found")
        return chat

    def _new_message(self, chat: Params, sender: Params, text: str) -> Params:
        chat_id = chat["id"]
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        return {
            "message_id": message_id,
            "from": deepcopy(sender),
            "chat": deepcopy(chat),
            "date": int(self.clock()),
            "text": text,
        }

    def _store(self, chat_id: int, message: Params, *, force_reply: Params | None = None) -> None:
        entry = {"message": deepcopy(message), "history": [], "force_reply": force_reply}
        self.messages.setdefault(chat_id, {})[message["message_id"]] = entry

    def _replied(self, chat_id: int, message_id: int) -> Params:
        """The message being replied to, as Telegram nests it (one level deep)."""
        replied = deepcopy(self.messages[chat_id][message_id]["message"])
        replied.pop("reply_to_message", None)
        return replied

    def _editable(self, params: Params) -> Params:
        if params.get("inline_message_id"):
            raise _bad("message to edit not found")  # no inline messages in the sandbox
        chat = self._chat(params)
        message_id = _int(params, "message_id")
        if message_id is None:
            raise _bad("message identifier is not specified")
        stored = self.messages.get(chat["id"], {}).get(message_id)
        if stored is None:
            raise _bad("message to edit not found")
        if stored["message"]["from"]["id"] != self.bot_user["id"]:
            raise _bad("message can't be edited")
        return stored

    def _apply_edit(self, stored: Params, text: str, markup: Params | None) -> Params:
        current = stored["message"]
        if current["text"] == text and current.get("reply_markup") == markup:
            raise ApiError(400, NOT_MODIFIED)
        stored["history"].append(deepcopy(current))
        current["text"] = text
        current["edit_date"] = int(self.clock())
        if markup:
            current["reply_markup"] = markup
        else:
            current.pop("reply_markup", None)
        return deepcopy(current)

    def _flood_check(self, chat_id: int) -> None:
        if self.per_chat_interval is None:
            return
        now = self.clock()
        last = self._last_send.get(chat_id)
        if last is not None and now - last < self.per_chat_interval:
            wait = max(1, math.ceil(self.per_chat_interval - (now - last)))
            raise ApiError(429, f"Too Many Requests: retry after {wait}", {"retry_after": wait})
        self._last_send[chat_id] = now

    # --- updates -----------------------------------------------------------------------

    def _confirm(self, offset: int | None) -> None:
        """``offset`` confirms every update below it; a negative one keeps the last -offset."""
        if offset is None:
            return
        if offset < 0:
            del self._updates[: max(0, len(self._updates) + offset)]
        else:
            self._updates[:] = [u for u in self._updates if u["update_id"] >= offset]

    def _ensure_deliverer(self) -> None:
        if self._deliverer is None or not self._deliverer.is_alive():
            self._deliverer = threading.Thread(
                target=self._deliver_loop, name="sandbox-telegram-webhook", daemon=True
            )
            self._deliverer.start()

    def _deliver_loop(self) -> None:
        """POST pending updates to the webhook in order, retrying a few times, as Telegram does."""
        while True:
            with self.lock:
                while not self._closed and self.webhook["url"] and not self._updates:
                    self._cond.wait()
                if self._closed or not self.webhook["url"]:
                    self._deliverer = None
                    return
                update = deepcopy(self._updates[0])
                url, secret = self.webhook["url"], self.webhook["secret_token"]
                epoch = self._epoch
            status, error = self._post_update(url, secret, update)
            with self.lock:
                if epoch != self._epoch:
                    continue
                update_id = update["update_id"]
                attempt = self._attempts[update_id] = self._attempts.get(update_id, 0) + 1
                self.delivered.append(
                    {"update_id": update_id, "attempt": attempt, "status": status, "error": error}
                )
                ok = status is not None and 200 <= status < 300
                if not ok:
                    self.last_error_date = int(self.clock())
                    self.last_error_message = error
                if ok or attempt >= self.webhook_max_attempts:
                    if self._updates and self._updates[0]["update_id"] == update_id:
                        self._updates.pop(0)
                    self._cond.notify_all()
                else:
                    self._cond.wait(self.webhook_retry_delay)

    def _post_update(
        self, url: str, secret: str | None, update: Params
    ) -> tuple[int | None, str | None]:
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        # setWebhook accepted only http(s) URLs.
        request = urllib.request.Request(  # noqa: S310
            url, data=json.dumps(update).encode(), headers=headers, method="POST"
        )
        # No proxies: the receiver is usually on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.webhook_timeout) as response:
                return response.status, None
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(Exception):
                exc.close()
            return exc.code, f"Wrong response from the webhook: {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                return None, "Connection refused"
            if isinstance(exc.reason, TimeoutError):
                return None, "Read timeout expired"
            return None, f"Failed to connect: {exc.reason}"
        except TimeoutError:
            return None, "Read timeout expired"
        except OSError as exc:
            return None, f"Connection failed: {exc}"


# --- request parsing ---------------------------------------------------------------------


def _error_body(error: ApiError) -> Response:
    body: Params = {"ok": False, "error_code": error.status, "description": error.description}
    if error.parameters:
        body["parameters"] = error.parameters
    return json_response(body, error.status)


def _request_params(request: Request) -> Params:
    """Query string and body together; the body wins, as on Telegram."""
    params: Params = {name: values[0] for name, values in request.query.items() if values}
    try:
        params.update(request.params())
    except ValueError:
        raise _bad("can't parse JSON object") from None
    return params


def _int(params: Params, name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad(f'field "{name}" must be of type Integer') from None


def _bool(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def _json(value: Any, error: str) -> Any:
    """A nested field: JSON-encoded in forms and query strings, native in JSON bodies."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise _bad(error) from None


def _json_list(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    parsed = _json(value, "can't parse allowed updates JSON array")
    if not isinstance(parsed, list):
        raise _bad("can't parse allowed updates JSON array")
    return [str(item) for item in parsed]


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _message_text(params: Params) -> str:
    raw = params.get("text")
    text = "" if raw is None else str(raw)
    text = _parse_entities(text, params.get("parse_mode")).strip()
    if not text:
        raise _bad("message text is empty")
    if _utf16_len(text) > MAX_TEXT:
        raise _bad("message is too long")
    return text


def _parse_entities(text: str, parse_mode: Any) -> str:
    """The plain text Telegram keeps after parsing markup; refuses what it refuses."""
    if parse_mode is None or parse_mode == "":
        return text
    mode = str(parse_mode).lower()
    if mode == "html":
        return _parse_html(text)
    if mode == "markdownv2":
        return _parse_markdown_v2(text)
    if mode == "markdown":
        return re.sub(r"[*_`]", "", text)
    raise _bad("unsupported parse_mode")


def _parse_html(text: str) -> str:
    open_tags: list[str] = []
    plain: list[str] = []
    position = 0
    for match in re.finditer(r"<(/?)([^\s<>/]*)[^<>]*>|<", text):
        plain.append(text[position : match.start()])
        position = match.end()
        closing, name = match.group(1), (match.group(2) or "").lower()
        offset = len(text[: match.start()].encode())
        if match.group(0) == "<" or name not in _HTML_TAGS:
            raise _bad(
                f'can\'t parse entities: Unsupported start tag "{name}" at byte offset {offset}'
            )
        if not closing:
            open_tags.append(name)
        elif not open_tags or open_tags[-1] != name:
            expected = f"</{open_tags[-1]}>" if open_tags else "no end tag"
            raise _bad(
                f"can't parse entities: Unmatched end tag at byte offset {offset}, "
                f'expected "{expected}", found "</{name}>"'
            )
        else:
            open_tags.pop()
    if open_tags:
        tag = open_tags[-1]
        raise _bad(f"can't parse entities: Can't find end tag corresponding to start tag \"{tag}\"")
    plain.append(text[position:])
    return html.unescape("".join(plain))


def _parse_markdown_v2(text: str) -> str:
    plain: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            plain.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in _MARKDOWN_V2_RESERVED:
            raise _bad(
                f"can't parse entities: Character '{char}' is reserved and must be escaped "
                "with the preceding '\\'"
            )
        elif char not in "*_~|`":
            plain.append(char)
    return "".join(plain)


def _reply_markup(raw: Any) -> Params | None:
    """An inline keyboard as Telegram echoes it back; None when there is none."""
    if raw is None or raw == "":
        return None
    markup = _json(raw, "can't parse reply keyboard markup JSON object")
    if not isinstance(markup, dict):
        raise _bad("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" not in markup:
        return None  # reply keyboards, force_reply, remove_keyboard: not echoed in the Message
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad('can\'t parse inline keyboard button: field "inline_keyboard" must be an Array')
    keyboard = [[_button(button) for button in row] for row in rows]
    keyboard = [row for row in keyboard if row]
    return {"inline_keyboard": keyboard} if keyboard else None


def _force_reply(raw: Any) -> Params | None:
    """The ForceReply markup a message was sent with (already parsed once by _reply_markup)."""
    if raw is None or raw == "":
        return None
    markup = _json(raw, "can't parse reply keyboard markup JSON object")
    if isinstance(markup, dict) and _bool(markup.get("force_reply")):
        return dict(markup)
    return None


def _button(button: Any) -> Params:
    if not isinstance(button, dict) or "text" not in button:
        raise _bad("can't parse inline keyboard button: Can't find field \"text\"")
    actions = [name for name in _BUTTON_ACTIONS if name in button]
    if not actions:
        raise _bad(
            "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
        )
    data = button.get("callback_data")
    if "callback_data" in button:
        size = len(str(data).encode())
        if not 1 <= size <= MAX_CALLBACK_DATA:
            raise _bad("BUTTON_DATA_INVALID")
    if "url" in button and not re.match(r"(https?|tg)://\S+$", str(button["url"])):
        raise _bad("BUTTON_URL_INVALID")
    return {"text": str(button["text"]), **{name: button[name] for name in actions}}


def _reply_target(params: Params) -> tuple[int | None, bool]:
    """(message id to reply to, allow_sending_without_reply) from either API form."""
    raw = params.get("reply_parameters")
    if raw is not None and raw != "":
        reply = _json(raw, "can't parse reply parameters JSON object")
        if not isinstance(reply, dict) or "message_id" not in reply:
            raise _bad("can't parse reply parameters JSON object")
        return int(reply["message_id"]), _bool(reply.get("allow_sending_without_reply"))
    return _int(params, "reply_to_message_id"), _bool(params.get("allow_sending_without_reply"))


def _link_preview(params: Params) -> Params | None:
    raw = params.get("link_preview_options")
    if raw is not None and raw != "":
        options = _json(raw, "can't parse link preview options JSON object")
        if not isinstance(options, dict):
            raise _bad("can't parse link preview options JSON object")
        return options or None
    if _bool(params.get("disable_web_page_preview")):
        return {"is_disabled": True}
    return None
