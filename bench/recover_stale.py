"""What ``manage.py recover_stale`` costs over a big queue: seconds and database queries.

Run from the project root; it uses a throwaway SQLite database unless DATABASE_URL is
set, and starts the X stand-in in-process (reconcile reads our timeline from it)::

    .venv/bin/python -m bench.recover_stale [--rows N] [--stale 1000,10000] [--json] [--wipe]

For each stale count S the bot tables are emptied and ``--rows`` rows (100,000) are
seeded with ``bulk_create``: S of them left behind by dead workers, in the mix below,
and the rest settled history (posted, skipped, rejected, expired). Of the replies
whose worker died mid-publish, half are on our timeline on X (the call got through)
and half are not. Then, on the same seeded rows:

1. ``recover_stale_tweets(dry_run=True)``: every step in one transaction rolled back,
   no X call;
2. ``recover_stale_tweets()``: the real pass, reading our timeline on the sandbox X.

Each is measured in wall seconds and database queries (``connection.execute_wrapper``),
with the seconds of each step from the report. The real pass is checked: every stale
row settled as its kind says (posted, approved again and re-paced, released).

It empties every table of the ``bot`` app in the database it runs on. On a database
that already holds queued tweets it refuses unless ``--wipe`` is given.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from bench.common import (
    QueryCounter,
    analyze,
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

if TYPE_CHECKING:
    from bot.services.recovery import RecoveryReport
    from sandbox.harness import Sandbox

DEFAULT_ROWS = 100_000
DEFAULT_STALE = (1_000, 10_000)
# Of the stale rows: (kind, share). Publishing rows whose lease ran out are by far the
# costliest (each is judged on its own, and half come back to be re-paced).
STALE_MIX: list[tuple[str, float]] = [
    ("publishing", 0.10),  # lease ran out mid-publish; half on our timeline
    ("unknown", 0.05),  # an ambiguous answer; not on our timeline
    ("draft", 0.40),  # new, under an expired draft lease
    ("dead_letter", 0.25),  # failed, its dead letter stuck retrying
    ("approval", 0.20),  # pending, its Telegram message never sent
]
HISTORY = ["posted", "skipped", "rejected", "expired"]
# A real pass reads our timeline newest first, at most 50 pages of 100 (the rest the
# next pass): the replies found on X are kept within that.
MAX_ON_X = 4_900
ID_BASE = 1_000_000_000_000_000_000
# Pacing as configured by default-ish owners: it spreads re-paced replies.
PACING: dict[str, Any] = {
    "MIN_DELAY_MINUTES": 2,
    "MAX_DELAY_MINUTES": 15,
    "QUIET_HOURS_START": 0,
    "QUIET_HOURS_END": 0,
    "MAX_POSTS_PER_HOUR": 10,
    "MAX_POSTS_PER_DAY": 100,
    "MIN_SPACING_MINUTES": 3,
    "REPLY_MODE": "auto",
    "PUBLISHING_PAUSED": False,
}


@dataclass
class Run:
    seconds: float
    queries: int
    report: dict[str, Any]


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with bench_environment() as scratch:
        report = _run(rows=args.rows, stale=args.stale, wipe=args.wipe or scratch)
    print(json.dumps(report, indent=2) if args.json else _render(report))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.recover_stale",
        description="Seconds and queries of recover_stale over a big queue.",
    )
    parser.add_argument(
        "--rows", type=positive, default=DEFAULT_ROWS, help=f"rows seeded ({DEFAULT_ROWS:,})"
    )
    parser.add_argument(
        "--stale",
        type=lambda text: number_list(text, low=1),
        default=DEFAULT_STALE,
        help="of those, rows left behind by dead workers, comma-separated (1000,10000)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="empty the bot tables even if the database already holds queued tweets",
    )
    args = parser.parse_args(argv)
    if max(args.stale) > args.rows:
        parser.error(f"--stale {max(args.stale):,} is more than --rows {args.rows:,}")
    return args


def _run(*, rows: int, stale: tuple[int, ...], wipe: bool) -> dict[str, Any]:
    import django

    django.setup()

    from django.conf import settings

    from sandbox.harness import Sandbox

    refused = migrate_or_refuse(wipe=wipe)
    if refused:
        return refused
    results: dict[str, Any] = {}
    with Sandbox() as sandbox:
        for name, value in {**sandbox.env(), **PACING}.items():
            setattr(settings, name, value)
        try:
            for count in stale:
                results[str(count)] = _measure(sandbox, rows=rows, stale=count)
        finally:
            wipe_bot_tables()
    return {
        "environment": machine(),
        "settings": {"rows": rows, "stale": list(stale), "mix": dict(STALE_MIX), "pacing": PACING},
        "results": results,
    }


def _measure(sandbox: Sandbox, *, rows: int, stale: int) -> dict[str, Any]:
    from django.core.cache import cache

    from bot.services.recovery import recover_stale_tweets
    from resilience import registry

    wipe_bot_tables()
    sandbox.reset()
    cache.clear()
    registry.clear()
    kinds = _seed(sandbox, rows=rows, stale=stale)
    dry = _timed(lambda: recover_stale_tweets(dry_run=True))
    real = _timed(recover_stale_tweets)
    return {
        "seeded": kinds,
        "dry_run": dry.__dict__,
        "real": real.__dict__,
        "checks": _checks(kinds, real.report),
        "spread": _spread(),
    }


def _timed(run: Callable[[], RecoveryReport]) -> Run:
    from django.db import connection

    counter = QueryCounter()
    with connection.execute_wrapper(counter):
        started = time.perf_counter()
        report = run()
        seconds = time.perf_counter() - started
    return Run(seconds=seconds, queries=counter.count, report=report.as_dict())


# --- seeding -----------------------------------------------------------------------------------


def _seed(sandbox: Sandbox, *, rows: int, stale: int) -> dict[str, int]:
    """``rows`` queued tweets, ``stale`` of them left behind in ``STALE_MIX``; per kind."""
    from django.utils import timezone

    from bot.models import (
        ApprovalMessage,
        FailedTweet,
        FailedTweetStatus,
        QueuedTweet,
        Source,
        Status,
    )
    from sandbox.x_api import OUR_USERNAME

    now = timezone.now()
    counts = {kind: int(stale * share) for kind, share in STALE_MIX}
    counts["history"] = rows - sum(counts.values())
    approved = approved_by_owner(now - timedelta(hours=2))
    lease_over = {
        "claimed_at": now - timedelta(minutes=40),
        "lease_until": now - timedelta(minutes=35),
        "sent_at": now - timedelta(minutes=40),
    }
    shapes: dict[str, dict[str, Any]] = {
        "publishing": {"status": Status.PUBLISHING, **approved, **lease_over},
        "unknown": {"status": Status.UNKNOWN, **approved, **lease_over},
        "draft": {"status": Status.NEW, "lease_until": now - timedelta(minutes=3)},
        "dead_letter": {"status": Status.FAILED, "last_error": "refused"},
        "approval": {"status": Status.PENDING},
    }
    made: list[QueuedTweet] = []
    index = 0
    for kind, n in counts.items():
        for _ in range(n):
            fields = shapes.get(kind) or {"status": HISTORY[index % len(HISTORY)]}
            made.append(
                QueuedTweet(
                    target_tweet_id=str(ID_BASE + index),
                    author_id=str(ID_BASE + 10_000_000 + index % 5000),
                    author_username=f"author{index % 5000:04d}",
                    text=f"a post about recovery (#{index})",
                    tweet_created_at=now - timedelta(hours=1),
                    source=Source.MENTION,
                    summoned=True,
                    draft="" if kind == "draft" else f"a reply (#{index})",
                    publish_request_id=uuid.uuid4() if kind in ("publishing", "unknown") else None,
                    **{**fields, **(approved if fields["status"] == "posted" else {})},
                )
            )
            index += 1
    bulk_seed(QueuedTweet, made, batch_size=2000)
    by_kind: dict[str, list[str]] = {}
    for row, kind in zip(made, _kinds(counts), strict=True):
        by_kind.setdefault(kind, []).append(row.target_tweet_id)
    ids = dict(
        QueuedTweet.objects.filter(status__in=[Status.FAILED, Status.PENDING]).values_list(
            "target_tweet_id", "id"
        )
    )
    bulk_seed(
        FailedTweet,
        [
            FailedTweet(
                queued_tweet_id=ids[target],
                target_tweet_id=target,
                stage="publish",
                error="refused",
                error_kind="permanent",
                status=FailedTweetStatus.RETRYING,
                last_retry_at=now - timedelta(hours=1),
            )
            for target in by_kind.get("dead_letter", [])
        ],
        batch_size=2000,
    )
    bulk_seed(
        ApprovalMessage,
        [
            ApprovalMessage(queued_tweet_id=ids[target], sending_until=now - timedelta(minutes=5))
            for target in by_kind.get("approval", [])
        ],
        batch_size=2000,
    )
    # Half the dead publishers got their reply out before dying: it is on our timeline.
    on_x = by_kind.get("publishing", [])[: min(MAX_ON_X, counts["publishing"] // 2)]
    for target in on_x:
        sandbox.x.publish(OUR_USERNAME, f"a reply to {target}", reply_to=target)
    counts["publishing_on_x"] = len(on_x)
    analyze(QueuedTweet, FailedTweet, ApprovalMessage)
    return counts


def _kinds(counts: dict[str, int]) -> list[str]:
    return [kind for kind, n in counts.items() if kind != "publishing_on_x" for _ in range(n)]


# --- checks and report ------------------------------------------------------------------------


def _checks(kinds: dict[str, int], report: dict[str, Any]) -> dict[str, bool]:
    actions = report["actions"]
    judged = kinds["publishing"] + kinds["unknown"]
    return {
        "every_lease_marked_unknown": actions["publishing_marked_unknown"] == kinds["publishing"],
        "found_on_x_posted": actions.get("reconciled_posted") == kinds["publishing_on_x"],
        "the_rest_requeued": actions.get("reconciled_requeued")
        == judged - kinds["publishing_on_x"],
        "drafts_requeued": actions["drafts_requeued"] == kinds["draft"],
        "dead_letters_released": actions["dead_letters_released"] == kinds["dead_letter"],
        "approval_messages_released": actions["approval_messages_released"] == kinds["approval"],
        "nothing_failed_or_skipped": not report["failed"] and not report["skipped"],
    }


def _spread() -> dict[str, Any]:
    """How the re-paced replies are spread: first and last time, most due in one hour."""
    from django.utils import timezone

    from bot.models import QueuedTweet, Status

    times = sorted(
        QueuedTweet.objects.filter(status=Status.APPROVED).values_list("scheduled_at", flat=True)
    )
    if not times:
        return {}
    now = timezone.now()
    hours: dict[int, int] = {}
    for when in times:
        hour = int((when - now).total_seconds() // 3600)
        hours[hour] = hours.get(hour, 0) + 1
    return {
        "requeued": len(times),
        "first_in_minutes": round((times[0] - now).total_seconds() / 60, 1),
        "last_in_days": round((times[-1] - now).total_seconds() / 86400, 1),
        "most_in_one_hour": max(hours.values()),
    }


def _render(report: dict[str, Any]) -> str:
    refused = refused_line("recover_stale benchmark", report)
    if refused:
        return refused
    env = report["environment"]
    cfg, results = report["settings"], report["results"]
    sizes = list(results)
    head = "".join(f"{f'{int(s):,} stale':>22}" for s in sizes)
    lines = [
        f"recover_stale over {cfg['rows']:,} queued tweets on {env['database']}",
        machine_line(env),
        "stale mix: " + ", ".join(f"{k} {v:.0%}" for k, v in cfg["mix"].items()),
        "",
        f"  {'':<28}{head}",
    ]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"  {label:<28}" + "".join(f"{cell(results[s]):>22}" for s in sizes))

    row("dry run: seconds", lambda r: f"{r['dry_run']['seconds']:.2f} s")
    row("dry run: queries", lambda r: f"{r['dry_run']['queries']:,}")
    row("real run: seconds", lambda r: f"{r['real']['seconds']:.2f} s")
    row("real run: queries", lambda r: f"{r['real']['queries']:,}")
    row("real: queries / stale row", lambda r: f"{r['real']['queries'] / _stale(r):.2f}")
    for step in results[sizes[0]]["real"]["report"]["steps"]:
        row(f"  {step}", lambda r, step=step: f"{r['real']['report']['steps'][step]:.2f} s")
    row("re-paced replies", lambda r: f"{r['spread'].get('requeued', 0):,}")
    row("  most due in one hour", lambda r: f"{r['spread'].get('most_in_one_hour', 0):,}")
    row("  last one in (days)", lambda r: f"{r['spread'].get('last_in_days', 0)}")
    lines.append("")
    for size in sizes:
        failed = [name for name, ok in results[size]["checks"].items() if not ok]
        actions = results[size]["real"]["report"]["actions"]
        text = f"{int(size):,} stale: every row settled as its kind says"
        lines.append(verdict(not failed, text + (f" (not: {', '.join(failed)})" if failed else "")))
        lines.append("        " + ", ".join(f"{k} {v:,}" for k, v in actions.items() if v))
    return "\n".join(lines)


def _stale(result: dict[str, Any]) -> int:
    return sum(n for kind, n in result["seeded"].items() if kind in dict(STALE_MIX))


if __name__ == "__main__":
    main()
