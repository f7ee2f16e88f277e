"""Posts per 15 minutes against X's write limit: how many the publish stage can send
unpaced, and that with pacing on it never sends more than X allows.

Run from the project root; it uses a throwaway SQLite database unless DATABASE_URL
is set, and starts the X, OpenAI-compatible and Telegram stand-ins in-process::

    .venv/bin/python -m bench.write_limit [--backlog N] [--hours H] [--json] [--wipe]

X lets one account create at most 100 posts per 15-minute window (``create_tweet``,
user scope); past that it answers 429 until the window resets. The sandbox's X keeps
the same window.

1. Unpaced, in real time: N approved replies (default 300, each to a different author
   who @mentioned us) are due at once, the sandbox's write limit is raised out of
   reach and every pacing rule is off (``bench.pipeline.PACING``). ``bot.tasks.publish``
   runs pass after pass, back to back, until every reply is out. Posts per 15 minutes =
   N / seconds x 900: what the publish stage's own code can send (against the
   zero-latency sandbox in this process), and so what pacing has to hold back.
2. Paced, in simulated time (``time_machine``, one minute at a time, nothing sleeps):
   the same backlog, the sandbox's X with its real limit, ``bot.tasks.publish`` every
   minute (its schedule) for H hours (default 6) from 09:00 local time, under:

   - ``defaults``: the settings' own pacing (4 an hour, 20 a day, 3 minutes apart,
     quiet hours 23 to 7, one reply per author a day);
   - ``at_x_limit``: the owner's caps raised as far as X's window allows (100 an hour,
     spacing 0, no daily cap in reach, no quiet hours);
   - ``off``: every pacing rule off, as in part 1, but against X's real limit: what X
     does when nothing paces us (the comparison, not a configuration to use).

   For each it counts, from the post times on the sandbox's X, the most of our
   replies inside any 15 minutes (a sliding window, so at least what any of X's fixed
   windows saw), the 429s X answered to ``create_tweet``, the replies posted and any
   post answered twice.

It prints a verdict per target and always exits 0: it measures, it does not test.
It empties every table of the ``bot`` app in the database it runs on; on a database
that already holds queued tweets it refuses unless ``--wipe`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import time
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from bench.common import (
    bench_environment,
    machine,
    machine_line,
    migrate_or_refuse,
    positive,
    refused_line,
    reply_due,
    verdict,
    wipe_bot_tables,
)

if TYPE_CHECKING:
    from sandbox.harness import Sandbox

DEFAULT_BACKLOG = 300
DEFAULT_HOURS = 6
MAX_BACKLOG = 5000
X_WRITE_LIMIT = 100  # posts per account per window
X_WINDOW = timedelta(minutes=15)
# Pacing as the owner may set it, per configuration of part 2 (on top of the settings).
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "at_x_limit": {
        "MIN_DELAY_MINUTES": 0,
        "MAX_DELAY_MINUTES": 0,
        "QUIET_HOURS_START": 0,
        "QUIET_HOURS_END": 0,
        "MAX_POSTS_PER_HOUR": X_WRITE_LIMIT,
        "MAX_POSTS_PER_DAY": 1_000_000,
        "MIN_SPACING_MINUTES": 0,
    },
    "off": {},  # bench.pipeline.PACING, filled in at run time
}
PACED = ("defaults", "at_x_limit")
PACING_NAMES = (
    "MIN_DELAY_MINUTES",
    "MAX_DELAY_MINUTES",
    "QUIET_HOURS_START",
    "QUIET_HOURS_END",
    "MAX_POSTS_PER_HOUR",
    "MAX_POSTS_PER_DAY",
    "MIN_SPACING_MINUTES",
    "MAX_REPLIES_PER_AUTHOR_PER_DAY",
)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with bench_environment() as scratch:
        report = _run(backlog=args.backlog, hours=args.hours, wipe=args.wipe or scratch)
    print(json.dumps(report, indent=2) if args.json else _render(report))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.write_limit",
        description="Posts per 15 minutes, unpaced and paced, against X's write limit.",
    )
    parser.add_argument(
        "--backlog",
        type=_backlog,
        default=DEFAULT_BACKLOG,
        help=f"approved replies due at once ({DEFAULT_BACKLOG})",
    )
    parser.add_argument(
        "--hours",
        type=positive,
        default=DEFAULT_HOURS,
        help=f"simulated hours per paced configuration ({DEFAULT_HOURS})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="empty the bot tables even if the database already holds queued tweets",
    )
    return parser.parse_args(argv)


def _backlog(text: str) -> int:
    value = positive(text)
    if value > MAX_BACKLOG:
        raise argparse.ArgumentTypeError(f"at most {MAX_BACKLOG}, got {value}")
    return value


def _run(*, backlog: int, hours: int, wipe: bool) -> dict[str, Any]:
    import django

    django.setup()

    from django.conf import settings

    from bench.pipeline import PACING
    from bot.services.publishing import publish_due
    from sandbox.harness import Sandbox

    refused = migrate_or_refuse(wipe=wipe)
    if refused:
        return refused
    configs = {**CONFIGS, "off": PACING}
    defaults = {name: getattr(settings, name) for name in PACING_NAMES}
    publish_every = _publish_every()
    per_pass = inspect.signature(publish_due).parameters["limit"].default
    with Sandbox() as sandbox:
        for name, value in sandbox.env().items():
            setattr(settings, name, value)
        try:
            _unpaced(sandbox, backlog=min(backlog, 40))  # imports, connections: unreported
            unpaced = _unpaced(sandbox, backlog=backlog)
            paced = {
                name: _paced(sandbox, {**defaults, **config}, backlog=backlog, hours=hours)
                for name, config in configs.items()
            }
        finally:
            wipe_bot_tables(breakers=True)
            for name, value in defaults.items():
                setattr(settings, name, value)
    return {
        "environment": machine(),
        "settings": {
            "backlog": backlog,
            "hours": hours,
            "x_write_limit": X_WRITE_LIMIT,
            "x_window_minutes": X_WINDOW.total_seconds() / 60,
            "publish_every_minutes": publish_every,
            "replies_per_pass": per_pass,
            # What the schedule alone allows: one pass a minute, at most this many a pass.
            "schedule_bound_per_window": per_pass * X_WINDOW.total_seconds() / 60 / publish_every,
            "pacing": {name: {**defaults, **config} for name, config in configs.items()},
        },
        "unpaced": unpaced,
        "paced": paced,
        "verdicts": {
            "paced_never_over_x_limit": all(
                paced[name]["most_in_15_minutes"] <= X_WRITE_LIMIT for name in PACED
            ),
            "paced_never_refused_by_x": all(paced[name]["x_429s"] == 0 for name in PACED),
            "nothing_answered_twice": unpaced["answered_twice"] == 0
            and all(run["answered_twice"] == 0 for run in paced.values()),
            "unpaced_all_posted": unpaced["posted"] == backlog,
        },
    }


def _publish_every() -> int:
    schedules = importlib.import_module("bot.migrations.0002_schedules").SCHEDULES
    return dict(schedules.values())["bot.tasks.publish"]


def _fresh(sandbox: Sandbox) -> None:
    from django.core.cache import cache

    from resilience import registry

    wipe_bot_tables(breakers=True)
    cache.clear()
    registry.clear()
    sandbox.reset()


def _unpaced(sandbox: Sandbox, *, backlog: int) -> dict[str, Any]:
    """The backlog through back-to-back publish passes, every limit out of reach."""
    from django.conf import settings

    from bench.pipeline import PACING
    from bot import tasks

    _fresh(sandbox)
    for name, value in PACING.items():
        setattr(settings, name, value)
    sandbox.x.set_limit("create_tweet", 1_000_000)
    batch = [reply_due(sandbox, index) for index in range(backlog)]
    passes = 0
    started = time.perf_counter()
    while True:
        passes += 1
        counts = tasks.publish()
        if not counts.get("claimed"):
            break
    seconds = time.perf_counter() - started
    outcome = _outcome(sandbox, batch)
    return {
        **outcome,
        "passes": passes,
        "seconds": seconds,
        "posts_per_second": outcome["posted"] / seconds,
        "posts_per_15_minutes": outcome["posted"] / seconds * X_WINDOW.total_seconds(),
    }


def _paced(sandbox: Sandbox, pacing: dict[str, Any], *, backlog: int, hours: int) -> dict[str, Any]:
    """The backlog under ``pacing`` for ``hours`` simulated hours, X's real limit on."""
    from zoneinfo import ZoneInfo

    import time_machine
    from django.conf import settings
    from django.utils import timezone

    from bot import tasks

    _fresh(sandbox)
    for name, value in pacing.items():
        setattr(settings, name, value)
    refusals = _count_refusals(sandbox)
    every = _publish_every()
    local = timezone.now().astimezone(ZoneInfo(settings.TIME_ZONE)) + timedelta(days=1)
    start = local.replace(hour=9, minute=0, second=0, microsecond=0)
    with time_machine.travel(start, tick=False) as clock:
        batch = [reply_due(sandbox, index, author="waiting") for index in range(backlog)]
        for minute in range(1, hours * 60 + 1):
            clock.move_to(start + timedelta(minutes=minute))
            if minute % every == 0:
                tasks.publish()
        outcome = _outcome(sandbox, batch)
    times = outcome.pop("times")
    return {
        **outcome,
        "x_429s": refusals["create_tweet"],
        "create_tweet_requests": sum(
            1 for endpoint, _ in sandbox.x.requests if endpoint == "create_tweet"
        ),
        "most_in_15_minutes": _most_in_window(times, X_WINDOW.total_seconds()),
        "most_in_one_hour": _most_in_window(times, 3600),
        "first_after_minutes": round((min(times) - start.timestamp()) / 60, 1) if times else None,
        "last_after_minutes": round((max(times) - start.timestamp()) / 60, 1) if times else None,
    }


