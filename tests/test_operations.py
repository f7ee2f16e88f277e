"""What an operator runs: schedules after migrate, the commands, a real django-q2 cluster."""

from __future__ import annotations

import importlib
import io
import re
import signal
import subprocess
import sys

import pytest
import requests
from django.core.management import call_command
from django_q.models import Schedule

from bot.models import Cursor, QueuedTweet, Status
from tests.helpers import (
    ROOT,
    approved,
    discovered,
    environ_without,
    free_port,
    run_pipeline,
    summon,
    until,
    worker_env,
)


@pytest.mark.django_db
def test_every_stage_has_a_schedule_after_migrate_and_its_task_exists():
    from django.apps import apps

    # What the schedule migrations do (run again: a transactional test's flush may
    # have emptied the table since the test database was migrated).
    for name in ("0002_schedules", "0010_telegram_schedules"):
        importlib.import_module(f"bot.migrations.{name}").create_schedules(apps, None)
    schedules = {s.name: s for s in Schedule.objects.all()}
    funcs = {s.func for s in schedules.values()}
    assert funcs == {
        "bot.tasks.discover",
        "bot.tasks.draft",
        "bot.tasks.schedule",
        "bot.tasks.publish",
        "bot.tasks.reconcile",
        "bot.tasks.retry_dead_letters",
        "bot.tasks.notify",
        "bot.tasks.handle_telegram_updates",
    }
    for schedule in schedules.values():
        module, name = schedule.func.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name))
        assert (schedule.schedule_type, schedule.repeats) == (Schedule.MINUTES, -1)


@pytest.mark.django_db
def test_run_pipeline_on_a_fresh_install_without_credentials_says_what_is_missing(settings, caplog):
    settings.X_API_KEY = settings.OPENAI_API_KEY = ""
    out = io.StringIO()
    call_command("run_pipeline", "--once", stdout=out)
    assert "discover: nothing to do" in out.getvalue()
    assert "discover skipped: X is not configured: set X_API_KEY" in caplog.text
    assert "draft skipped: The model is not configured: set OPENAI_API_KEY" in caplog.text


@pytest.mark.django_db
def test_cursor_advances_only_with_saved_rows_and_failed_reads_are_read_again(pipeline):
    first = pipeline.x.publish("alice", "first post about django")
    run_pipeline()
    cursor = Cursor.objects.get(source__startswith="target:")
    assert cursor.since_id == first

    second = pipeline.x.publish("alice", "second post about django")
    pipeline.x.faults.add("user_tweets", "error", status=503, times=1)
    run_pipeline()
    cursor.refresh_from_db()
    assert cursor.since_id == first, "a failed read does not move the cursor"
    assert not QueuedTweet.objects.filter(target_tweet_id=second).exists()

    run_pipeline()
    assert discovered(second).status in {Status.NEW, Status.PENDING}
    cursor.refresh_from_db()
    assert cursor.since_id == second
    assert QueuedTweet.objects.filter(target_tweet_id=first).count() == 1


def test_sandbox_command_prints_its_ports_and_serves_the_control_api(tmp_path):
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "sandbox",
            "--demo",
            "--x-port",
            str(ports[0]),
            "--openai-port",
            str(ports[1]),
            "--telegram-port",
            str(ports[2]),
        ],
        cwd=ROOT,
        env={
            **environ_without("PYTEST", "DATABASE"),
            "DEBUG": "true",
            "REPLYGUY_VAR_DIR": str(tmp_path),
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        urls = dict(re.findall(r"sandbox (\w+): (http://\S+)", "".join(lines)))
        assert urls == {
            "x": f"http://127.0.0.1:{ports[0]}",
            "openai": f"http://127.0.0.1:{ports[1]}",
            "telegram": f"http://127.0.0.1:{ports[2]}",
        }
        state = requests.get(f"{urls['x']}/_sandbox/state", timeout=5).json()
        assert {"replyguy", "djangonaut", "pyfan"} <= {u["username"] for u in state["users"]}
        models = requests.get(
            f"{urls['openai']}/v1/models", headers={"Authorization": "Bearer k"}, timeout=5
        )
        assert "sandbox-model" in {m["id"] for m in models.json()["data"]}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker", ["orm", "redis"])
def test_a_real_cluster_runs_the_publish_task(pipeline, broker, request):
    """django-q2 with its real broker: a queued task is picked up and publishes the reply."""
    env = worker_env(pipeline)
    if broker == "redis":
        env.update(REDIS_URL=request.getfixturevalue("redis_url"), Q_BROKER="redis")
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        enqueue = "from django_q.tasks import async_task; async_task('bot.tasks.publish')"
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", enqueue],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        until(lambda: discovered(post_id).status == Status.POSTED, timeout=60, interval=0.2)
    finally:
        cluster.send_signal(signal.SIGTERM)
        _, errors = cluster.communicate(timeout=30)
    assert discovered(post_id).status == Status.POSTED, errors[-2000:]
    assert len(pipeline.x.replies_to(post_id)) == 1
