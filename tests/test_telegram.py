"""The owner's Telegram, end to end: python-telegram-bot against the sandbox Bot API.

Each test acts as the owner on the sandbox's chat (``press_button``, ``send_user_message``)
and runs the poller once (``manage.py telegram_bot --once``: read updates, handle them,
one outbox pass), as the running service does every few seconds.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from bot.models import (
    ApprovalMessage,
    Decision,
    FailedTweet,
    OperatorAction,
    PipelineControl,
    QueuedTweet,
    Status,
    TargetAccount,
    TelegramUpdate,
)
from bot.selectors import publishing_paused
from bot.services.dead_letters import Stage, fail
from bot.telegram.buttons import Act, button, parse
from sandbox.x_api import OUR_USERNAME
from tests.helpers import (
    ROOT,
    approved,
    discovered,
    requests_to,
    run_pipeline,
    summon,
    until,
    worker_env,
)

pytestmark = pytest.mark.django_db

OWNER = 1001
STRANGER = 4242


def phone_pass() -> None:
    """What the poller does every few seconds: updates in, handled, then the outbox."""
    call_command("telegram_bot", "--once", stdout=io.StringIO())


def message_for(sandbox, post_id: str) -> dict[str, Any]:
    """The owner's message about ``post_id``, as the phone shows it now."""
    shown = ApprovalMessage.objects.get(queued_tweet=discovered(post_id))
    assert shown.message_id is not None, "the approval message was not sent"
    return sandbox.telegram.message(shown.message_id)


def keyboard(message: dict[str, Any]) -> list[tuple[str, str]]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return [(b["text"], b.get("callback_data") or b.get("url")) for row in rows for b in row]


def data_of(message: dict[str, Any], label: str) -> str:
    found = [data for text, data in keyboard(message) if label in text]
    assert found, f"no {label!r} button in {keyboard(message)}"
    return found[0]


def tap(sandbox, message: dict[str, Any], label_or_data: str, **who: int) -> str | None:
    """Press a button (by label, or raw data) and let the poller handle it; the toast."""
    data = label_or_data if parse(label_or_data) else data_of(message, label_or_data)
    query_id = sandbox.telegram.press_button(message["message_id"], data, **who)
    phone_pass()
    answers = [a for a in sandbox.telegram.callback_answers if a["callback_query_id"] == query_id]
    return answers[0]["text"] if answers else None


def drafted(pipeline, text: str = "how do you test retries?") -> str:
    """A summoned post with its draft sent to the owner's phone; the post's id."""
    post_id = summon(pipeline, text)
    run_pipeline()
    assert discovered(post_id).status == Status.PENDING
    return post_id


def bot_texts(sandbox) -> list[str]:
    return [m["text"] for m in sandbox.telegram.bot_messages()]


# --- approvals --------------------------------------------------------------------------------


def test_a_draft_arrives_as_one_message_with_the_post_and_every_decision(pipeline):
    post_id = drafted(pipeline, "what is your favourite retry library?")
    message = message_for(pipeline, post_id)
    tweet = discovered(post_id)
    assert "@alice" in message["text"]
    assert "what is your favourite retry library?" in message["text"]
    assert tweet.url in message["text"]
    assert tweet.draft in message["text"]
    assert "min ago" in message["text"]
    labels = [label for label, _ in keyboard(message)]
    assert labels == ["✅ Approve", "✏️ Edit", "🔄 Regenerate", "❌ Reject"]
    assert all(len(data.encode()) <= 64 for _, data in keyboard(message))
    assert len(pipeline.telegram.bot_messages()) == 1


def test_approve_on_the_phone_publishes_that_text_and_the_message_follows_it(pipeline):
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    toast = tap(pipeline, message, "Approve")
    tweet = discovered(post_id)
    assert tweet.status == Status.APPROVED
    assert toast.startswith("Approved: it goes out around")
    decision = Decision.objects.get(queued_tweet=tweet, action=Decision.Action.APPROVE)
    assert (decision.channel, decision.actor) == ("telegram", "telegram:owner")
    assert decision.reference == f"telegram message {message['message_id']}"
    assert decision.text_after == tweet.draft
    shown = pipeline.telegram.message(message["message_id"])
    assert "Approved by telegram:owner" in shown["text"]
    assert keyboard(shown) == []  # no second decision from this message

    run_pipeline()  # publishes, then the outbox shows the result
    tweet = discovered(post_id)
    assert tweet.status == Status.POSTED
    assert [r.text for r in pipeline.x.replies_to(post_id)] == [decision.text_after]
    shown = pipeline.telegram.message(message["message_id"])
    assert f"Posted: https://x.com/i/web/status/{tweet.reply_tweet_id}" in shown["text"]
    assert ApprovalMessage.objects.get(queued_tweet=tweet).settled