def _count_refusals(sandbox: Sandbox) -> Counter[str]:
    """Count, per endpoint, the requests the sandbox's X refused for a spent window."""
    from sandbox.x_api import _Refusal

    app = sandbox.x
    refused: Counter[str] = Counter()
    spend = type(app)._spend

    def spending(endpoint: str, caller: Any) -> dict[str, str]:
        try:
            return spend(app, endpoint, caller)
        except _Refusal:
            refused[endpoint] += 1
            raise

    app._spend = spending  # type: ignore[method-assign]
    return refused


def _outcome(sandbox: Sandbox, batch: list[str]) -> dict[str, Any]:
    from bot.models import QueuedTweet
    from sandbox.x_api import OUR_USERNAME

    wanted = set(batch)
    replies = [post for post in sandbox.x.posts_by(OUR_USERNAME) if post.reply_to in wanted]
    answered = Counter(post.reply_to for post in replies)
    statuses = Counter(
        QueuedTweet.objects.filter(target_tweet_id__in=batch).values_list("status", flat=True)
    )
    return {
        "backlog": len(batch),
        "posted": len(answered),
        "answered_twice": sum(1 for n in answered.values() if n > 1),
        "statuses": dict(sorted(statuses.items())),
        "times": sorted(post.created_at for post in replies),
    }


