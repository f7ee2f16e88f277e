"""The log says what happened, one line per business event, in text or JSON."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from resilience.events import JsonFormatter, event
from tests.helpers import ROOT, approved, discovered, run_pipeline, summon, worker_env

pytestmark = pytest.mark.django_db


def events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "replyguy.events"]


def test_a_replys_life_is_told_one_line_per_event_with_its_correlation_id(pipeline, caplog):
    caplog.set_level(logging.INFO)
    post_id = summon(pipeline)
    run_pipeline()
    tweet = approved(post_id)
    run_pipeline()
    tweet = discovered(post_id)
    mine = [r for r in events(caplog) if r.fields.get("tweet") == tweet.id]
    names = [r.event for r in mine]
    for expected in ("discovered", "drafted", "asked_owner", "approved", "scheduled", "published"):
        assert names.count(expected) == 1, names
    published = next(r for r in mine if r.event == "published")
    assert f"tweet={tweet.id} " in published.getMessage()
    assert f"link=https://x.com/i/web/status/{tweet.reply_tweet_id}" in published.getMessage()
    approved_line = next(r for r in mine if r.event == "approved").getMessage()
    assert "by=owner" in approved_line
    assert "via=telegram" in approved_line
    assert "goes_out=" in approved_line


def test_json_lines_carry_the_events_fields():
    logger = logging.getLogger("replyguy.events")
    captured: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = captured.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        event(
            "published", tweet=12, link="https://x.com/i/web/status/9", why="a reason with spaces"
        )
    finally:
        logger.removeHandler(handler)
    [record] = captured
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "published"
    assert line["tweet"] == 12
    assert line["link"] == "https://x.com/i/web/status/9"
    assert line["level"] == "INFO"
    assert 'why="a reason with spaces"' in line["message"]


@pytest.mark.django_db(transaction=True)
def test_a_worker_logs_events_in_json_without_django_q_chatter_or_secrets(pipeline):
    summon(pipeline)
    env = worker_env(pipeline, LOG_FORMAT="json", LOG_LEVEL="INFO")
    done = subprocess.run(
        [sys.executable, "manage.py", "run_pipeline", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert lines, done.stderr
    assert all(line.startswith("{") for line in done.stderr.splitlines() if line.strip())
    names = [line.get("event") for line in lines]
    assert "discovered" in names
    assert "drafted" in names
    assert not [line for line in lines if line["logger"] == "django-q" and line["level"] == "INFO"]
    secrets = [v for k, v in pipeline.env().items() if k.endswith(("KEY", "TOKEN", "SECRET"))]
    assert len(secrets) >= 6
    for secret in secrets:
        assert secret not in done.stderr + done.stdout