def test_a_second_press_changes_nothing(pipeline):
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    approve = data_of(message, "Approve")
    tap(pipeline, message, approve)
    second = tap(pipeline, message, approve)
    assert "no longer waiting for a decision" in second
    assert Decision.objects.filter(queued_tweet=discovered(post_id)).count() == 1
    reject = button(Act.REJECT, discovered(post_id).id, discovered(post_id).draft_version)
    tap(pipeline, message, reject)  # too late: approved replies are rejected in the admin
    assert discovered(post_id).status in (Status.APPROVED, Status.REJECTED)
    assert Decision.objects.filter(action=Decision.Action.APPROVE).count() == 1


def test_reject_on_the_phone(pipeline):
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    toast = tap(pipeline, message, "Reject")
    assert toast == "Rejected: this post will not be answered."
    assert discovered(post_id).status == Status.REJECTED
    shown = pipeline.telegram.message(message["message_id"])
    assert "❌ Rejected." in shown["text"]
    assert keyboard(shown) == []
    run_pipeline()
    assert pipeline.x.replies_to(post_id) == []


def test_edit_asks_for_the_text_checks_it_and_shows_it_for_approval_again(pipeline):
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    before = discovered(post_id)
    tap(pipeline, message, "Edit")
    prompt = pipeline.telegram.bot_messages()[-1]
    assert prompt["text"].startswith("✏️ Send the new reply to @alice")
    assert discovered(post_id).status == Status.PENDING  # nothing decided yet

    too_long = "x" * 281
    pipeline.telegram.send_user_message(too_long, reply_to_message_id=prompt["message_id"])
    phone_pass()
    refusal = pipeline.telegram.bot_messages()[-1]
    assert "cannot be posted" in refusal["text"]
    assert "280" in refusal["text"]
    assert discovered(post_id).draft == before.draft

    mine = "Mine: sleep-free retries with a fake clock."
    pipeline.telegram.send_user_message(mine, reply_to_message_id=refusal["message_id"])
    phone_pass()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.draft) == (Status.PENDING, mine)
    assert tweet.draft_version == before.draft_version + 1
    assert (
        Decision.objects.get(queued_tweet=tweet, action=Decision.Action.REVISE).text_after == mine
    )
    fresh = message_for(pipeline, post_id)
    assert fresh["message_id"] != message["message_id"]  # shown again at the bottom
    assert mine in fresh["text"]
    old = pipeline.telegram.message(message["message_id"])
    assert "Replaced" in old["text"]
    assert keyboard(old) == []

    tap(pipeline, fresh, "Approve")
    run_pipeline()
    assert [r.text for r in pipeline.x.replies_to(post_id)] == [mine]


def test_regenerate_replaces_the_draft_in_the_same_message_and_the_old_button_is_refused(
    pipeline,
):
    pipeline.openai.seed_state({"scripted_replies": ["First draft.", "Second, better draft."]})
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    stale_approve = data_of(message, "Approve")
    assert "First draft." in message["text"]

    toast = tap(pipeline, message, "Regenerate")
    assert toast.startswith("Asking the model for a new draft")
    assert "Writing a new draft" in pipeline.telegram.message(message["message_id"])["text"]
    run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.draft) == (Status.PENDING, "Second, better draft.")
    redrawn = message_for(pipeline, post_id)
    assert redrawn["message_id"] == message["message_id"]
    assert "Second, better draft." in redrawn["text"]

    refused = tap(pipeline, redrawn, stale_approve)  # the button the first draft showed
    assert "changed since it was shown" in refused
    assert discovered(post_id).status == Status.PENDING
    assert not Decision.objects.filter(action=Decision.Action.APPROVE).exists()
    assert "Second, better draft." in pipeline.telegram.message(message["message_id"])["text"]


def test_a_draft_changed_in_the_admin_cannot_be_approved_from_the_old_message(
    pipeline, admin_client
):
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    tweet = discovered(post_id)
    from bot.services.review import reply_revise

    reply_revise(
        tweet,
        "Rewritten in the admin.",
        actor="admin",
        channel="admin",
        version=tweet.draft_version,
    )
    toast = tap(pipeline, message, "Approve")
    assert "changed since it was shown" in toast
    assert discovered(post_id).status == Status.PENDING
    redrawn = pipeline.telegram.message(message["message_id"])
    assert "Rewritten in the admin." in redrawn["text"]
    assert data_of(redrawn, "Approve") != data_of(message, "Approve")


def test_a_variant_button_approves_that_variant(pipeline, settings):
    settings.DRAFT_VARIANTS = 3
    pipeline.openai.seed_state(
        {"scripted_replies": ["Option one.", "Option two.", "Option three."]}
    )
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    tweet = discovered(post_id)
    assert len(tweet.variants) == 3
    assert "Variant 2:" in message["text"]
    assert "Variant 3:" in message["text"]
    tap(pipeline, message, "Use variant 3")
    tweet = discovered(post_id)
    assert (tweet.status, tweet.draft) == (Status.APPROVED, tweet.variants[2])
    assert Decision.objects.get(queued_tweet=tweet).action == Decision.Action.APPROVE
    run_pipeline()
    assert [r.text for r in pipeline.x.replies_to(post_id)] == [tweet.variants[2]]


