"""Found by the chaos run (bench/chaos.py): the poller must not lose the owner's updates
when the database connection drops while it keeps them."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import OperationalError

from bot.management.commands import telegram_bot
from bot.models import Decision, Status, TelegramUpdate
from tests.helpers import discovered, run_pipeline, summon

# Outside a test transaction, as the poller runs: with_db_recovery retries only there.
pytestmark = pytest.mark.django_db(transaction=True)


def test_an_update_the_database_could_not_keep_is_read_again_not_lost(pipeline, monkeypatch):
    post_id = summon(pipeline)
    run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.PENDING
    shown = tweet.approval_message.message_id
    pipeline.telegram.press_button(shown, f"a:{tweet.id}:{tweet.draft_version}")

    keep = telegram_bot.receive
    cuts = []

    def connection_lost_once(update):
        if not cuts:
            cuts.append(update["update_id"])
            # What pg_terminate_backend (or a restarting database) does to the poller.
            raise OperationalError("terminating connection due to administrator command")
        return keep(update)

    monkeypatch.setattr(telegram_bot, "receive", connection_lost_once)
    call_command("telegram_bot", "--once", stdout=io.StringIO())

    assert cuts, "the press never reached the poller"
    assert TelegramUpdate.objects.filter(update_id=cuts[0]).exists(), "the press was lost"
    assert discovered(post_id).status == Status.APPROVED
    call_command("telegram_bot", "--once", stdout=io.StringIO())  # Telegram gives it again
    assert Decision.objects.filter(queued_tweet=tweet, action=Decision.Action.APPROVE).count() == 1
