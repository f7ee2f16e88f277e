"""The owner's private chat with the bot as a phone shows it, served by the Telegram stand-in.

``GET /phone`` is one page (``phone.html``: plain HTML and a little JavaScript, nothing
fetched from outside) that polls ``GET /_sandbox/phone/messages`` and acts as the owner
through two JSON endpoints, which call the app's own owner actions:

- ``POST /_sandbox/phone/press`` ``{"message_id": 3, "data": "approve:1"}``:
  ``TelegramApp.press_button``; answers ``{"ok": true, "callback_query_id": "..."}``.
- ``POST /_sandbox/phone/send`` ``{"text": "/status", "reply_to_message_id": 3}``
  (the reply optional): ``TelegramApp.send_user_message``; answers
  ``{"ok": true, "update_id": N}``.

Refusals are ``{"error": "..."}`` with 400 (a bad body) or 404 (no such message). The
page sets every text with ``textContent``, so message content is never parsed as HTML.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.http import Request, Response, json_response

if TYPE_CHECKING:
    from sandbox.telegram_api import TelegramApp

__all__ = ["chat_view", "control", "page"]

PAGE = Path(__file__).with_name("phone.html")


class _Refused(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def page() -> Response:
    return Response(
        200,
        PAGE.read_bytes(),
        {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
    )


def control(app: TelegramApp, request: Request, action: str) -> Response:
    """``/_sandbox/phone/{action}``: ``messages`` (GET), ``press`` and ``send`` (POST)."""
    try:
        if action == "messages" and request.method == "GET":
            return json_response(chat_view(app))
        if action == "press" and request.method == "POST":
            return json_response(_press(app, _body(request)))
        if action == "send" and request.method == "POST":
            return json_response(_send(app, _body(request)))
    except _Refused as refused:
        return json_response({"error": refused.error}, refused.status)
    return json_response({"error": f"unknown phone action {action!r}"}, 404)


def chat_view(app: TelegramApp) -> dict[str, Any]:
    """The owner's chat, oldest message first, in the shape the page renders.

    ``force_reply_to`` is the last message when the bot sent it with ``force_reply``
    (the next text answers it, as a phone would arrange); ``callback_answers`` are the
    bot's answerCallbackQuery calls for this chat, oldest first.
    """
    with app.lock:
        bot = app.bot_user
        chat_id = app.owner_chat_id
        messages = [
            _message_view(entry, bot["id"]) for entry in app.messages.get(chat_id, {}).values()
        ]
        answers = []
        for answer in app.callback_answers:
            query = app.callback_queries.get(answer["callback_query_id"], {})
            if query.get("chat_id") == chat_id:
                answers.append(
                    {
                        "message_id": query["message_id"],
                        "text": answer["text"],
                        "show_alert": answer["show_alert"],
                    }
                )
    last = messages[-1] if messages else None
    forced = last is not None and last["from_bot"] and last["force_reply"]
    return {
        "bot": {"first_name": bot["first_name"], "username": bot["username"]},
        "messages": messages,
        "force_reply_to": messages[-1]["message_id"] if forced else None,
        "callback_answers": answers,
    }


def _message_view(entry: dict[str, Any], bot_id: int) -> dict[str, Any]:
    message = entry["message"]
    replied = message.get("reply_to_message")
    force_reply = entry.get("force_reply")
    rows = message.get("reply_markup", {}).get("inline_keyboard", [])
    return {
        "message_id": message["message_id"],
        "from_bot": message["from"]["id"] == bot_id,
        "text": message["text"],
        "date": message["date"],
        "edited": "edit_date" in message,
        "reply_to": (
            None
            if replied is None
            else {"message_id": replied["message_id"], "text": replied["text"]}
        ),
        # Buttons of other kinds (web apps, logins, games) show, but do nothing here.
        "buttons": [
            [
                {
                    "text": button["text"],
                    "callback_data": button.get("callback_data"),
                    "url": button.get("url"),
                }
                for button in row
            ]
            for row in rows
        ],
        "force_reply": force_reply is not None,
        "placeholder": (force_reply or {}).get("input_field_placeholder"),
    }


def _body(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except ValueError:
        raise _Refused(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _Refused(400, "the body must be a JSON object")
    return body


def _press(app: TelegramApp, body: dict[str, Any]) -> dict[str, Any]:
    message_id, data = body.get("message_id"), body.get("data")
    if not isinstance(message_id, int) or not isinstance(data, str) or not data:
        raise _Refused(400, "press needs an integer message_id and a non-empty data string")
    try:
        query_id = app.press_button(message_id, data)
    except KeyError:
        raise _Refused(404, f"no message {message_id} in the owner's chat") from None
    return {"ok": True, "callback_query_id": query_id}


def _send(app: TelegramApp, body: dict[str, Any]) -> dict[str, Any]:
    text, reply_to = body.get("text"), body.get("reply_to_message_id")
    if not isinstance(text, str) or not text.strip():
        raise _Refused(400, "send needs a non-empty text")
    if reply_to is not None and not isinstance(reply_to, int):
        raise _Refused(400, "reply_to_message_id must be an integer")
    try:
        update_id = app.send_user_message(text.strip(), reply_to_message_id=reply_to)
    except KeyError:
        raise _Refused(404, f"no message {reply_to} in the owner's chat") from None
    return {"ok": True, "update_id": update_id}