def test_a_handoff_gets_a_post_on_x_link_and_i_posted_it(pipeline, settings):
    settings.REPLY_MODE = "handoff"
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    assert "comes back to you as a link" in message["text"]
    tap(pipeline, message, "Approve")
    run_pipeline()  # due: handed off, and the message shows the link
    tweet = discovered(post_id)
    assert tweet.status == Status.HANDOFF
    shown = pipeline.telegram.message(message["message_id"])
    link = data_of(shown, "Post on X")
    assert link.startswith("https://x.com/intent/post?in_reply_to=" + post_id)
    tap(pipeline, shown, "I posted it")
    tweet = discovered(post_id)
    assert tweet.status == Status.POSTED
    mark = Decision.objects.get(queued_tweet=tweet, action=Decision.Action.MARK_POSTED)
    assert mark.actor == "telegram:owner"
    assert keyboard(pipeline.telegram.message(message["message_id"])) == []
    assert pipeline.x.replies_to(post_id) == []  # nothing sent by the API


def test_a_handoff_the_owner_posted_is_found_by_reconcile_and_the_message_says_so(
    pipeline, settings
):
    settings.REPLY_MODE = "handoff"
    post_id = drafted(pipeline)
    tap(pipeline, message_for(pipeline, post_id), "Approve")
    run_pipeline()
    assert discovered(post_id).status == Status.HANDOFF
    mine = pipeline.x.publish(OUR_USERNAME, discovered(post_id).draft, reply_to=post_id)
    run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.reply_tweet_id) == (Status.POSTED, mine)
    shown = message_for(pipeline, post_id)
    assert f"Posted: https://x.com/i/web/status/{mine}" in shown["text"]
    assert keyboard(shown) == []


# --- security -----------------------------------------------------------------------------


def test_a_stranger_cannot_press_or_command_and_is_logged(pipeline, caplog):
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    pipeline.telegram.add_user(STRANGER, first_name="Mallory", username="mallory")
    caplog.set_level(logging.WARNING, logger="replyguy.security")
    toast = tap(pipeline, message, "Approve", user_id=STRANGER)
    assert toast == "You are not allowed to act here."
    pipeline.telegram.send_user_message("/pause", chat_id=STRANGER, user_id=STRANGER)
    phone_pass()
    assert discovered(post_id).status == Status.PENDING
    assert not Decision.objects.exists()
    assert not publishing_paused()
    assert pipeline.telegram.bot_messages(chat_id=STRANGER) == []  # no answer to strangers
    refusals = [r for r in caplog.records if r.name == "replyguy.security"]
    assert len(refusals) == 2
    assert all(str(STRANGER) in r.getMessage() for r in refusals)


def test_only_allowed_users_act_when_the_list_is_set(pipeline, settings):
    settings.TELEGRAM_ALLOWED_USER_IDS = [777]
    post_id = drafted(pipeline)
    toast = tap(pipeline, message_for(pipeline, post_id), "Approve")  # the chat's own user
    assert toast == "You are not allowed to act here."
    assert discovered(post_id).status == Status.PENDING
    settings.TELEGRAM_ALLOWED_USER_IDS = [OWNER]
    tap(pipeline, message_for(pipeline, post_id), "Approve")
    assert discovered(post_id).status == Status.APPROVED


def _update(update_id: int, text: str) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": 900 + update_id % 100,
            "from": {"id": OWNER, "is_bot": False, "first_name": "Owner", "username": "owner"},
            "chat": {"id": OWNER, "type": "private", "first_name": "Owner"},
            "date": int(timezone.now().timestamp()),
            "text": text,
            "entities": [{"offset": 0, "length": len(text.split()[0]), "type": "bot_command"}],
        },
    }


