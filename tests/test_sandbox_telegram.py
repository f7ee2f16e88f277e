"""The Telegram stand-in speaks the Bot API: shapes, exact error descriptions, statuses.

Plain ``requests`` here, so these tests pin the protocol itself; the client tests check
that python-telegram-bot is satisfied with it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.http import Server
from sandbox.telegram_api import NOT_MODIFIED, QUERY_TOO_OLD, WEBHOOK_CONFLICT, TelegramApp
from tests.helpers import Receiver, requests_to, wait_for

OWNER = TelegramApp.OWNER_ID
KEYBOARD = {"inline_keyboard": [[{"text": "Approve", "callback_data": "approve:1"}]]}


@pytest.fixture
def app(clock) -> Iterator[TelegramApp]:
    app = TelegramApp(clock=clock)
    yield app
    app.close()


@pytest.fixture
def api(app) -> Iterator[Any]:
    with Server(app) as server:
        base = f"{server.url}/bot{app.token}"

        def call(method: str, _timeout: float = 5, **params: Any) -> requests.Response:
            return requests.post(f"{base}/{method}", json=params, timeout=_timeout)

        call.base = base  # type: ignore[attr-defined]
        call.url = server.url  # type: ignore[attr-defined]
        yield call


def ok(response: requests.Response) -> Any:
    body = response.json()
    assert response.status_code == 200, body
    assert body["ok"] is True
    return body["result"]


def error(response: requests.Response) -> tuple[int, str]:
    body = response.json()
    assert body["ok"] is False
    assert body["error_code"] == response.status_code
    return response.status_code, body["description"]


def send(api: Any, text: str = "Draft reply", **params: Any) -> dict:
    return ok(api("sendMessage", **{"chat_id": OWNER, "text": text, **params}))


# --- routing and auth ----------------------------------------------------------------------


def test_get_me_over_get_and_post_with_any_method_case(api, app):
    me = ok(requests.get(f"{api.base}/getMe", timeout=5))
    assert me["is_bot"] is True
    assert me["id"] == 123456
    assert me["username"] == "replyguy_sandbox_bot"
    assert ok(api("getme")) == me


def test_wrong_token_unknown_method_and_malformed_token(api, app):
    wrong = requests.post(f"{api.url}/bot123456:nope/getMe", timeout=5)
    assert wrong.status_code == 401
    assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    unknown = api("sendTelepathy")
    assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    assert error(requests.post(f"{api.url}/botgarbage/getMe", timeout=5)) == (404, "Not Found")


# --- sendMessage ---------------------------------------------------------------------------


def test_send_message_returns_a_real_message(api, app, clock):
    message = send(api, "Draft reply", reply_markup=KEYBOARD)
    assert message["message_id"] == 1
    assert message["date"] == int(clock.now)
    assert message["chat"] == {
        "id": OWNER,
        "first_name": "Owner",
        "type": "private",
        "username": "owner",
    }
    assert message["from"]["is_bot"] is True
    assert message["text"] == "Draft reply"
    assert message["reply_markup"] == KEYBOARD
    assert send(api)["message_id"] == 2
    assert [m["text"] for m in app.bot_messages()] == ["Draft reply", "Draft reply"]


def test_json_form_and_multipart_bodies_are_alike(api, app):
    as_json = send(api, "same", reply_markup=KEYBOARD)
    form = {"chat_id": str(OWNER), "text": "same", "reply_markup": json.dumps(KEYBOARD)}
    as_form = ok(requests.post(f"{api.base}/sendMessage", data=form, timeout=5))
    multipart = {name: (None, value) for name, value in form.items()}
    as_multipart = ok(requests.post(f"{api.base}/sendMessage", files=multipart, timeout=5))
    as_query = ok(requests.get(f"{api.base}/sendMessage", params=form, timeout=5))
    for other in (as_form, as_multipart, as_query):
        assert {**other, "message_id": 0} == {**as_json, "message_id": 0}


@pytest.mark.parametrize(
    ("params", "description"),
    [
        ({"text": ""}, "Bad Request: message text is empty"),
        ({"text": "  \n "}, "Bad Request: message text is empty"),
        ({"text": "x" * 4097}, "Bad Request: message is too long"),
        ({"text": "hi", "chat_id": 999}, "Bad Request: chat not found"),
        ({"text": "hi", "chat_id": None}, "Bad Request: chat_id is empty"),
        ({"text": "hi", "reply_to_message_id": 77}, "Bad Request: message to be replied not found"),
        ({"text": "hi", "parse_mode": "HTML5"}, "Bad Request: unsupported parse_mode"),
    ],
)
def test_send_message_refusals(api, params, description):
    params = {"chat_id": OWNER, **params}
    if params["chat_id"] is None:
        del params["chat_id"]
    assert error(api("sendMessage", **params)) == (400, description)


def test_text_limit_is_4096_utf16_units(api):
    assert send(api, "x" * 4096)["text"] == "x" * 4096
    assert error(api("sendMessage", chat_id=OWNER, text="😀" * 2049)) == (
        400,
        "Bad Request: message is too long",
    )


@pytest.mark.parametrize(
    ("data", "accepted"),
    [("a" * 64, True), ("é" * 32, True), ("a" * 65, False), ("a" * 63 + "é", False), ("", False)],
)
def test_callback_data_is_limited_to_64_utf8_bytes(api, data, accepted):
    markup = {"inline_keyboard": [[{"text": "Go", "callback_data": data}]]}
    response = api("sendMessage", chat_id=OWNER, text="hi", reply_markup=markup)
    if accepted:
        assert ok(response)["reply_markup"] == markup
    else:
        assert error(response) == (400, "Bad Request: BUTTON_DATA_INVALID")


def test_keyboard_errors(api):
    text_only = {"inline_keyboard": [[{"text": "Just text"}]]}
    assert error(api("sendMessage", chat_id=OWNER, text="hi", reply_markup=text_only)) == (
        400,
        "Bad Request: can't parse inline keyboard button: "
        "Text buttons are unallowed in the inline keyboard",
    )
    response = requests.post(
        f"{api.base}/sendMessage",
        data={"chat_id": OWNER, "text": "hi", "reply_markup": "{not json"},
        timeout=5,
    )
    assert error(response) == (400, "Bad Request: can't parse reply keyboard markup JSON object")


def test_replies_nest_the_replied_message(api, app):
    first = send(api, "original")
    by_id = send(api, "reply", reply_to_message_id=first["message_id"])
    by_params = send(api, "reply 2", reply_parameters={"message_id": first["message_id"]})
    assert by_id["reply_to_message"]["text"] == "original"
    assert by_params["reply_to_message"]["message_id"] == first["message_id"]
    lenient = send(
        api, "x", reply_parameters={"message_id": 99, "allow_sending_without_reply": True}
    )
    assert "reply_to_message" not in lenient


def test_link_preview_options_are_echoed(api):
    assert send(api, "https://x.com", disable_web_page_preview=True)["link_preview_options"] == {
        "is_disabled": True
    }
    options = {"is_disabled": True}
    assert (
        send(api, "https://x.com", link_preview_options=options)["link_preview_options"] == options
    )


def test_markup_is_parsed_like_telegram(api):
    assert send(api, "<b>bold</b> &amp; <i>it</i>", parse_mode="HTML")["text"] == "bold & it"
    assert error(api("sendMessage", chat_id=OWNER, text="<blink>x</blink>", parse_mode="HTML")) == (
        400,
        'Bad Request: can\'t parse entities: Unsupported start tag "blink" at byte offset 0',
    )
    status, description = error(
        api("sendMessage", chat_id=OWNER, text="Great point.", parse_mode="MarkdownV2")
    )
    assert (status, description) == (
        400,
        "Bad Request: can't parse entities: Character '.' is reserved and must be escaped "
        "with the preceding '\\'",
    )
    assert send(api, r"Great point\.", parse_mode="MarkdownV2")["text"] == "Great point."


def test_per_chat_flood_limit_uses_the_clock(api, app, clock):
    app.per_chat_interval = 1.0
    send(api, "one")
    response = api("sendMessage", chat_id=OWNER, text="two")
    assert response.status_code == 429
    assert response.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    }
    clock.advance(1)
    send(api, "two")


def test_injected_429_carries_retry_after(api, app):
    app.faults.add("sendMessage", "error", status=429, retry_after=17, times=1)
    response = api("sendMessage", chat_id=OWNER, text="hi")
    assert response.json()["parameters"] == {"retry_after": 17}
    assert error(response) == (429, "Too Many Requests: retry after 17")
    assert app.bot_messages() == []
    app.faults.add("getMe", "error", status=502, times=1)
    assert error(api("getMe")) == (502, "Bad Gateway")


# --- editing -------------------------------------------------------------------------------


def test_edit_text_keeps_history_and_drops_an_omitted_keyboard(api, app, clock):
    message = send(api, "Draft", reply_markup=KEYBOARD)
    clock.advance(30)
    edited = ok(
        api("editMessageText", chat_id=OWNER, message_id=message["message_id"], text="Posted")
    )
    assert edited["text"] == "Posted"
    assert edited["edit_date"] == int(clock.now)
    assert "reply_markup" not in edited
    assert [old["text"] for old in app.history(message["message_id"])] == ["Draft"]
    assert app.message(message["message_id"]) == edited


def test_identical_edit_is_not_modified(api):
    message = send(api, "Draft", reply_markup=KEYBOARD)
    same = {"chat_id": OWNER, "message_id": message["message_id"], "reply_markup": KEYBOARD}
    assert error(api("editMessageText", text="Draft ", **same)) == (400, NOT_MODIFIED)
    assert error(api("editMessageReplyMarkup", **same)) == (400, NOT_MODIFIED)
    assert NOT_MODIFIED == (
        "Bad Request: message is not modified: specified new message content and reply "
        "markup are exactly the same as a current content and reply markup of the message"
    )
    # Same text without the keyboard is a change: the keyboard goes.
    ok(api("editMessageText", chat_id=OWNER, message_id=message["message_id"], text="Draft"))


def test_edit_reply_markup_only(api, app):
    message = send(api, "Draft", reply_markup=KEYBOARD)
    result = ok(api("editMessageReplyMarkup", chat_id=OWNER, message_id=message["message_id"]))
    assert result["text"] == "Draft"
    assert "reply_markup" not in result


def test_edit_refusals(api, app):
    assert error(api("editMessageText", chat_id=OWNER, message_id=42, text="x")) == (
        400,
        "Bad Request: message to edit not found",
    )
    assert error(api("editMessageText", chat_id=OWNER, text="x")) == (
        400,
        "Bad Request: message identifier is not specified",
    )
    app.send_user_message("hello bot")
    user_message_id = app.pending_updates[-1]["message"]["message_id"]
    assert error(api("editMessageText", chat_id=OWNER, message_id=user_message_id, text="x")) == (
        400,
        "Bad Request: message can't be edited",
    )


# --- callback queries ----------------------------------------------------------------------


def test_answer_callback_query_once_within_the_window(api, app, clock):
    message = send(api, "Draft", reply_markup=KEYBOARD)
    query_id = app.press_button(message["message_id"], "approve:1")
    clock.advance(14 * 60)
    assert ok(api("answerCallbackQuery", callback_query_id=query_id, text="Approved")) is True
    assert app.callback_answers[0]["text"] == "Approved"
    assert app.callback_answers[0]["show_alert"] is False
    assert error(api("answerCallbackQuery", callback_query_id=query_id)) == (400, QUERY_TOO_OLD)


def test_answer_after_fifteen_minutes_or_unknown_is_too_old(api, app, clock):
    message = send(api, "Draft", reply_markup=KEYBOARD)
    query_id = app.press_button(message["message_id"], "approve:1")
    clock.advance(15 * 60 + 1)
    assert error(api("answerCallbackQuery", callback_query_id=query_id)) == (400, QUERY_TOO_OLD)
    assert error(api("answerCallbackQuery", callback_query_id="123")) == (
        400,
        "Bad Request: query is too old and response timeout expired or query ID is invalid",
    )
    assert app.callback_answers == []


# --- updates -------------------------------------------------------------------------------


def test_updates_carry_presses_and_messages_until_confirmed(api, app):
    message = send(api, "Draft", reply_markup=KEYBOARD)
    query_id = app.press_button(message["message_id"], "approve:1")
    update_id = app.send_user_message("edit: better text", reply_to_message_id=1)
    updates = ok(api("getUpdates"))
    press, text = updates
    assert press["callback_query"]["id"] == query_id
    assert press["callback_query"]["data"] == "approve:1"
    assert press["callback_query"]["from"]["id"] == OWNER
    assert press["callback_query"]["message"]["message_id"] == message["message_id"]
    assert press["callback_query"]["message"]["reply_markup"] == KEYBOARD
    assert text["update_id"] == update_id == press["update_id"] + 1
    assert text["message"]["reply_to_message"]["text"] == "Draft"
    assert text["message"]["from"]["is_bot"] is False
    assert ok(api("getUpdates")) == updates, "unconfirmed updates come again"
    assert ok(api("getUpdates", offset=update_id)) == [text]
    assert ok(api("getUpdates", offset=update_id + 1)) == []
    assert ok(api("getWebhookInfo"))["pending_update_count"] == 0


def test_negative_offset_keeps_the_last_updates(api, app):
    ids = [app.send_user_message(f"m{i}") for i in range(3)]
    assert [u["update_id"] for u in ok(api("getUpdates", offset=-1))] == ids[-1:]
    assert [u["update_id"] for u in ok(api("getUpdates"))] == ids[-1:]


def test_long_poll_returns_when_an_update_arrives(api, app):
    message = send(api, "Draft", reply_markup=KEYBOARD)
    result: list[Any] = []

    def poll() -> None:
        # Far below the poll's own timeout: only an early return can meet it.
        result.append(ok(api("getUpdates", _timeout=10, timeout=50)))

    poller = threading.Thread(target=poll)
    poller.start()
    wait_for(lambda: requests_to(app, "getUpdates") > 0)
    app.press_button(message["message_id"], "approve:1")
    poller.join(10)
    assert not poller.is_alive()
    assert [u["callback_query"]["data"] for u in result[0]] == ["approve:1"]


def test_long_poll_times_out_empty(api):
    assert ok(api("getUpdates", timeout=1)) == []


def test_a_second_poll_terminates_the_first(api, app):
    answers: list[requests.Response] = []
    first = threading.Thread(target=lambda: answers.append(api("getUpdates", timeout=5)))
    first.start()
    wait_for(lambda: requests_to(app, "getUpdates") == 1)
    assert ok(api("getUpdates", timeout=0)) == []
    first.join(10)
    assert error(answers[0]) == (
        409,
        "Conflict: terminated by other getUpdates request; "
        "make sure that only one bot instance is running",
    )


# --- webhook -------------------------------------------------------------------------------


def test_webhook_delivers_updates_with_the_secret(api, app, receiver):
    result = api("setWebhook", url=receiver.url, secret_token="s3cret-Token_1").json()
    assert result == {"ok": True, "result": True, "description": "Webhook was set"}
    info = ok(api("getWebhookInfo"))
    assert info["url"] == receiver.url
    assert info["has_custom_certificate"] is False
    message = send(api, "Draft", reply_markup=KEYBOARD)
    query_id = app.press_button(message["message_id"], "approve:1")
    assert receiver.arrived.wait(5)
    headers, update = receiver.calls[0]
    assert headers["X-Telegram-Bot-Api-Secret-Token"] == "s3cret-Token_1"
    assert headers["Content-Type"] == "application/json"
    assert update["callback_query"]["id"] == query_id
    wait_for(lambda: ok(api("getWebhookInfo"))["pending_update_count"] == 0)
    assert [d["status"] for d in app.delivered] == [200]


def test_get_updates_conflicts_with_a_webhook(api, receiver):
    ok(api("setWebhook", url=receiver.url))
    assert error(api("getUpdates")) == (409, WEBHOOK_CONFLICT)
    assert WEBHOOK_CONFLICT == (
        "Conflict: can't use getUpdates method while webhook is active; "
        "use deleteWebhook to delete the webhook first"
    )
    assert api("deleteWebhook").json()["description"] == "Webhook was deleted"
    assert api("deleteWebhook").json()["description"] == "Webhook is already deleted"
    assert ok(api("getUpdates")) == []


def test_failed_deliveries_are_retried_then_given_up(api, app):
    with Receiver(status=500) as receiver:
        app.webhook_max_attempts = 3
        ok(api("setWebhook", url=receiver.url))
        app.send_user_message("hello")
        wait_for(lambda: len(app.delivered) == 3)
        info = ok(api("getWebhookInfo"))
        assert (
            info["last_error_message"]
            == "Wrong response from the webhook: 500 Internal Server Error"
        )
        assert info["pending_update_count"] == 0
        assert [d["status"] for d in app.delivered] == [500, 500, 500]
        assert len(receiver.calls) == 3


def test_refused_webhook_keeps_the_update_pending_while_retrying(api, app):
    app.webhook_max_attempts = 1000
    app.webhook_retry_delay = 0.01
    ok(api("setWebhook", url="http://127.0.0.1:9/hook"))
    app.send_user_message("hello")
    wait_for(lambda: len(app.delivered) >= 2)
    info = ok(api("getWebhookInfo"))
    assert info["pending_update_count"] == 1
    assert info["last_error_message"] == "Connection refused"
    # Dropping pending updates while removing the webhook leaves nothing for getUpdates.
    ok(api("deleteWebhook", drop_pending_updates=True))
    assert ok(api("getUpdates")) == []


def test_bad_webhook_settings_are_refused(api, app):
    assert error(api("setWebhook", url="ftp://example.com")) == (
        400,
        "Bad Request: bad webhook: An HTTPS URL must be provided for webhook",
    )
    assert error(api("setWebhook", url="https://example.com", secret_token="no spaces")) == (
        400,
        "Bad Request: secret token contains unallowed characters",
    )


# --- control API ---------------------------------------------------------------------------


def test_state_and_reset_over_http(api, app):
    message = send(api, "Draft", reply_markup=KEYBOARD)
    app.press_button(message["message_id"], "approve:1")
    state = requests.get(f"{api.url}/_sandbox/state", timeout=5).json()
    assert state["messages"][str(OWNER)][0]["text"] == "Draft"
    assert state["pending_updates"][0]["callback_query"]["data"] == "approve:1"
    requests.post(f"{api.url}/_sandbox/seed", json={"users": [{"id": 2002}]}, timeout=5)
    assert send(api, "to someone else", chat_id=2002)["chat"]["id"] == 2002
    requests.post(f"{api.url}/_sandbox/reset", timeout=5)
    assert app.bot_messages() == []
    assert ok(api("getUpdates")) == []
