"""Driving the pipeline from tests: one pass, a summons, a discovered row, an approval."""

from __future__ import annotations

import io
import json
import re

from django.core.management import call_command

from bot.models import Channel, QueuedTweet, Status
from bot.services.review import reply_approve


def run_pipeline() -> dict[str, dict[str, int]]:
    out = io.StringIO()
    call_command("run_pipeline", "--once", "--json", stdout=out)
    return json.loads(out.getvalue())


def summon(
    sandbox, text: str = "how do you test retries without sleeping?", author: str = "alice"
) -> str:
    """An author mentions us: X lets us answer through the API."""
    return sandbox.x.publish(author, f"@replyguy {text}")


def discovered(post_id: str) -> QueuedTweet:
    return QueuedTweet.objects.get(target_tweet_id=post_id)


def approved(post_id: str, text: str | None = None) -> QueuedTweet:
    tweet = discovered(post_id)
    assert tweet.status == Status.PENDING, tweet.last_error
    return reply_approve(
        tweet, actor="owner", channel=Channel.TELEGRAM, version=tweet.draft_version, text=text
    )


def shown_version(page) -> str:
    """The draft version an admin review page rendered (what the browser posts back)."""
    found = re.search(r'name="shown_version" value="(\d+)"', page.content.decode())
    assert found, "the review page carries no draft version"
    return found.group(1)