def _post(client, body: Any, secret: str | None) -> Any:
    headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
    return client.post(
        "/telegram/webhook/",
        data=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


@pytest.mark.parametrize("secret", [None, "", "wrong-secret", "s3cret-but-longer"])
def test_the_webhook_refuses_a_missing_or_wrong_secret(client, pipeline, settings, secret, caplog):
    settings.TELEGRAM_WEBHOOK_SECRET = "s3cret"
    caplog.set_level(logging.WARNING, logger="replyguy.security")
    response = _post(client, _update(1, "/pause"), secret)
    assert response.status_code == 403
    assert not TelegramUpdate.objects.exists()
    assert any("webhook call refused" in r.getMessage() for r in caplog.records)
    assert "s3cret" not in caplog.text


def test_the_webhook_is_off_without_a_configured_secret(client, pipeline, settings):
    settings.TELEGRAM_WEBHOOK_SECRET = ""
    assert _post(client, _update(1, "/pause"), "").status_code == 403
    assert not TelegramUpdate.objects.exists()


def test_the_same_update_delivered_twice_is_handled_once(client, pipeline, settings):
    settings.TELEGRAM_WEBHOOK_SECRET = "s3cret"
    update = _update(123456, "/targets add bob")
    assert _post(client, update, "s3cret").status_code == 200
    assert _post(client, update, "s3cret").status_code == 200  # Telegram redelivers
    assert TelegramUpdate.objects.count() == 1
    from bot.tasks import handle_telegram_updates

    handle_telegram_updates()  # queued by the webhook; also the minute sweep
    handle_telegram_updates()
    assert TargetAccount.objects.filter(username="bob").count() == 1
    assert OperatorAction.objects.filter(action=OperatorAction.Action.ADD_TARGET).count() == 1
    assert bot_texts(pipeline) == ["Watching @bob from now on."]


def test_an_update_that_fails_is_marked_and_the_next_one_is_still_handled(pipeline, monkeypatch):
    from bot.telegram import commands

    def broken(args, sender):
        raise RuntimeError("a bug in one command")

    monkeypatch.setitem(commands.COMMANDS, "queue", broken)
    pipeline.telegram.send_user_message("/queue")
    pipeline.telegram.send_user_message("/pause")
    phone_pass()
    first, second = TelegramUpdate.objects.order_by("update_id")
    assert "a bug in one command" in first.error
    assert first.handled_at
    assert second.error == ""
    assert second.handled_at
    assert publishing_paused()


def test_a_press_telegram_fails_to_answer_is_handled_again_not_lost(pipeline):
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    # The Edit press arrives, and Telegram fails the question the bot asks back.
    pipeline.telegram.faults.add("sendMessage", "error", status=502, times=1)
    tap(pipeline, message, "Edit")
    waiting = TelegramUpdate.objects.get()
    assert waiting.handled_at is None, "a Telegram failure never loses the owner's press"
    assert not any(t.startswith("✏️ Send the new reply") for t in bot_texts(pipeline))

    with time_machine.travel(timezone.now() + timedelta(seconds=30)):
        phone_pass()
    waiting.refresh_from_db()
    assert waiting.handled_at is not None
    assert waiting.error == ""
    prompt = pipeline.telegram.bot_messages()[-1]
    assert prompt["text"].startswith("✏️ Send the new reply to @alice")
    pipeline.telegram.send_user_message("Mine, by hand.", reply_to_message_id=prompt["message_id"])
    phone_pass()
    assert discovered(post_id).draft == "Mine, by hand."


# --- Telegram down, pacing --------------------------------------------------------------------


def test_telegram_down_for_an_hour_loses_no_draft_and_approved_replies_still_publish(pipeline):
    ready = drafted(pipeline, "first post")
    tap(pipeline, message_for(pipeline, ready), "Approve")
    pipeline.telegram.faults.add("*", "error", status=502)
    waiting = summon(pipeline, "second post, while Telegram is down")
    start = timezone.now()
    with time_machine.travel(start, tick=True) as traveller:
        for _ in range(12):  # an hour, a pass every five minutes
            run_pipeline()
            phone_pass()
            traveller.shift(timedelta(minutes=5))
        assert discovered(ready).status == Status.POSTED  # publishing never waited for Telegram
        tweet = discovered(waiting)
        assert tweet.status == Status.PENDING
        assert not ApprovalMessage.objects.filter(
            queued_tweet=tweet, message_id__isnull=False
        ).exists()

        pipeline.telegram.faults.clear()
        traveller.shift(timedelta(minutes=2))  # the telegram breaker's recovery timeout
        run_pipeline()
        phone_pass()
    copies = [m for m in pipeline.telegram.bot_messages() if "second post" in m["text"]]
    assert len(copies) == 1
    assert discovered(waiting).draft in copies[0]["text"]


def _pending(count: int) -> list[QueuedTweet]:
    now = timezone.now()
    return [
        QueuedTweet.objects.create(
            target_tweet_id=str(10_000 + n),
            author_id="42",
            author_username="alice",
            text=f"post number {n}",
            tweet_created_at=now,
            source="target",
            status=Status.PENDING,
            draft=f"draft number {n}",
            variants=[f"draft number {n}"],
            draft_version=1,
        )
        for n in range(count)
    ]


def test_a_burst_of_50_drafts_keeps_telegrams_pace_with_none_lost_or_doubled(
    pipeline, settings, monkeypatch
):
    settings.TELEGRAM_SEND_INTERVAL_SECONDS = 0.1
    # Telegram's ~1 a second, ten times faster; it refuses (429) anything closer.
    # (A third of ours: how long a request takes varies by some milliseconds.)
    monkeypatch.setattr(pipeline.telegram, "per_chat_interval", 0.03)
    _pending(50)
    pipeline.telegram.faults.add("sendMessage", "error", status=502, times=1)  # fails halfway
    from bot.telegram.outbox import ask_owner, owner_client

    def all_sent() -> bool:
        ask_owner(owner_client(), limit=20)
        return not QueuedTweet.objects.filter(approval_message__message_id__isnull=True).exists()

    assert until(all_sent, timeout=60, interval=0.05)
    sent = pipeline.telegram.bot_messages()
    texts = sorted(m["text"].split("Draft:\n")[1].split("\n")[0] for m in sent)
    assert texts == sorted(f"draft number {n}" for n in range(50))
    assert ApprovalMessage.objects.filter(message_id__isnull=False).count() == 50
    assert ("sendMessage", "error") in pipeline.telegram.faults.fired
    assert len(sent) == 50  # none twice
    # One request per message and the one that failed, give or take a 429 when a request
    # was slow enough (on a busy machine) to arrive right before the next one.
    # Unpaced, the 50 go out within a second and Telegram refuses most of them.
    assert 51 <= requests_to(pipeline.telegram, "sendMessage") <= 53


def test_a_429_holds_every_sender_until_retry_after(pipeline):
    _pending(3)
    pipeline.telegram.faults.add("sendMessage", "error", status=429, retry_after=30, times=1)
    from bot.telegram.outbox import SENDS, ask_owner, owner_client
    from resilience.holds import held_until

    counts = ask_owner(owner_client())
    assert counts["sent"] == 0
    assert counts["waiting"] == 1
    assert held_until(SENDS) is not None
    assert ask_owner(owner_client())["sent"] == 0  # held: nothing even tried
    with time_machine.travel(timezone.now() + timedelta(seconds=31), tick=True):
        assert ask_owner(owner_client())["sent"] == 3
    assert len(pipeline.telegram.bot_messages()) == 3


def test_a_draft_waiting_long_gets_one_reminder_then_expires(pipeline, settings):
    settings.APPROVAL_REMINDER_HOURS = 2
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    with time_machine.travel(timezone.now() + timedelta(hours=3), tick=True) as traveller:
        phone_pass()
        phone_pass()
        reminders = [m for m in pipeline.telegram.bot_messages() if m["text"].startswith("⏰")]
        assert len(reminders) == 1
        assert reminders[0]["reply_to_message"]["message_id"] == message["message_id"]
        traveller.shift(timedelta(hours=settings.MAX_POST_AGE_HOURS))
        run_pipeline()
    assert discovered(post_id).status == Status.EXPIRED
    shown = pipeline.telegram.message(message["message_id"])
    assert "Expired" in shown["text"]
    assert keyboard(shown) == []


# --- commands -----------------------------------------------------------------------------


def command(sandbox, text: str) -> str:
    return command_reply(sandbox, text)["text"]


def command_reply(sandbox, text: str) -> dict[str, Any]:
    """The bot's answer to the owner's ``text`` (it replies to the owner's message)."""
    sandbox.telegram.send_user_message(text)
    phone_pass()
    answers = [
        m
        for m in sandbox.telegram.bot_messages()
        if (m.get("reply_to_message") or {}).get("text") == text
    ]
    assert answers, f"no answer to {text!r}"
    return answers[-1]


def test_status_shows_breakers_queue_and_dead_letters(pipeline):
    drafted(pipeline)
    from resilience import get_breaker

    get_breaker("ai_service").force_open()
    text = command(pipeline, "/status")
    assert "degraded" in text
    assert "ai_service: forced_open by an operator" in text or "ai_service: open" in text
    assert "twitter_api: closed" in text
    assert "waiting for approval 1" in text
    assert "Dead letters: none" in text


def test_queue_is_paged_with_a_more_button(pipeline):
    _pending(25)
    reply = command_reply(pipeline, "/queue")
    assert "Replies waiting (25), page 1 of 3" in reply["text"]
    tap(pipeline, reply, "More")
    assert "page 2 of 3" in pipeline.telegram.message(reply["message_id"])["text"]
    assert "Usage: /queue [page]" in command(pipeline, "/queue two")


def test_dlq_and_retry(pipeline):
    post_id = drafted(pipeline)
    approved(post_id)
    fail(
        discovered(post_id),
        stage=Stage.PUBLISH,
        expected=Status.APPROVED,
        error="X refused it: 400",
        kind="permanent",
        now=timezone.now(),
    )
    failure = FailedTweet.objects.get()
    assert f"#{failure.id} publish" in command(pipeline, "/dlq")
    assert "Usage: /retry <id>" in command(pipeline, "/retry")
    assert "There is no failed reply #999" in command(pipeline, "/retry 999")
    assert "goes back to its publish stage now" in command(pipeline, f"/retry {failure.id}")
    assert discovered(post_id).status == Status.APPROVED
    assert "cannot be retried" in command(pipeline, f"/retry {failure.id}")  # not twice
    run_pipeline()
    assert discovered(post_id).status == Status.POSTED
    assert OperatorAction.objects.filter(action=OperatorAction.Action.RETRY).count() == 1


def test_pause_and_resume_are_audited_and_stop_publishing(pipeline):
    assert "Publishing paused" in command(pipeline, "/pause lunch break")
    assert PipelineControl.objects.get(pk=1).paused_reason == "lunch break"
    post_id = drafted(pipeline)
    approved(post_id)
    run_pipeline()
    assert discovered(post_id).status == Status.APPROVED
    assert "already paused" in command(pipeline, "/pause")
    assert "resumed" in command(pipeline, "/resume")
    run_pipeline()
    assert discovered(post_id).status == Status.POSTED
    actions = list(OperatorAction.objects.order_by("created_at").values_list("action", "actor"))
    assert actions == [("pause", "telegram:owner"), ("resume", "telegram:owner")]


def test_targets_list_add_remove_with_clear_errors(pipeline):
    assert "@alice" in command(pipeline, "/targets")
    assert "Watching @bob" in command(pipeline, "/targets add @Bob")
    assert TargetAccount.objects.filter(username="bob").exists()
    assert "Not done:" in command(pipeline, "/targets add not-a-name!")
    assert "Not done:" in command(pipeline, "/targets add bob")  # already there
    assert "No longer watching @bob" in command(pipeline, "/targets remove bob")
    assert "Not done: @bob is not a target account." in command(pipeline, "/targets remove bob")
    assert "Usage: /targets" in command(pipeline, "/targets rename alice")


def test_help_and_unknown_commands(pipeline):
    assert "/retry <id>" in command(pipeline, "/help")
    assert command(pipeline, "/frobnicate").startswith("Unknown command /frobnicate.")
    assert "press ✏️ Edit" in command(pipeline, "hello bot")


@pytest.mark.django_db(transaction=True)
def test_webhook_mode_end_to_end_set_and_removed_by_command(live_server, pipeline, settings):
    """Telegram (the sandbox) POSTs presses to our webhook over real HTTP; the command
    sets the webhook with our secret and removes it again."""
    settings.TELEGRAM_WEBHOOK_SECRET = "s3cret-for-the-webhook"
    post_id = drafted(pipeline)
    message = message_for(pipeline, post_id)
    url = f"{live_server.url}/telegram/webhook/"
    out = io.StringIO()
    call_command("telegram_bot", "--set-webhook", url, stdout=out)
    assert f"Webhook set: Telegram now POSTs updates to {url}" in out.getvalue()
    assert pipeline.telegram.snapshot()["webhook"]["url"] == url

    pipeline.telegram.press_button(message["message_id"], data_of(message, "Approve"))
    assert until(lambda: pipeline.telegram.snapshot()["delivered"], timeout=10)
    assert [d["status"] for d in pipeline.telegram.snapshot()["delivered"]] == [200]
    assert TelegramUpdate.objects.count() == 1
    from bot.tasks import handle_telegram_updates

    handle_telegram_updates()
    assert discovered(post_id).status == Status.APPROVED

    call_command("telegram_bot", "--delete-webhook", stdout=io.StringIO())
    assert pipeline.telegram.snapshot()["webhook"]["url"] == ""


def test_setting_a_webhook_without_a_secret_is_refused_with_what_to_do(pipeline, settings):
    from django.core.management.base import CommandError

    settings.TELEGRAM_WEBHOOK_SECRET = ""
    with pytest.raises(CommandError, match="Set TELEGRAM_WEBHOOK_SECRET first"):
        call_command("telegram_bot", "--set-webhook", "https://example.com/telegram/webhook/")
    settings.TELEGRAM_WEBHOOK_SECRET = "s3cret"
    with pytest.raises(CommandError, match="is not Reply Guy's webhook"):
        call_command("telegram_bot", "--set-webhook", "https://example.com/hook")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_poller_process_handles_commands_and_stops_at_once(pipeline, stop):
    poller = subprocess.Popen(
        [sys.executable, "manage.py", "telegram_bot"],
        cwd=ROOT,
        env=worker_env(pipeline),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pipeline.telegram.send_user_message("/pause from the poller test")
        assert until(publishing_paused, timeout=30, interval=0.1), "the poller never paused"
        poller.send_signal(stop)  # how a PaaS (SIGTERM) or Ctrl-C (SIGINT) stops it
        out, err = poller.communicate(timeout=15)
    finally:
        poller.kill()
    assert poller.returncode == 0, err
    assert "Telegram poller stopped" in out
    assert "Traceback" not in err


# --- found by the hostile review --------------------------------------------------------------


def test_a_poller_left_running_beside_a_webhook_says_so_and_leaves_telegram_working(
    pipeline, settings
):
    from bot.telegram.outbox import ask_owner, owner_client
    from resilience import get_breaker
    from resilience.models import AlertEvent

    settings.TELEGRAM_WEBHOOK_SECRET = "s3cret"
    call_command(
        "telegram_bot",
        "--set-webhook",
        "http://127.0.0.1:9/telegram/webhook/",
        stdout=io.StringIO(),
    )
    for _ in range(6):
        phone_pass()  # every getUpdates answers 409
    assert get_breaker("telegram").state == "closed"
    [alert] = AlertEvent.objects.filter(kind="configuration_refused")
    assert "409" in alert.message
    _pending(1)
    assert ask_owner(owner_client())["sent"] == 1  # approvals still go out


def test_a_message_is_edited_only_when_its_tweet_changes_never_for_the_clock(pipeline):
    from bot.telegram.outbox import ask_owner, owner_client

    _pending(3)
    ask_owner(owner_client())
    edits = requests_to(pipeline.telegram, "editMessageText")
    for minutes in (2, 3, 70, 130, 60 * 30):
        with time_machine.travel(timezone.now() + timedelta(minutes=minutes), tick=True):
            assert ask_owner(owner_client())["updated"] == 0
    assert requests_to(pipeline.telegram, "editMessageText") == edits


def test_an_old_message_is_redrawn_however_many_wait_and_each_is_looked_at_once(
    pipeline, monkeypatch
):
    """Messages about held replies stay open for hours; a change to the oldest one (a
    redraft that needs the owner again) still reaches the phone in the next pass, and a
    message whose tweet did not change is rendered again only in its turn."""
    from bot.telegram import outbox

    monkeypatch.setattr(outbox, "CHANGED_AT_ONCE", 3)
    monkeypatch.setattr(outbox, "SWEPT_AT_ONCE", 1)
    oldest, *newer = _pending(6)
    outbox.ask_owner(outbox.owner_client(), limit=10)
    assert outbox.ask_owner(outbox.owner_client())["updated"] == 0
    renders = []
    drawn = outbox.render
    monkeypatch.setattr(
        outbox, "render", lambda tweet, **kw: renders.append(tweet.id) or drawn(tweet, **kw)
    )
    assert outbox.ask_owner(outbox.owner_client())["updated"] == 0
    assert len(renders) == 1  # nothing changed: one in its turn, however many are open

    for tweet in newer:  # more changes than a pass looks at, the oldest's first
        QueuedTweet.objects.filter(id=tweet.id).update(draft="newer", updated_at=timezone.now())
    QueuedTweet.objects.filter(id=oldest.id).update(
        draft="a clearly different reply", draft_version=2, updated_at=timezone.now()
    )
    outbox.ask_owner(outbox.owner_client())
    outbox.ask_owner(outbox.owner_client())
    shown = pipeline.telegram.message(ApprovalMessage.objects.get(queued_tweet=oldest).message_id)
    assert "a clearly different reply" in shown["text"]
    assert f"a:{oldest.id}:2" in data_of(shown, "Approve")
    assert all(
        "newer" in pipeline.telegram.message(m.message_id)["text"]
        for m in ApprovalMessage.objects.filter(queued_tweet__in=newer)
    )


def _outbox_pass() -> None:
    from bot.telegram.outbox import ask_owner, owner_client

    ask_owner(owner_client(), limit=50)


def test_a_redraft_is_shown_though_its_writer_stamped_it_earlier_than_the_last_drawing(
    pipeline,
):
    """Each process stamps ``updated_at`` by its own clock: a poller 30 s ahead, then the
    cluster writing the new draft 10 s later. The message still shows the new draft."""
    from bot.services.transitions import transition

    [tweet] = _pending(1)
    _outbox_pass()
    now = timezone.now()
    with time_machine.travel(now + timedelta(seconds=30), tick=False):
        assert transition(tweet.id, expected=Status.PENDING, to=Status.NEW)
    _outbox_pass()
    message_id = ApprovalMessage.objects.get(queued_tweet=tweet).message_id
    assert "Writing a new draft" in pipeline.telegram.message(message_id)["text"]
    with time_machine.travel(now + timedelta(seconds=10), tick=False):
        assert transition(
            tweet.id, expected=Status.NEW, to=Status.PENDING, draft="the new draft", draft_version=2
        )
    _outbox_pass()
    assert "the new draft" in pipeline.telegram.message(message_id)["text"]


def test_a_new_reply_mode_reaches_every_open_message_in_turn(pipeline, settings, monkeypatch):
    from bot.telegram import outbox

    monkeypatch.setattr(outbox, "SWEPT_AT_ONCE", 2)
    settings.REPLY_MODE = "api"
    tweets = _pending(5)
    _outbox_pass()
    settings.REPLY_MODE = "handoff"  # a restart with another mode: no tweet changed

    def says_handoff() -> list[bool]:
        return [
            "through the API"
            not in pipeline.telegram.message(
                ApprovalMessage.objects.get(queued_tweet=tweet).message_id
            )["text"]
            for tweet in tweets
        ]

    _outbox_pass()
    assert says_handoff().count(True) == 2  # a few a pass
    _outbox_pass()
    _outbox_pass()
    assert all(says_handoff())


def test_an_edit_from_an_older_state_is_drawn_again_after_a_press_redraws_it(pipeline, monkeypatch):
    """A pass waits its turn before each edit; meanwhile the owner rejects the next
    draft and the poller redraws it. Whatever lands last on the phone, the next pass
    leaves the message saying Rejected."""
    from bot.services.transitions import transition
    from bot.telegram import outbox, updates

    first, second = _pending(2)
    _outbox_pass()
    for tweet in (first, second):
        QueuedTweet.objects.filter(id=tweet.id).update(
            draft=f"second draft {tweet.id}", draft_version=2, updated_at=timezone.now()
        )
    client = outbox.owner_client()
    edit = client.edit_message
    rejected = []

    def edit_then_press(message_id, **fields):
        edit(message_id, **fields)
        if not rejected:  # during the pass's first edit, the owner rejects the other
            other = next(
                t
                for t in (first, second)
                if ApprovalMessage.objects.get(queued_tweet=t).message_id != message_id
            )
            rejected.append(other)
            assert transition(other.id, expected=Status.PENDING, to=Status.REJECTED)
            updates.show(client, other.id)

    monkeypatch.setattr(client, "edit_message", edit_then_press)
    outbox.ask_owner(client)
    monkeypatch.undo()
    _outbox_pass()
    shown = message_for(pipeline, rejected[0].target_tweet_id)
    assert "Rejected" in shown["text"]
    assert keyboard(shown) == []


def test_the_edit_question_is_asked_under_the_copy_that_keeps_the_buttons(pipeline):
    # Telegram takes the first send and the answer is lost: the outbox sends it again,
    # and the phone shows two copies, the older one never recorded.
    pipeline.telegram.faults.add("sendMessage", "cut_after", times=1)
    post_id = drafted(pipeline)
    phone_pass()
    live = message_for(pipeline, post_id)
    [stale] = [m for m in pipeline.telegram.bot_messages() if m["message_id"] != live["message_id"]]
    assert stale["message_id"] < live["message_id"]

    tap(pipeline, stale, "Edit")  # pressed on the old copy: it is retired
    question = pipeline.telegram.bot_messages()[-1]
    assert question["text"].startswith("✏️ Send the new reply")
    assert question["reply_to_message"]["message_id"] == live["message_id"]
    assert "out of date" in pipeline.telegram.message(stale["message_id"])["text"]
    assert keyboard(message_for(pipeline, post_id))  # the live copy keeps its buttons


def test_a_strangers_unstorable_message_never_blocks_the_owners(pipeline):
    pipeline.telegram.add_user(STRANGER, first_name="Mallory")
    pipeline.telegram.send_user_message("hi\x00there", chat_id=STRANGER, user_id=STRANGER)
    pipeline.telegram.send_user_message("/pause")
    phone_pass()
    assert publishing_paused()
    assert all("\x00" not in json.dumps(u.payload) for u in TelegramUpdate.objects.all())


@pytest.mark.parametrize("data", ["p:queue:0", "p:queue:-1", "p:nothing:2", "a:1:1:1:1", "zz"])
def test_a_forged_button_is_refused_without_an_error(pipeline, data):
    _pending(1)
    reply = command_reply(pipeline, "/queue")
    pipeline.telegram.press_button(reply["message_id"], data)
    phone_pass()
    assert not TelegramUpdate.objects.exclude(error="").exists()
    assert not Decision.objects.exists()


def test_a_forged_press_never_moves_another_drafts_message(pipeline):
    from bot.telegram.outbox import ask_owner, owner_client

    first, second = _pending(2)
    ask_owner(owner_client(), limit=1)  # only the first has a message
    shown = ApprovalMessage.objects.get(queued_tweet=first)
    forged = button(Act.REJECT, second.id, second.draft_version)
    pipeline.telegram.press_button(shown.message_id, forged)
    phone_pass()
    assert ApprovalMessage.objects.filter(message_id=shown.message_id).count() == 1


def test_target_names_are_ascii_as_on_x(pipeline):
    assert "Not done:" in command(pipeline, "/targets add ñandú_日本")
    assert not TargetAccount.objects.filter(username__startswith="ñ").exists()


@pytest.mark.parametrize("configured", ["+1001", "01001", " 1001 "])
def test_the_chat_id_is_read_the_same_way_everywhere(pipeline, settings, configured):
    settings.TELEGRAM_CHAT_ID = configured
    assert "Publishing paused" in command(pipeline, "/pause")


@pytest.mark.parametrize("update_id", [True, "12", -1, 2**64])
def test_the_webhook_ignores_an_update_id_that_is_not_one(client, pipeline, settings, update_id):
    settings.TELEGRAM_WEBHOOK_SECRET = "s3cret"
    assert (
        _post(client, {**_update(1, "/pause"), "update_id": update_id}, "s3cret").status_code == 200
    )
    assert not TelegramUpdate.objects.exists()


def test_a_draft_telegram_keeps_refusing_is_given_up_on_with_an_alert(pipeline):
    from bot.telegram.outbox import MAX_SEND_ATTEMPTS, ask_owner, owner_client
    from resilience.models import AlertEvent

    [tweet] = _pending(1)
    pipeline.telegram.faults.add("sendMessage", "error", status=400)
    for _ in range(MAX_SEND_ATTEMPTS + 2):
        ask_owner(owner_client())
    assert requests_to(pipeline.telegram, "sendMessage") == MAX_SEND_ATTEMPTS
    [alert] = AlertEvent.objects.filter(kind="tweet_processing_failed")
    assert tweet.url in alert.message
    assert "in the admin" in alert.message
