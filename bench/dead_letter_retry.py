"""What retrying the whole dead-letter queue costs: queries and seconds, bulk against a loop.

Run from the project root; it uses a throwaway SQLite database unless DATABASE_URL is
set (no outside service is called)::

    .venv/bin/python -m bench.dead_letter_retry [--rows 1000,10000] [--repeats R]
                                               [--json] [--wipe]

For each size N the bot tables are emptied and N failed tweets are seeded with
``bulk_create``, each with its dead-letter row (half failed while drafting, half while
publishing), plus N/10 dead-letter rows a retry must leave alone (their reply went out
after all, or its outcome is unknown). Then, side by side, on freshly seeded rows:

1. bulk: ``dead_letters.dead_letters_retry`` over every row, as the admin's "retry
   everything matching this filter" does;
2. per row: ``dead_letters.dead_letter_retry_now`` called for each row in turn, as a
   loop over the list would (and as Telegram's ``/retry <id>`` does for one).

Each is measured in database queries (``connection.execute_wrapper``) and wall
seconds, best of R runs. Both are checked: every failed tweet went back to its stage
(``new`` for a draft, ``approved`` for a publish), its dead-letter row is ``retrying``,
and the rows to leave alone were left alone.

It empties every table of the ``bot`` app in the database it runs on. On a database
that already holds queued tweets it refuses unless ``--wipe`` is given.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bench.common import (
    QueryCounter,
    approved_by_owner,
    bench_environment,
    bulk_seed,
    machine,
    machine_line,
    migrate_or_refuse,
    number_list,
    positive,
    refused_line,
    verdict,
    wipe_bot_tables,
)

DEFAULT_ROWS = (1_000, 10_000)
DEFAULT_REPEATS = 3
MAX_ROWS = 100_000
ID_BASE = 1_000_000_000_000_000_000
METHODS = ("bulk", "per_row")


@dataclass
class Run:
    seconds: float
    queries: int
    ok: bool


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with bench_environment() as scratch:
        report = _run(sizes=args.rows, repeats=args.repeats, wipe=args.wipe or scratch)
    print(json.dumps(report, indent=2) if args.json else _render(report))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dead_letter_retry",
        description="Queries and seconds of a dead-letter bulk retry against a per-row loop.",
    )
    parser.add_argument(
        "--rows",
        type=lambda text: number_list(text, low=1, high=MAX_ROWS),
        default=DEFAULT_ROWS,
        help="failed tweets to retry, comma-separated (1000,10000)",
    )
    parser.add_argument(
        "--repeats",
        type=positive,
        default=DEFAULT_REPEATS,
        help=f"timed runs per size and method; best kept ({DEFAULT_REPEATS})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="empty the bot tables even if the database already holds queued tweets",
    )
    return parser.parse_args(argv)


def _run(*, sizes: tuple[int, ...], repeats: int, wipe: bool) -> dict[str, Any]:
    import django

    django.setup()

    refused = migrate_or_refuse(wipe=wipe)
    if refused:
        return refused
    try:
        _once(_bulk, min(sizes))  # imports, first connections, unreported
        results: dict[str, dict[str, Any]] = {}
        for size in sizes:
            runs: dict[str, list[Run]] = {method: [] for method in METHODS}
            # Interleaved so that drift in machine load hits both methods alike.
            for _ in range(repeats):
                runs["bulk"].append(_once(_bulk, size))
                runs["per_row"].append(_once(_per_row, size))
            results[str(size)] = {
                method: {
                    "seconds": min(run.seconds for run in done),
                    "queries": done[0].queries,
                    "queries_same_every_run": len({run.queries for run in done}) == 1,
                    "all_checks_passed": all(run.ok for run in done),
                }
                for method, done in runs.items()
            }
    finally:
        wipe_bot_tables()
    return {
        "environment": machine(),
        "settings": {"rows": list(sizes), "repeats": repeats, "left_alone_share": 0.1},
        "results": results,
    }


def _once(retry: Callable[[], None], size: int) -> Run:
    """Seed ``size`` failed tweets (and some to leave alone), retry them, check."""
    from django.db import connection

    wipe_bot_tables()
    _seed(size)
    counter = QueryCounter()
    with connection.execute_wrapper(counter):
        started = time.perf_counter()
        retry()
        seconds = time.perf_counter() - started
    return Run(seconds, counter.count, _checked(size))


def _bulk() -> None:
    from bot.models import Channel, FailedTweet
    from bot.services.dead_letters import dead_letters_retry

    dead_letters_retry(
        FailedTweet.objects.all(), actor="bench", channel=Channel.ADMIN, what="everything"
    )


def _per_row() -> None:
    from bot.models import Channel, FailedTweet
    from bot.services.dead_letters import dead_letter_retry_now

    # The loop an admin action over the list would be: one service call per row.
    for failure_id in FailedTweet.objects.order_by("id").values_list("id", flat=True):
        dead_letter_retry_now(failure_id, actor="bench", channel=Channel.ADMIN)


def _seed(size: int) -> None:
    from django.utils import timezone

    from bot.models import FailedTweet, QueuedTweet, Source, Status

    now = timezone.now()
    alone = max(1, size // 10)
    statuses = [Status.FAILED] * size + [Status.POSTED, Status.UNKNOWN] * (alone // 2 + 1)
    statuses = statuses[: size + alone]
    tweets = [
        QueuedTweet(
            target_tweet_id=str(ID_BASE + index),
            author_id=str(ID_BASE + index % 300),
            author_username=f"author{index % 300:05d}",
            text=f"a question worth answering (#{index})",
            tweet_created_at=now - timedelta(hours=2),
            source=Source.MENTION,
            summoned=True,
            status=status,
            draft=f"An answer worth sending (#{index}).",
            **approved_by_owner(now - timedelta(hours=1)),
            attempts=3,
            claimed_at=now if status != Status.FAILED else None,
        )
        for index, status in enumerate(statuses)
    ]
    bulk_seed(QueuedTweet, tweets, batch_size=500)
    saved = QueuedTweet.objects.order_by("id").values_list("id", "target_tweet_id")
    bulk_seed(
        FailedTweet,
        (
            FailedTweet(
                queued_tweet_id=tweet_id,
                target_tweet_id=target,
                stage="draft" if index % 2 else "publish",
                error="X refused the reply: 400 Bad Request",
                error_kind="permanent",
                next_retry_at=now + timedelta(minutes=5),
            )
            for index, (tweet_id, target) in enumerate(saved)
        ),
        batch_size=500,
    )


def _checked(size: int) -> bool:
    from django.db.models import Count

    from bot.models import FailedTweet, FailedTweetStatus, QueuedTweet, Status

    back = dict(
        QueuedTweet.objects.filter(failure__status=FailedTweetStatus.RETRYING)
        .values_list("failure__stage")
        .order_by()
        .annotate(n=Count("id"))
    )
    moved = QueuedTweet.objects.filter(status__in=[Status.NEW, Status.APPROVED]).count()
    left = QueuedTweet.objects.filter(status__in=[Status.POSTED, Status.UNKNOWN]).count()
    untouched = FailedTweet.objects.filter(
        queued_tweet__status__in=[Status.POSTED, Status.UNKNOWN], status=FailedTweetStatus.PENDING
    ).count()
    drafts = QueuedTweet.objects.filter(status=Status.NEW, failure__stage="draft").count()
    return (
        moved == size == sum(back.values())
        and drafts == back.get("draft", 0)
        and left == untouched == max(1, size // 10)
    )


# --- report ----------------------------------------------------------------------------------


def _render(report: dict[str, Any]) -> str:
    refused = refused_line("Dead-letter retry benchmark", report)
    if refused:
        return refused
    env = report["environment"]
    results = report["results"]
    lines = [
        f"Dead-letter retry on {env['database']}: every failed reply sent back at once",
        machine_line(env),
        f"best of {report['settings']['repeats']}; a tenth more rows that must be left alone "
        "(posted, outcome unknown)",
        "",
        f"  {'rows':>8}  {'method':<30}{'queries':>10}{'seconds':>10}{'rows / s':>12}",
    ]
    labels = {
        "bulk": "bulk (dead_letters_retry)",
        "per_row": "per row (dead_letter_retry_now)",
    }
    for size, methods in results.items():
        for method in METHODS:
            r = methods[method]
            rate = int(size) / r["seconds"] if r["seconds"] else float("inf")
            lines.append(
                f"  {int(size):>8,}  {labels[method]:<30}{r['queries']:>10,}"
                f"{r['seconds']:>10.3f}{rate:>12,.0f}"
            )
        bulk, loop = methods["bulk"], methods["per_row"]
        lines.append(
            f"  {'':>8}  {'per row / bulk':<30}{loop['queries'] / bulk['queries']:>9,.0f}x"
            f"{loop['seconds'] / bulk['seconds']:>9,.0f}x"
        )
    lines.append("")
    bulk_queries = {methods["bulk"]["queries"] for methods in results.values()}
    checks = all(
        methods[m]["all_checks_passed"] and methods[m]["queries_same_every_run"]
        for methods in results.values()
        for m in METHODS
    )
    lines.append(
        verdict(
            len(bulk_queries) == 1,
            f"bulk queries the same at every size: {', '.join(map(str, bulk_queries))}",
        )
    )
    lines.append(verdict(checks, "every failed reply back at its stage, the others left alone"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
