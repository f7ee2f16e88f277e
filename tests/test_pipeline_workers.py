"""Real worker processes against one database: killed mid-publish, and racing each other."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from bot.models import QueuedTweet, Status
from tests.pipeline import approved, discovered, run_pipeline, summon

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True)


def worker_env(sandbox, **pacing: str) -> dict[str, str]:
    """A worker process's environment: this test's database, the stand-ins, fast pacing."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{db['NAME']}"
    else:
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({name: str(value) for name, value in sandbox.env().items()})
    env.update(
        DATABASE_URL=url,
        DEBUG="true",
        REDIS_URL="",
        MIN_DELAY_MINUTES="0",
        MAX_DELAY_MINUTES="0",
        QUIET_HOURS_START="0",
        QUIET_HOURS_END="0",
        MAX_POSTS_PER_HOUR="100",
        MAX_POSTS_PER_DAY="1000",
        MIN_SPACING_MINUTES="0",
        MAX_REPLIES_PER_AUTHOR_PER_DAY="5",
        REPLY_MODE="auto",
        LOG_LEVEL="ERROR",
    )
    env.update(pacing)
    return env


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
    deadline = time.monotonic() + 60
    while not pipeline.x.replies_to(post_id) and time.monotonic() < deadline:
        time.sleep(0.05)
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


@pytest.mark.parametrize(
    ("pacing", "expected_posted"),
    [
        ({"MAX_POSTS_PER_HOUR": "3"}, 3),
        ({"MAX_POSTS_PER_DAY": "2"}, 2),
        ({"QUIET_HOURS_START": "0", "QUIET_HOURS_END": "23"}, None),  # quiet now, unless 23h
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

    env = worker_env(pipeline, **pacing)
    workers = [start_worker(env) for _ in range(2)]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    rows = QueuedTweet.objects.filter(target_tweet_id__in=posts)
    posted = [row for row in rows if row.status == Status.POSTED]
    replies = {post_id: len(pipeline.x.replies_to(post_id)) for post_id in posts}
    assert set(replies.values()) <= {0, 1}, "a post was answered twice"
    assert sum(replies.values()) == len(posted)
    if expected_posted is None:  # quiet hours 00:00-23:00 in UTC
        expected_posted = 0 if timezone.now().hour < 23 else len(posts)
    assert len(posted) == expected_posted
    waiting = [row for row in rows if row.status == Status.APPROVED]
    assert len(waiting) == len(posts) - expected_posted, [(r.status, r.last_error) for r in rows]
    assert all(row.scheduled_at > timezone.now() for row in waiting), "rescheduled, not failed"
