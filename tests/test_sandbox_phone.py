"""The sandbox phone: the owner's Telegram chat at ``/phone``, used in a real headless Chromium.

The bot side speaks the real Bot API over HTTP; the owner side is a browser tab. Each
browser test checks what the owner sees and which update the bot would receive; the last
two call the phone's endpoints directly.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandbox.http import Server
from sandbox.telegram_api import TelegramApp
from tests.helpers import wait_for

OWNER = TelegramApp.OWNER_ID
DRAFT_KEYBOARD = {
    "inline_keyboard": [
        [
            {"text": "Approve", "callback_data": "approve:7"},
            {"text": "Reject", "callback_data": "reject:7"},
        ],
        [{"text": "Open on X", "url": "https://x.com/alice/status/42"}],
    ]
}

BotApi = Callable[..., dict[str, Any]]


@pytest.fixture
def app() -> Iterator[TelegramApp]:
    app = TelegramApp()
    yield app
    app.close()


@pytest.fixture
def bot(server: Server, app: TelegramApp) -> BotApi:
    """Calls a Bot API method as the bot does, over HTTP; returns its ``result``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(method: str, **params: Any) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
            f"{server.url}/bot{app.token}/{method}",
            data=json.dumps(params).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with opener.open(request, timeout=5) as response:
            body = json.load(response)
        assert body["ok"] is True, body
        return body["result"]

    return call


@pytest.fixture
def phone(page: Any, server: Server) -> Any:
    """The phone page, open and showing its first poll."""
    page.goto(f"{server.url}/phone")
    page.locator("#messages > *").first.wait_for()
    return page


def updates(app: TelegramApp, kind: str) -> list[dict[str, Any]]:
    return [update[kind] for update in app.pending_updates if kind in update]


def bubble(phone: Any, message_id: int) -> Any:
    return phone.locator(f'.msg[data-message-id="{message_id}"]')


@pytest.mark.browser
def test_a_draft_shows_its_text_and_buttons_on_the_bot_side(bot, server, page):
    draft = bot("sendMessage", chat_id=OWNER, text="Draft for @alice", reply_markup=DRAFT_KEYBOARD)
    page.goto(f"{server.url}/phone")

    message = bubble(page, draft["message_id"])
    message.get_by_text("Draft for @alice").wait_for()
    assert "bot" in message.get_attribute("class")
    assert message.get_by_role("button", name="Approve").is_visible()
    assert message.get_by_role("button", name="Reject").is_visible()
    link = message.get_by_role("link", name="Open on X")
    assert link.is_visible()
    assert link.get_attribute("href") == "https://x.com/alice/status/42"
    assert link.get_attribute("target") == "_blank"


@pytest.mark.browser
def test_tapping_a_callback_button_sends_the_bot_a_callback_query(bot, app, phone):
    draft = bot("sendMessage", chat_id=OWNER, text="Draft for @alice", reply_markup=DRAFT_KEYBOARD)
    bubble(phone, draft["message_id"]).get_by_role("button", name="Approve").click()

    wait_for(lambda: updates(app, "callback_query"), message="no callback query arrived")
    [query] = updates(app, "callback_query")
    assert query["data"] == "approve:7"
    assert query["message"]["message_id"] == draft["message_id"]
    assert query["from"]["id"] == OWNER

    bot("answerCallbackQuery", callback_query_id=query["id"], text="Approved, publishing soon")
    toast = phone.locator("#toast")
    toast.get_by_text("Approved, publishing soon").wait_for()


@pytest.mark.browser
def test_a_typed_command_sent_with_enter_reaches_the_bot_as_a_message(app, phone):
    phone.get_by_label("Message").fill("/status")
    phone.get_by_label("Message").press("Enter")

    wait_for(lambda: updates(app, "message"), message="no message arrived")
    [message] = updates(app, "message")
    assert message["text"] == "/status"
    assert message["entities"] == [{"offset": 0, "length": 7, "type": "bot_command"}]
    assert "reply_to_message" not in message
    shown = bubble(phone, message["message_id"])
    shown.get_by_text("/status").wait_for()
    assert "owner" in shown.get_attribute("class")
    phone.wait_for_function("document.getElementById('text').value === ''")


