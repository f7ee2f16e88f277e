"""The Telegram client, through python-telegram-bot over real HTTP, against the stand-in."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from bot.clients.errors import ClientError, ErrorKind
from bot.clients.telegram import TelegramClient
from resilience import CircuitBreaker, CircuitOpenError
from sandbox.http import Server
from sandbox.telegram_api import TelegramApp
from tests.helpers import breaker_from_settings, free_port, requests_to, wait_for

OWNER = TelegramApp.OWNER_ID
BUTTONS = [("Approve", "approve:1"), ("Reject", "reject:1")]
# PTB 22 itself warns, while building RetryAfter, that retry_after will become a timedelta.
RETRY_AFTER_TRANSITION = "ignore:.*retry_after.*:DeprecationWarning"


@pytest.fixture
def app(clock) -> Iterator[TelegramApp]:
    app = TelegramApp(clock=clock)
    yield app
    app.close()


@pytest.fixture
def breaker() -> CircuitBreaker:
    # As settings configure telegram, but opening after three failures.
    return breaker_from_settings("telegram", failure_threshold=3)


def make_client(server: Server, breaker: CircuitBreaker, **options: Any) -> TelegramClient:
    settings = {"token": TelegramApp.DEFAULT_TOKEN, "chat_id": str(OWNER), "timeout": 2.0}
    return TelegramClient(base_url=server.url, breaker=breaker, **{**settings, **options})


@pytest.fixture
def client(server, breaker) -> TelegramClient:
    return make_client(server, breaker)


# --- the approval round trip ---------------------------------------------------------------


def test_approval_press_and_answer_round_trip(client, app):
    message_id = client.send_approval(text="Reply draft", buttons=BUTTONS)
    shown = app.message(message_id)
    assert shown["text"] == "Reply draft"
    assert shown["reply_markup"]["inline_keyboard"] == [
        [{"text": "Approve", "callback_data": "approve:1"}],
        [{"text": "Reject", "callback_data": "reject:1"}],
    ]
    query_id = app.press_button(message_id, "approve:1")
    (update,) = client.get_updates(offset=None, timeout=0)
    assert update["callback_query"]["id"] == query_id
    assert update["callback_query"]["data"] == "approve:1"
    assert update["callback_query"]["from"]["id"] == OWNER
    assert update["callback_query"]["message"]["message_id"] == message_id
    client.answer_callback(query_id, "Approved")
    assert app.callback_answers[0]["text"] == "Approved"
    assert client.get_updates(offset=update["update_id"] + 1, timeout=0) == []


def test_long_poll_returns_as_soon_as_the_press_arrives(client, app):
    message_id = client.send_approval(text="Reply draft", buttons=BUTTONS)
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(client.get_updates, offset=None, timeout=30)
        wait_for(
            lambda: requests_to(app, "getUpdates") > 0, message="the poll never reached the sandbox"
        )
        app.press_button(message_id, "reject:1")
        # Far below the poll's 30 s: only an early return meets this deadline.
        updates = polling.result(timeout=10)
    assert [u["callback_query"]["data"] for u in updates] == ["reject:1"]


def test_long_poll_with_nothing_to_say_returns_empty(client):
    assert client.get_updates(offset=None, timeout=1) == []


def test_owner_text_reply_arrives_as_a_message_update(client, app):
    message_id = client.send_approval(text="Reply draft", buttons=BUTTONS)
    app.send_user_message("Better wording", reply_to_message_id=message_id)
    (update,) = client.get_updates(offset=None, timeout=0)
    assert update["message"]["text"] == "Better wording"
    assert update["message"]["reply_to_message"]["message_id"] == message_id


def test_reply_to_threads_the_message(client, app):
    first = client.send_alert("Context")
    second = client.send_approval(text="Draft", buttons=BUTTONS, reply_to=first)
    assert app.message(second)["reply_to_message"]["message_id"] == first
    # A reply to a message that is gone still goes out.
    third = client.send_approval(text="Draft", buttons=BUTTONS, reply_to=999)
    assert "reply_to_message" not in app.message(third)


def test_async_variants_work_on_the_callers_loop(client, app):
    async def flow() -> list[dict]:
        message_id = await client.asend_approval(text="Async draft", buttons=BUTTONS)
        query_id = app.press_button(message_id, "approve:1")
        await client.aanswer_callback(query_id)
        await client.aedit_message(message_id, text="Approved")
        await client.asend_alert("All good")
        return await client.aget_updates(offset=None, timeout=0)

    updates = asyncio.run(flow())
    assert updates[0]["callback_query"]["data"] == "approve:1"
    assert [m["text"] for m in app.bot_messages()] == ["Approved", "All good"]


def test_sync_methods_refuse_to_block_a_running_loop(client, app):
    async def misuse() -> None:
        client.send_alert("from inside a loop")

    with pytest.raises(RuntimeError, match="a-prefixed"):
        asyncio.run(misuse())
    assert app.requests == []


# --- editing and answering -----------------------------------------------------------------


def test_edit_replaces_text_and_keyboard(client, app):
    message_id = client.send_approval(text="Draft", buttons=BUTTONS)
    client.edit_message(message_id, text="Draft v2", buttons=[("Approve", "approve:2")])
    assert app.message(message_id)["reply_markup"]["inline_keyboard"] == [
        [{"text": "Approve", "callback_data": "approve:2"}]
    ]
    client.edit_message(message_id, text="Posted")
    assert app.message(message_id)["text"] == "Posted"
    assert "reply_markup" not in app.message(message_id)
    assert [old["text"] for old in app.history(message_id)] == ["Draft", "Draft v2"]


def test_not_modified_is_not_an_error(client, app):
    message_id = client.send_approval(text="Draft", buttons=BUTTONS)
    client.edit_message(message_id, text="Posted")
    client.edit_message(message_id, text="Posted")
    assert [old["text"] for old in app.history(message_id)] == ["Draft"], "one real edit"


def test_edit_of_a_missing_message_is_permanent(client, breaker):
    with pytest.raises(ClientError) as caught:
        client.edit_message(4242, text="x")
    assert caught.value.kind is ErrorKind.PERMANENT
    assert caught.value.status == 400
    assert "message to edit not found" in str(caught.value).lower()
    assert breaker.get_status()["failures"] == 0


def test_query_too_old_is_not_an_error(client, app, clock):
    message_id = client.send_approval(text="Draft", buttons=BUTTONS)
    query_id = app.press_button(message_id, "approve:1")
    clock.advance(16 * 60)
    client.answer_callback(query_id, "Approved")
    client.answer_callback("no-such-query")
    assert app.callback_answers == []


# --- callback_data limit -------------------------------------------------------------------


@pytest.mark.parametrize("data", ["a" * 63, "a" * 64, "é" * 32])
def test_callback_data_up_to_64_bytes_is_sent(client, app, data):
    message_id = client.send_approval(text="Draft", buttons=[("Go", data)])
    assert app.message(message_id)["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == data


@pytest.mark.parametrize("data", ["a" * 65, "a" * 63 + "é", "é" * 33, ""])
def test_callback_data_over_64_bytes_is_refused_before_sending(client, app, breaker, data):
    with pytest.raises(ClientError) as caught:
        client.send_approval(text="Draft", buttons=[("Approve", "ok"), ("Go", data)])
    assert caught.value.kind is ErrorKind.PERMANENT
    assert requests_to(app, "sendMessage") == 0
    assert app.bot_messages() == []
    with pytest.raises(ClientError):
        client.edit_message(1, text="x", buttons=[("Go", data)])
    assert app.requests == []


# --- failures and their kinds --------------------------------------------------------------


@pytest.mark.filterwarnings(RETRY_AFTER_TRANSITION)
def test_429_is_transient_until_retry_after_and_opens_the_breaker(client, app, breaker):
    app.faults.add("sendMessage", "error", status=429, retry_after=30, times=1)
    before = time.time()
    with pytest.raises(ClientError) as caught:
        client.send_alert("Breaker opened")
    error = caught.value
    assert (error.kind, error.status) == (ErrorKind.TRANSIENT, 429)
    assert before + 30 <= error.retry_at <= time.time() + 30
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        client.send_alert("again")
    assert requests_to(app, "sendMessage") == 1


@pytest.mark.filterwarnings(RETRY_AFTER_TRANSITION)
def test_real_flood_limit_maps_the_same_way(client, app, clock):
    app.per_chat_interval = 1.0
    client.send_alert("one")
    with pytest.raises(ClientError) as caught:
        client.send_alert("two")
    assert (caught.value.kind, caught.value.status) == (ErrorKind.TRANSIENT, 429)
    assert caught.value.retry_at is not None


def test_hang_on_send_is_ambiguous(server, app, breaker):
    client = make_client(server, breaker, timeout=0.5)
    app.faults.add("sendMessage", "hang", latency=5, times=1)
    with pytest.raises(ClientError) as caught:
        client.send_approval(text="Draft", buttons=BUTTONS)
    assert caught.value.kind is ErrorKind.AMBIGUOUS
    # No answer at all: whatever became of the message, Telegram is unwell.
    assert breaker.get_status()["failures"] == 1


def test_answer_lost_after_the_send_is_ambiguous_and_the_message_exists(client, app):
    app.faults.add("sendMessage", "cut_after", times=1)
    with pytest.raises(ClientError) as caught:
        client.send_approval(text="Draft", buttons=BUTTONS)
    assert caught.value.kind is ErrorKind.AMBIGUOUS
    assert [m["text"] for m in app.bot_messages()] == ["Draft"], "the owner did get it"


def test_hang_on_edit_answer_or_poll_is_transient(server, app, breaker):
    client = make_client(server, breaker, timeout=0.5)
    message_id = client.send_approval(text="Draft", buttons=BUTTONS)
    query_id = app.press_button(message_id, "approve:1")
    for endpoint in ("editMessageText", "answerCallbackQuery", "getUpdates"):
        app.faults.add(endpoint, "hang", latency=5, times=1)
    calls = [
        lambda: client.edit_message(message_id, text="x"),
        lambda: client.answer_callback(query_id),
        lambda: client.get_updates(offset=None, timeout=0),
    ]
    for call in calls:
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.kind is ErrorKind.TRANSIENT
    assert breaker.state == "open"


def test_refused_connection_is_transient_even_for_a_send(breaker):
    client = TelegramClient(
        token=TelegramApp.DEFAULT_TOKEN,
        chat_id=OWNER,
        base_url=f"http://127.0.0.1:{free_port()}",
        timeout=1.0,
        breaker=breaker,
    )
    with pytest.raises(ClientError) as caught:
        client.send_alert("hello")
    assert caught.value.kind is ErrorKind.TRANSIENT, "nothing was sent"
    assert TelegramApp.DEFAULT_TOKEN not in str(caught.value)


@pytest.mark.parametrize("kind", ["html", "error"])
def test_gateway_errors_are_transient(client, app, kind):
    app.faults.add("sendMessage", kind, status=502, times=1)
    with pytest.raises(ClientError) as caught:
        client.send_alert("hello")
    assert caught.value.kind is ErrorKind.TRANSIENT


def test_truncated_answer_is_ambiguous_for_a_send_and_transient_otherwise(client, app):
    message_id = client.send_alert("hello")
    app.faults.add("sendMessage", "truncated", times=1)
    app.faults.add("editMessageText", "truncated", times=1)
    with pytest.raises(ClientError) as send:
        client.send_alert("hello again")
    with pytest.raises(ClientError) as edit:
        client.edit_message(message_id, text="edited")
    assert send.value.kind is ErrorKind.AMBIGUOUS
    assert edit.value.kind is ErrorKind.TRANSIENT


def test_wrong_token_is_transient_and_never_echoed(server, breaker):
    client = make_client(server, breaker, token="123456:not-the-token")
    with pytest.raises(ClientError) as caught:
        client.send_alert("hello")
    assert (caught.value.kind, caught.value.status) == (ErrorKind.TRANSIENT, 401)
    assert "not-the-token" not in str(caught.value)
    assert "not-the-token" not in repr(client)


def test_bad_request_is_permanent_and_not_counted(client, breaker):
    for _ in range(4):
        with pytest.raises(ClientError) as caught:
            client.send_alert("   ")
        assert caught.value.kind is ErrorKind.PERMANENT
    assert breaker.state == "closed"


def test_unknown_chat_is_a_configuration_failure(server, breaker):
    client = make_client(server, breaker, chat_id="31337")
    with pytest.raises(ClientError) as caught:
        client.send_alert("hello")
    assert caught.value.kind is ErrorKind.TRANSIENT
    assert "chat not found" in str(caught.value).lower()


def test_long_alerts_are_cut_to_fit(client, app):
    message_id = client.send_alert("x" * 5000)
    text = app.message(message_id)["text"]
    assert len(text) == 4096
    assert text.endswith("…")


# --- webhook -------------------------------------------------------------------------------


def test_webhook_gets_presses_with_the_secret_and_excludes_polling(client, app, receiver):
    client.set_webhook(receiver.url, "webhook-secret_42")
    message_id = client.send_approval(text="Draft", buttons=BUTTONS)
    query_id = app.press_button(message_id, "approve:1")
    assert receiver.arrived.wait(5)
    headers, update = receiver.calls[0]
    assert headers["X-Telegram-Bot-Api-Secret-Token"] == "webhook-secret_42"
    assert update["callback_query"]["id"] == query_id

    with pytest.raises(ClientError) as caught:
        client.get_updates(offset=None, timeout=0)
    assert (caught.value.kind, caught.value.status) == (ErrorKind.PERMANENT, 409)
    assert caught.value.reason == "configuration"
    assert client.breaker.get_status()["failures"] == 0  # Telegram itself is fine

    client.delete_webhook()
    app.send_user_message("now by polling")
    (update,) = client.get_updates(offset=None, timeout=0)
    assert update["message"]["text"] == "now by polling"


# --- wire formats and settings -------------------------------------------------------------


def test_json_and_form_bodies_land_like_the_clients(client, app, server):
    url = f"{server.url}/bot{app.token}/sendMessage"
    markup = {"inline_keyboard": [[{"text": "Approve", "callback_data": "approve:1"}]]}
    by_client = app.message(client.send_approval(text="Same", buttons=[("Approve", "approve:1")]))
    by_json = requests.post(
        url, json={"chat_id": OWNER, "text": "Same", "reply_markup": markup}, timeout=5
    ).json()["result"]
    form = {"chat_id": str(OWNER), "text": "Same", "reply_markup": json.dumps(markup)}
    by_form = requests.post(url, data=form, timeout=5).json()["result"]
    for message in (by_json, by_form):
        assert message["reply_markup"] == by_client["reply_markup"]
        assert message["text"] == by_client["text"]


@pytest.mark.django_db
def test_from_settings_goes_through_the_shared_breaker(settings, server, app):
    settings.TELEGRAM_BOT_TOKEN = app.token
    settings.TELEGRAM_CHAT_ID = str(OWNER)
    settings.TELEGRAM_API_BASE_URL = server.url + "/"
    client = TelegramClient.from_settings()
    assert client.breaker.name == "telegram"
    assert app.message(client.send_alert("from settings"))["text"] == "from settings"
