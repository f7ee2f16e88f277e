"""Real worker processes against one database: killed mid-publish, and racing each other."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from bot.models import QueuedTweet, Status
from tests.helpers import ROOT, approved, discovered, run_pipeline, summon, until, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


def start_worker(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_pipeline", "--once"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_worker_killed_mid_publish_leaves_exactly_one_reply(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    # X creates the reply, then keeps the worker waiting for the answer: we kill it then.
    pipeline.x.faults.add("create_tweet", "delay_after", latency=60, times=1)
    worker = start_worker(worker_env(pipeline))
    until(lambda: pipeline.x.replies_to(post_id), timeout=60, interval=0.05)
    worker.kill()  # SIGKILL: no cleanup, no except, no finally
    worker.wait(10)
    assert len(pipeline.x.replies_to(post_id)) == 1
    tweet = discovered(post_id)
    assert tweet.status == Status.PUBLISHING, "the dead worker still holds the lease"

    run_pipeline()  # another worker, while the lease holds: nothing is re-sent
    assert discovered(post_id).status == Status.PUBLISHING
    assert len(pipeline.x.replies_to(post_id)) == 1

    with time_machine.travel(timezone.now() + timedelta(minutes=6)):
        call_command("recover_stale", stdout=open(os.devnull, "w"))  # noqa: SIM115
    tweet.refresh_from_db()
    assert tweet.status == Status.POSTED
    replies = pipeline.x.replies_to(post_id)
    assert [reply.id for reply in replies] == [tweet.reply_tweet_id]
    run_pipeline()
    assert len(pipeline.x.replies_to(post_id)) == 1


def quiet_now() -> dict[str, str]:
    """Quiet hours from this hour to two hours on, in the owner's time zone.

    Workers started now are inside them for an hour at least, so the test means the same
    at 02:00, 12:00 and 23:30 (fixed hours would not: 00:00-23:00 is over at 23:00).
    """
    hour = datetime.now(ZoneInfo(settings.TIME_ZONE)).hour
    return {
        "TIME_ZONE": settings.TIME_ZONE,
        "QUIET_HOURS_START": str(hour),
        "QUIET_HOURS_END": str((hour + 2) % 24),
    }


@pytest.mark.parametrize(
    ("pacing", "expected_posted"),
    [
        ({"MAX_POSTS_PER_HOUR": "3"}, 3),
        ({"MAX_POSTS_PER_DAY": "2"}, 2),
        (None, 0),  # quiet_now(): quiet hours, whatever the hour the test runs at
    ],
)
def test_two_workers_racing_publish_each_reply_once_and_keep_the_caps(
    pipeline, pacing, expected_posted
):
    authors = [f"user{n}" for n in range(8)]
    posts = [summon(pipeline, "a question for you", author) for author in authors]
    run_pipeline()
    for post_id in posts:
        approved(post_id)

    env = worker_env(pipeline, **(pacing or quiet_now()))
    workers = [start_worker(env) for _ in range(2)]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    rows = QueuedTweet.objects.filter(target_tweet_id__in=posts)
    posted = [row for row in rows if row.status == Status.POSTED]
    replies = {post_id: len(pipeline.x.replies_to(post_id)) for post_id in posts}
    assert set(replies.values()) <= {0, 1}, "a post was answered twice"
    assert sum(replies.values()) == len(posted)
    assert len(posted) == expected_posted
    waiting = [row for row in rows if row.status == Status.APPROVED]
    assert len(waiting) == len(posts) - expected_posted, [(r.status, r.last_error) for r in rows]
    assert all(row.scheduled_at > timezone.now() for row in waiting), "rescheduled, not failed"
