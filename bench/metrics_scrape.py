"""How long a Prometheus scrape of ``/metrics`` takes with a big queue.

Run from the project root; it uses a throwaway SQLite database unless DATABASE_URL
is set::

    .venv/bin/python -m bench.metrics_scrape [--queue-sizes 1000,100000] [--scrapes N]
                                             [--json] [--wipe]

For each queue size the pipeline tables are emptied and filled (``bulk_create``) with
that many queued tweets in a realistic mix of statuses (mostly posted, skipped and
expired; some approved and due, so the publish lag has rows to look at), a dead-letter
row for each failed one, 200 alert events and the breakers' call counts. Then
``/metrics`` is scraped N times through Django's test client (the whole view: token
check, every collector, the text rendering), after one warm-up scrape.

In one run it measures, per queue size: the scrape's wall time (p50, p99, max), the
database queries one scrape issues (``connection.execute_wrapper``) and the size of the
answer. It checks that the scrape counted every row, prints a table and always exits
0: it measures, it does not test.

It empties every table of the ``bot`` app and the alert table in the database it runs
on. On a database that already holds queued tweets it refuses unless ``--wipe`` is
given: point it at a database of its own.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import timedelta
from typing import Any

from bench.common import (
    QueryCounter,
    analyze,
    bench_environment,
    bulk_seed,
    machine,
    machine_line,
    migrate_or_refuse,
    number_list,
    percentile,
    positive,
    refused_line,
    wipe_bot_tables,
)

DEFAULT_QUEUE_SIZES = (1000, 100_000)
DEFAULT_SCRAPES = 30
SEED = 20261201
PREFILL_ID_BASE = 9_100_000_000_000_000_000
# The mix of a queue after months of use: what is left behind is mostly settled.
MIX = [
    ("posted", 40),
    ("skipped", 25),
    ("expired", 15),
    ("rejected", 8),
    ("handoff", 4),
    ("failed", 3),
    ("approved", 2),
    ("pending", 2),
    ("new", 1),
]
ALERTS = 200


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with bench_environment() as scratch:
        report = _run(queue_sizes=args.queue_sizes, scrapes=args.scrapes, wipe=args.wipe or scratch)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_render(report))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.metrics_scrape",
        description="Wall time and queries of one /metrics scrape with a big queue.",
    )
    parser.add_argument(
        "--queue-sizes",
        type=lambda text: number_list(text, low=0),
        default=DEFAULT_QUEUE_SIZES,
        help="queued tweets to fill the queue with, comma-separated (1000,100000)",
    )
    parser.add_argument(
        "--scrapes", type=positive, default=DEFAULT_SCRAPES, help="timed scrapes per size (30)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="empty the pipeline tables even if the database already holds queued tweets",
    )
    return parser.parse_args(argv)


def _run(*, queue_sizes: tuple[int, ...], scrapes: int, wipe: bool) -> dict[str, Any]:
    import django

    django.setup()

    from django.conf import settings

    refused = migrate_or_refuse(wipe=wipe, what="the pipeline tables")
    if refused:
        return refused
    settings.METRICS_TOKEN = ""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # Django's test client
    sizes = []
    try:
        for size in queue_sizes:
            _wipe()
            started = time.perf_counter()
            _prefill(size)
            filled = time.perf_counter() - started
            sizes.append({"queue_size": size, "fill_seconds": filled, **_scrape(size, scrapes)})
    finally:
        _wipe()
    return {
        "environment": machine(),
        "settings": {"queue_sizes": list(queue_sizes), "scrapes": scrapes},
        "sizes": sizes,
    }


def _scrape(size: int, scrapes: int) -> dict[str, Any]:
    from django.db import connection
    from django.test import Client

    client = Client()
    first = client.get("/metrics")  # warm-up: imports, the first connection
    body = first.content.decode()
    counter = QueryCounter()
    times = []
    with connection.execute_wrapper(counter):
        for _ in range(scrapes):
            start = time.perf_counter()
            response = client.get("/metrics")
            times.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"/metrics answered {response.status_code}")
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("replyguy_queue_tweets{")
    )
    return {
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": percentile(times, 0.99) * 1000,
        "max_ms": max(times) * 1000,
        "queries_per_scrape": counter.count / scrapes,
        "bytes": len(first.content),
        "counted_every_row": int(counted) == size,
    }


def _wipe() -> None:
    from resilience.models import AlertCooldown, AlertEvent, CallCount

    wipe_bot_tables(AlertCooldown, AlertEvent, CallCount)


def _prefill(size: int) -> None:
    from django.utils import timezone

    from bot.models import FailedTweet, QueuedTweet, Source, Status
    from resilience.alerts import AlertKind
    from resilience.calls import calls_add
    from resilience.models import AlertEvent, AlertStatus

    rng = random.Random(SEED + size)
    now = timezone.now()
    statuses = [status for status, _ in MIX]
    weights = [share for _, share in MIX]
    approved = {Status.APPROVED, Status.PUBLISHING, Status.POSTED, Status.UNKNOWN, Status.HANDOFF}
    rows = []
    for index in range(size):
        status = Status(rng.choices(statuses, weights)[0])
        created = now - timedelta(seconds=rng.uniform(3600, 30 * 86400))
        rows.append(
            QueuedTweet(
                target_tweet_id=str(PREFILL_ID_BASE + index),
                author_id=str(index % 300),
                author_username=f"author{index % 300}",
                text=f"post {index}",
                tweet_created_at=created,
                source=Source.TARGET,
                status=status,
                draft="" if status in (Status.NEW, Status.SKIPPED) else f"reply {index}",
                approved_at=created if status in approved else None,
                approved_by="owner" if status in approved else "",
                scheduled_at=now - timedelta(minutes=rng.uniform(0, 90))
                if status == Status.APPROVED
                else None,
            )
        )
    bulk_seed(QueuedTweet, rows)
    failed = QueuedTweet.objects.filter(status=Status.FAILED).only("id", "target_tweet_id")
    bulk_seed(
        FailedTweet,
        [
            FailedTweet(
                queued_tweet=row,
                target_tweet_id=row.target_tweet_id,
                stage="publish",
                error="bench",
                error_kind="permanent",
                status=rng.choice(["pending", "exhausted", "resolved", "discarded"]),
            )
            for row in failed
        ],
    )
    kinds = [kind.value for kind in AlertKind]
    bulk_seed(
        AlertEvent,
        [
            AlertEvent(
                kind=rng.choice(kinds),
                subject=f"subject {i % 20}",
                message="bench",
                status=rng.choice([AlertStatus.SENT, AlertStatus.SENT, AlertStatus.FAILED]),
                repeats=rng.randrange(5),
            )
            for i in range(ALERTS)
        ],
    )
    for name in ("twitter_api", "ai_service", "telegram"):
        calls_add(name, ok=size, rejected=size // 100, last_ok_at=time.time())
    analyze(QueuedTweet)


def _render(report: dict[str, Any]) -> str:
    refused = refused_line("/metrics scrape benchmark", report)
    if refused:
        return refused
    env = report["environment"]
    cfg = report["settings"]
    lines = [
        f"/metrics scrape on {env['database']}",
        f"{machine_line(env)}; {cfg['scrapes']} scrapes per size after one warm-up",
        "",
        f"{'queued tweets':>14}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}"
        f"{'queries':>10}{'bytes':>9}{'fill s':>9}  all rows counted",
    ]
    for size in report["sizes"]:
        lines.append(
            f"{size['queue_size']:>14,}{size['p50_ms']:>10.1f}{size['p99_ms']:>10.1f}"
            f"{size['max_ms']:>10.1f}{size['queries_per_scrape']:>10.0f}{size['bytes']:>9,}"
            f"{size['fill_seconds']:>9.1f}  {'yes' if size['counted_every_row'] else 'NO'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
