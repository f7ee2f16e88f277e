"""What every benchmark needs: its own database, the settings, and a note of the machine."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def bench_environment() -> Iterator[bool]:
    """Point Django at the project settings, on a throwaway SQLite file unless
    DATABASE_URL is set (the file is removed afterwards). Yields whether it is one."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "replyguy.settings")
    # DEBUG off, as in production: with it on Django keeps every query in
    # connection.queries_log, which costs time and shows up as memory growth.
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")
    # Tripping breakers on purpose would log a warning each.
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    if os.environ.get("DATABASE_URL", "").strip():
        yield False
        return
    scratch = Path(tempfile.mkdtemp(prefix="replyguy-bench-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{scratch / 'bench.sqlite3'}"
    try:
        yield True
    finally:
        from django.db import connections

        connections.close_all()
        shutil.rmtree(scratch, ignore_errors=True)
        del os.environ["DATABASE_URL"]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def number_list(text: str, *, low: int, high: int | None = None) -> tuple[int, ...]:
    """A comma-separated list of whole numbers from ``low`` to ``high``, sorted, unique."""
    try:
        numbers = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not numbers or min(numbers) < low or (high is not None and max(numbers) > high):
        bounds = f"from {low} to {high}" if high is not None else f"of {low} or more"
        raise argparse.ArgumentTypeError(f"need numbers {bounds}, got {text!r}")
    return tuple(sorted(set(numbers)))


def machine() -> dict[str, Any]:
    """Python, Django, database and CPU, for the report."""
    import django
    from django.db import connection

    connection.ensure_connection()
    if connection.vendor == "postgresql":
        server = connection.pg_version
        database = f"PostgreSQL {server // 10000}.{server % 10000}"
    elif connection.vendor == "sqlite":
        database = f"SQLite {connection.Database.sqlite_version}"
    else:
        database = connection.display_name
    return {
        "python": platform.python_version(),
        "django": django.get_version(),
        "database": database,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown"


# --- the database a benchmark fills and empties ------------------------------------------


def migrate_or_refuse(*, wipe: bool, what: str = "the bot tables") -> dict[str, Any] | None:
    """Migrate; then the report of a refused run, or None when the run may go on.

    Every benchmark that seeds rows empties ``what`` first, so it refuses a database that
    already holds queued tweets unless ``wipe`` (``--wipe``, or a throwaway database).
    """
    from django.core.management import call_command

    from bot.models import QueuedTweet

    call_command("migrate", verbosity=0)
    if wipe or not QueuedTweet.objects.exists():
        return None
    return {
        "environment": machine(),
        "refused": (
            f"the database already holds queued tweets ({QueuedTweet.objects.count()}), "
            f"and this benchmark empties {what}. Point DATABASE_URL at a "
            "database of its own, or pass --wipe."
        ),
    }


def wipe_bot_tables(*also: Any, breakers: bool = False) -> None:
    """Empty every table of the ``bot`` app (a model added later too) and the models in
    ``also``; keep the pipeline-control row, unpaused. ``breakers``: also delete the rows
    of the configured circuit breakers."""
    from django.apps import apps
    from django.conf import settings

    from bot.models import PipelineControl
    from resilience.models import BreakerRecord

    for model in apps.get_app_config("bot").get_models():
        if model is not PipelineControl:
            model.objects.all().delete()
    for model in also:
        model.objects.all().delete()
    PipelineControl.objects.get_or_create(pk=1)
    PipelineControl.objects.update(publishing_paused=False, paused_reason="")
    if breakers:
        BreakerRecord.objects.filter(name__in=list(settings.RESILIENCE["BREAKERS"])).delete()


def bulk_seed(model: Any, rows: Any, *, batch_size: int = 1000) -> list[Any]:
    """``bulk_create`` the rows in batches; returns them (with ids where the database
    gives them back)."""
    return model.objects.bulk_create(list(rows), batch_size=batch_size)


def analyze(*models: Any) -> None:
    """On PostgreSQL, what autovacuum would do soon after a bulk seed, done now so every
    run plans its queries alike. Nothing on SQLite."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"ANALYZE {model._meta.db_table}")


def approved_by_owner(when: Any) -> dict[str, Any]:
    """The fields of a reply the owner approved on Telegram at ``when``."""
    from bot.models import Channel

    return {"approved_at": when, "approved_by": "owner", "approved_via": Channel.TELEGRAM}


def reply_due(sandbox: Any, index: int, *, author: str = "asker") -> str:
    """Someone @mentions us on the sandbox's X (so the API may answer); the owner approved
    our reply and it is due now. Returns the post's id. Every reply's text is its own (X
    refuses a reply identical to one we posted before)."""
    from django.utils import timezone

    from bot.models import QueuedTweet, Source, Status
    from sandbox.x_api import OUR_USERNAME

    now = timezone.now()
    username = f"{author}{index:04d}"
    text = f"@{OUR_USERNAME} question {index + 1}: how do you test a queue without sleeping?"
    post_id = sandbox.x.publish(username, text)
    draft = f"Answer {index + 1}: move the clock, never sleep; assert on what moved."
    QueuedTweet.objects.create(
        target_tweet_id=post_id,
        author_id=sandbox.x.add_user(username),
        author_username=username,
        text=text,
        tweet_created_at=now,
        source=Source.MENTION,
        summoned=True,
        status=Status.APPROVED,
        draft=draft,
        variants=[draft],
        draft_attempts=1,
        draft_version=1,
        **approved_by_owner(now),
        scheduled_at=now,
    )
    return post_id


# --- measuring ---------------------------------------------------------------------------


class QueryCounter:
    """An ``execute_wrapper`` that counts every query it sees."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Any, sql: str, *args: Any) -> Any:
        self.count += 1
        return execute(sql, *args)


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` from 0 to 1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# --- the printed report ------------------------------------------------------------------


def machine_line(env: dict[str, Any]) -> str:
    """One line naming the interpreter, Django, the CPUs and the load."""
    line = (
        f"Python {env['python']}, Django {env['django']}, {env['cpus']} CPUs ({env['cpu_model']})"
    )
    if env.get("load_average"):
        line += f", load average {env['load_average'][0]}"
    return line


def refused_line(title: str, report: dict[str, Any]) -> str | None:
    """The report of a refused run in one line, or None when the run went ahead."""
    if "refused" not in report:
        return None
    return f"{title} on {report['environment']['database']}: not run. {report['refused']}"


def verdict(passed: bool, text: str) -> str:
    return f"  {'PASS' if passed else 'FAIL'}  {text}"