def _most_in_window(times: list[float], seconds: float) -> int:
    """The most of ``times`` (sorted) inside any window of ``seconds``."""
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


# --- report ----------------------------------------------------------------------------


def _render(report: dict[str, Any]) -> str:
    refused = refused_line("Write limit benchmark", report)
    if refused:
        return refused
    env, cfg, ok = report["environment"], report["settings"], report["verdicts"]
    fast, paced = report["unpaced"], report["paced"]
    limit = cfg["x_write_limit"]
    lines = [
        f"Posts per 15 minutes against X's write limit ({limit} per 15 min) on {env['database']}",
        machine_line(env),
        f"backlog of {cfg['backlog']:,} approved replies due at once, each to its own author",
        "",
        "Unpaced, real time, write limit out of reach (publish passes back to back)",
        f"  {fast['posted']:,} posted in {fast['seconds']:.2f} s over {fast['passes']} passes: "
        f"{fast['posts_per_second']:.1f} posts/s = {fast['posts_per_15_minutes']:,.0f} "
        f"per 15 minutes ({fast['posts_per_15_minutes'] / limit:,.0f}x X's limit)",
        f"  as scheduled (one pass every {cfg['publish_every_minutes']} min, at most "
        f"{cfg['replies_per_pass']} a pass): at most {cfg['schedule_bound_per_window']:,.0f} "
        "per 15 minutes",
        "",
        f"Paced, simulated {cfg['hours']} h from 09:00, X's real limit on",
        f"  {'pacing':<12}{'per hour':>11}{'per day':>11}{'spacing':>8}{'posted':>8}"
        f"{'max/15 min':>11}{'max/hour':>9}{'429s':>6}{'writes':>8}  statuses",
    ]
    for name, run in paced.items():
        pacing = cfg["pacing"][name]
        statuses = ", ".join(f"{k} {v:,}" for k, v in run["statuses"].items())
        lines.append(
            f"  {name:<12}{pacing['MAX_POSTS_PER_HOUR']:>11,}{pacing['MAX_POSTS_PER_DAY']:>11,}"
            f"{pacing['MIN_SPACING_MINUTES']:>6} m{run['posted']:>8,}"
            f"{run['most_in_15_minutes']:>11,}{run['most_in_one_hour']:>9,}{run['x_429s']:>6,}"
            f"{run['create_tweet_requests']:>8,}  {statuses}"
        )
    most = ", ".join(f"{name} {paced[name]['most_in_15_minutes']}" for name in PACED)
    refusals = ", ".join(f"{name} {paced[name]['x_429s']}" for name in PACED)
    lines += [
        "  max/15 min: the most of our replies inside any 15 minutes (sliding); 429s: create_tweet",
        "  requests X refused for a spent window; writes: create_tweet requests sent.",
        "",
        "Targets",
        verdict(
            ok["paced_never_over_x_limit"],
            f"with pacing on, never more than {limit} posts in any 15 minutes: {most}",
        ),
        verdict(ok["paced_never_refused_by_x"], f"with pacing on, X never answers 429: {refusals}"),
        verdict(ok["nothing_answered_twice"], "no post answered twice, in any run"),
        verdict(
            ok["unpaced_all_posted"],
            f"unpaced, the whole backlog went out: {fast['posted']:,} of {cfg['backlog']:,}",
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