@pytest.mark.browser
def test_the_answer_to_a_force_reply_prompt_is_sent_as_a_reply_to_it(bot, app, phone):
    prompt = bot(
        "sendMessage",
        chat_id=OWNER,
        text="Send the new text for the reply to @alice",
        reply_markup={"force_reply": True, "input_field_placeholder": "New reply text"},
    )
    phone.locator("#replying").get_by_text("Send the new text").wait_for()
    assert phone.get_by_label("Message").get_attribute("placeholder") == "New reply text"

    phone.get_by_label("Message").fill("Thanks, that is exactly it")
    phone.get_by_role("button", name="Send").click()

    wait_for(lambda: updates(app, "message"), message="no message arrived")
    [message] = updates(app, "message")
    assert message["text"] == "Thanks, that is exactly it"
    assert message["reply_to_message"]["message_id"] == prompt["message_id"]
    phone.locator("#replying").wait_for(state="hidden")


@pytest.mark.browser
def test_reply_on_any_message_makes_the_next_text_a_reply_to_it(bot, app, phone):
    first = bot("sendMessage", chat_id=OWNER, text="First draft")
    bot("sendMessage", chat_id=OWNER, text="Second draft")
    bubble(phone, first["message_id"] + 1).get_by_text("Second draft").wait_for()

    bubble(phone, first["message_id"]).get_by_role("button", name="reply").click()
    phone.get_by_label("Message").fill("About the first one")
    phone.get_by_label("Message").press("Enter")

    wait_for(lambda: updates(app, "message"), message="no message arrived")
    [message] = updates(app, "message")
    assert message["reply_to_message"]["message_id"] == first["message_id"]
    bubble(phone, message["message_id"]).locator(".quote").get_by_text("First draft").wait_for()


@pytest.mark.browser
def test_an_edited_message_shows_its_new_text_and_keyboard_after_the_next_poll(bot, phone):
    draft = bot("sendMessage", chat_id=OWNER, text="Draft v1", reply_markup=DRAFT_KEYBOARD)
    message = bubble(phone, draft["message_id"])
    message.get_by_text("Draft v1").wait_for()

    bot(
        "editMessageText",
        chat_id=OWNER,
        message_id=draft["message_id"],
        text="Approved: publishing in 10 minutes",
    )
    message.get_by_text("Approved: publishing in 10 minutes").wait_for()
    assert message.get_by_text("Draft v1").count() == 0
    assert message.locator(".edited").is_visible()
    assert message.get_by_role("button", name="Approve").count() == 0


@pytest.mark.browser
def test_html_in_a_message_is_shown_as_text_never_run(bot, phone):
    attack = "<img src=x onerror=\"document.title='owned'\"> <b>bold?</b>"
    plain = bot("sendMessage", chat_id=OWNER, text=attack)
    # With parse_mode HTML Telegram keeps the unescaped text: the page must not parse it.
    parsed = bot(
        "sendMessage",
        chat_id=OWNER,
        text="&lt;script&gt;document.title='owned'&lt;/script&gt; <b>really bold</b>",
        parse_mode="HTML",
    )

    bubble(phone, plain["message_id"]).get_by_text(attack).wait_for()
    shown = bubble(phone, parsed["message_id"]).locator(".text")
    shown.get_by_text("<script>document.title='owned'</script> really bold").wait_for()
    assert phone.locator("#messages img, #messages b, #messages script").count() == 0
    assert phone.title() != "owned"


# --- without a browser: the endpoints themselves ------------------------------------------


def get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def post(url: str, body: object) -> tuple[int, dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def test_opening_the_phone_uses_up_no_fault_meant_for_the_bot(app, server):
    app.faults.add(endpoint="*", kind="error", status=502, times=1)

    status, page = get(f"{server.url}/phone")
    assert status == 200
    assert b"<title>Sandbox phone" in page
    status, _ = get(f"{server.url}/bot{app.token}/getMe")
    assert status == 502  # the fault was still there for the bot


def test_the_phone_endpoints_refuse_bad_bodies_and_unknown_messages(app, server):
    phone = f"{server.url}/_sandbox/phone"
    assert post(f"{phone}/send", {"text": "   "})[0] == 400
    assert post(f"{phone}/send", {"text": "hi", "reply_to_message_id": 99})[0] == 404
    assert post(f"{phone}/press", {"message_id": 99, "data": "approve:1"})[0] == 404
    assert post(f"{phone}/press", {"message_id": 1})[0] == 400
    assert post(f"{phone}/wave", {})[0] == 404
    assert app.pending_updates == []

    status, sent = post(f"{phone}/send", {"text": "  /status  "})
    assert status == 200
    [update] = app.pending_updates
    assert update["update_id"] == sent["update_id"]
    assert update["message"]["text"] == "/status"
