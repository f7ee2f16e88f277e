"""Posts read from our own timeline over a simulated day: the current code against the old.

Run from the project root; it uses a throwaway SQLite database unless DATABASE_URL
is set, and starts the X, OpenAI-compatible and Telegram stand-ins in-process::

    .venv/bin/python -m bench.timeline_reads [--hours H] [--our-posts-per-day 30,100]
                                             [--replies-per-day R] [--json] [--wipe]

X bills every post it returns; reading our own timeline is an owned read, $0.001 a
post. Reconcile reads our timeline on every pass while anything is watched, and a
handed-off reply is watched for three days whether or not the owner ever posts it.

For each N of ``--our-posts-per-day`` one simulated day (``time_machine``, no sleeping)
runs against the sandbox over real HTTP:

- before the day: a reply of ours from earlier, and a reply handed off to the owner
  30 minutes before the day starts, which the owner never posts (so it stays watched);
  both timeline cursors are brought up to date, uncounted;
- during the day: the owner posts N posts of their own (not replies) spread evenly
  over the day; R summoned replies a day (default 4) are approved and due at once,
  spread evenly too; every minute ``bot.tasks.publish`` runs (a pass with a reply due
  refreshes our replies before it publishes), every 2 minutes ``bot.tasks.reconcile``
  (both periods are the schedules' own, from ``bot.migrations.0002_schedules``).

Side by side, on the same sandbox state, it measures the posts X returned on the
``user_tweets`` route (``XApp.posts_returned``):

(a) the current code: ``reconcile`` and ``publish_due`` reading through the resumable
    cursor (``our_replies_refresh``), pass by pass;
(b) the old read, reproduced here (``old_refresh``): at every reconcile pass one page
    of our newest 100 posts since a cursor that moves only to the newest reply seen.
    The old code read our timeline only in reconcile, so (b) runs at reconcile passes
    only, right after (a)'s; it writes nothing, so (a) never sees its work.

It checks, by post id, that (a) read each of our posts of the day exactly once, prints
a verdict per target and always exits 0: it measures, it does not test.

It empties every table of the ``bot`` app in the database it runs on; on a database
that already holds queued tweets it refuses unless ``--wipe`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bench.common import (
    approved_by_owner,
    bench_environment,
    machine,
    machine_line,
    migrate_or_refuse,
    number_list,
    positive,
    refused_line,
    reply_due,
    verdict,
    wipe_bot_tables,
)

if TYPE_CHECKING:
    from bot.clients.x import Page, XClient
    from sandbox.harness import Sandbox

DEFAULT_HOURS = 24
DEFAULT_OUR_POSTS = (30, 100)
DEFAULT_REPLIES_PER_DAY = 4
# A handed-off reply is watched for 3 days (bot.policy.WATCH_SENT_FOR); past that
# nothing is left to reconcile and neither side reads.
MAX_HOURS = 72
MAX_POSTS_PER_DAY = 2000
OWNED_READ_USD = 0.001
OUR_TIMELINE = "user_tweets"
HANDED_OFF_BEFORE = timedelta(minutes=30)
# The old reconcile read our timeline while a handoff was this young or a row unknown.
OLD_HANDOFF_WATCH = timedelta(days=3)
CURRENT, OLD = "current", "old"


@dataclass
class OldCursor:
    """The old ``Cursor(source="our_replies")``: only a since_id, moved to our newest reply."""

    since_id: str | None = None


def old_would_read() -> bool:
    """The old reconcile's gate: an unknown outcome, or a handoff of the last 3 days."""
    from django.db.models import Q
    from django.utils import timezone

    from bot.models import QueuedTweet, Status

    since = timezone.now() - OLD_HANDOFF_WATCH
    return QueuedTweet.objects.filter(
        Q(status=Status.UNKNOWN) | Q(status=Status.HANDOFF, updated_at__gte=since)
    ).exists()


def old_refresh(x: XClient, cursor: OldCursor) -> list[str]:
    """What reconcile did before the resumable cursor: one page, replies kept.

    ``x.our_posts(since_id=cursor)`` (one page of up to 100, newest first), keep the
    replies, move the cursor to the newest reply. Posts that are not replies never move
    it, so every pass reads them again. Returns the reply ids (the old code stored them).
    """
    page = x.our_posts(since_id=cursor.since_id)
    replies = [post.id for post in page.posts if post.is_reply]
    if replies:
        cursor.since_id = max(replies, key=int)
    return replies


@dataclass
class Side:
    """One way of reading our timeline over the day: posts read per pass."""

    name: str
    passes: list[int] = field(default_factory=list)  # posts read, per pass that read
    kinds: Counter[str] = field(default_factory=Counter)  # passes per stage
    requests: int = 0
    ids: list[str] = field(default_factory=list)  # every post id it was given
    per_hour: Counter[int] = field(default_factory=Counter)
    last_read: float | None = None  # sandbox time of its last request


class _Reads:
    """Counts what each side reads: posts per pass from the sandbox, ids from the client."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.app = sandbox.x
        self.reader: Side | None = None
        self.calls = 0

    def returned(self) -> int:
        with self.app.lock:
            return self.app.posts_returned.get(OUR_TIMELINE, 0)

    @contextmanager
    def one_pass(self, side: Side, kind: str, hour: int) -> Iterator[None]:
        """Note the posts read in this pass; a pass that made no request is not one."""
        before, calls = self.returned(), self.calls
        self.reader = side
        try:
            yield
        finally:
            self.reader = None
        requests = self.calls - calls
        if requests:
            read = self.returned() - before
            side.passes.append(read)
            side.kinds[kind] += 1
            side.requests += requests
            side.per_hour[hour] += read
            side.last_read = self.app.clock()

    def wrap(self, our_posts: Callable[..., Page]) -> Callable[..., Page]:
        def recording(client: XClient, **kwargs: Any) -> Page:
            page = our_posts(client, **kwargs)
            self.calls += 1
            if self.reader is not None:
                self.reader.ids += [post.id for post in page.posts]
            return page

        return recording


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with bench_environment() as scratch:
        report = _run(
            hours=args.hours,
            our_posts=args.our_posts_per_day,
            replies_per_day=args.replies_per_day,
            wipe=args.wipe or scratch,
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_render(report))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.timeline_reads",
        description="Posts read from our own timeline per pass over a day, current vs old.",
    )
    parser.add_argument(
        "--hours",
        type=_hours,
        default=DEFAULT_HOURS,
        help=f"length of the simulated day, at most {MAX_HOURS} ({DEFAULT_HOURS})",
    )
    parser.add_argument(
        "--our-posts-per-day",
        type=_counts,
        default=DEFAULT_OUR_POSTS,
        help="the owner's own posts a day, comma-separated; one day each (30,100)",
    )
    parser.add_argument(
        "--replies-per-day",
        type=positive,
        default=DEFAULT_REPLIES_PER_DAY,
        help=f"approved replies that fall due a day, sent by the API ({DEFAULT_REPLIES_PER_DAY})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="empty the pipeline tables even if the database already holds queued tweets",
    )
    return parser.parse_args(argv)


def _hours(text: str) -> int:
    value = positive(text)
    if value > MAX_HOURS:
        raise argparse.ArgumentTypeError(f"at most {MAX_HOURS} (the handoff's watch), got {value}")
    return value


def _counts(text: str) -> tuple[int, ...]:
    return number_list(text, low=1, high=MAX_POSTS_PER_DAY)


def _periods() -> tuple[int, int]:
    """Minutes between reconcile passes and between publish passes, from the schedules."""
    schedules = importlib.import_module("bot.migrations.0002_schedules").SCHEDULES
    every = dict(schedules.values())
    return every["bot.tasks.reconcile"], every["bot.tasks.publish"]


def _run(
    *, hours: int, our_posts: tuple[int, ...], replies_per_day: int, wipe: bool
) -> dict[str, Any]:
    import django

    django.setup()

    from django.conf import settings

    from bench.pipeline import PACING
    from bot.clients.x import XClient
    from sandbox.harness import Sandbox

    refused = migrate_or_refuse(wipe=wipe, what="the pipeline tables")
    if refused:
        return refused
    reconcile_every, publish_every = _periods()
    days: dict[str, Any] = {}
    after: datetime | None = None
    original = XClient.our_posts
    with Sandbox() as sandbox:
        for name, value in {**sandbox.env(), **PACING}.items():
            setattr(settings, name, value)
        reads = _Reads(sandbox)
        XClient.our_posts = reads.wrap(original)  # type: ignore[method-assign]
        try:
            for n in our_posts:
                days[str(n)] = _day(
                    sandbox,
                    reads,
                    hours=hours,
                    our_posts_per_day=n,
                    replies_per_day=replies_per_day,
                    reconcile_every=reconcile_every,
                    publish_every=publish_every,
                    after=after,
                )
                after = datetime.fromisoformat(days[str(n)]["end"])
        finally:
            XClient.our_posts = original  # type: ignore[method-assign]
            wipe_bot_tables(breakers=True)
    return _report(
        days,
        hours=hours,
        replies_per_day=replies_per_day,
        reconcile_every=reconcile_every,
        publish_every=publish_every,
    )


# --- one simulated day ----------------------------------------------------------------


def _day(
    sandbox: Sandbox,
    reads: _Reads,
    *,
    hours: int,
    our_posts_per_day: int,
    replies_per_day: int,
    reconcile_every: int,
    publish_every: int,
    after: datetime | None,
) -> dict[str, Any]:
    """One simulated day for N = ``our_posts_per_day``, starting later than ``after``.

    Each day starts after the one before ended: the sandbox's ids never go back in
    time (``XApp.reset`` keeps its last id), so a day replayed over the same hours
    would give the owner's scheduled posts ids below the ones handed out before.
    """
    import time_machine
    from django.core.cache import cache
    from django.utils import timezone

    from bot import tasks
    from bot.models import QueuedTweet, Status
    from bot.services.reconciling import our_replies_refresh
    from resilience import registry
    from sandbox.x_api import OUR_USERNAME

    wipe_bot_tables(breakers=True)
    cache.clear()
    registry.clear()
    sandbox.reset()
    start = max(timezone.now(), after or timezone.now()).replace(
        second=0, microsecond=0
    ) + timedelta(hours=3)
    minutes = hours * 60
    every = 24 * 60 / replies_per_day
    due = {round(every * (k + 0.5)) for k in range(int(hours * 60 // every) or 1)}
    due = {m for m in due if 1 <= m <= minutes}
    current, old = Side(CURRENT), Side(OLD)
    old_cursor = OldCursor()
    handed_off: list[str] = []
    with time_machine.travel(start - timedelta(hours=2), tick=False) as clock:
        asked = sandbox.x.publish("earlier", f"@{OUR_USERNAME} what did you mean by that?")
        sandbox.x.publish(OUR_USERNAME, "What I meant: retries need a clock.", reply_to=asked)
        clock.move_to(start - HANDED_OFF_BEFORE)
        handed_off.append(_hand_off(sandbox))
        clock.move_to(start)
        x = tasks.configured_x("timeline reads benchmark")
        if x is None:
            raise RuntimeError("the sandbox's X credentials are not set")
        # Both cursors caught up before the day, uncounted.
        our_replies_refresh(x)
        old_refresh(x, old_cursor)
        sandbox.x.schedule_posts(
            OUR_USERNAME,
            [
                f"Note {k + 1} of the day: small things about tests and queues."
                for k in range(our_posts_per_day * hours // 24)
            ],
            every_seconds=24 * 3600 / our_posts_per_day,
        )
        replies: list[str] = []
        reconcile_passes = 0
        for minute in range(1, minutes + 1):
            clock.move_to(start + timedelta(minutes=minute))
            hour = (minute - 1) // 60
            if minute in due:
                replies.append(reply_due(sandbox, len(replies)))
            if minute % publish_every == 0:
                with reads.one_pass(current, "publish", hour):
                    tasks.publish()
            if minute % reconcile_every == 0:
                reconcile_passes += 1
                with reads.one_pass(current, "reconcile", hour):
                    tasks.reconcile()
                if old_would_read():
                    with reads.one_pass(old, "reconcile", hour):
                        old_refresh(x, old_cursor)
        end = timezone.now()
        # Still at the end of the day: the owner's posts due by then are all on X.
        ours = {
            post.id: post.created_at
            for post in sandbox.x.posts_by(OUR_USERNAME)
            if post.created_at > start.timestamp()
        }
    statuses = dict(
        QueuedTweet.objects.filter(target_tweet_id__in=replies + handed_off).values_list(
            "target_tweet_id", "status"
        )
    )
    return {
        "our_posts_per_day": our_posts_per_day,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "our_posts_made": len(ours),
        "reconcile_passes": reconcile_passes,
        "replies_due": len(replies),
        "replies_posted": sum(statuses.get(t) == Status.POSTED for t in replies),
        "handoff_still_waiting": all(statuses.get(t) == Status.HANDOFF for t in handed_off),
        "sides": {side.name: _side_report(side, made=ours, hours=hours) for side in (current, old)},
    }


def _hand_off(sandbox: Sandbox) -> str:
    """A reply the API may not send (the author never summoned us), handed to the owner."""
    from django.utils import timezone

    from bot.models import QueuedTweet, Source, Status

    now = timezone.now()
    post_id = sandbox.x.publish("dana", "Circuit breakers in Django: worth it, or overkill?")
    QueuedTweet.objects.create(
        target_tweet_id=post_id,
        author_id=sandbox.x.add_user("dana"),
        author_username="dana",
        text="Circuit breakers in Django: worth it, or overkill?",
        tweet_created_at=now,
        source=Source.SEARCH,
        summoned=False,
        status=Status.HANDOFF,
        draft="Worth it once a second service is involved; keep the state shared.",
        variants=["Worth it once a second service is involved; keep the state shared."],
        draft_attempts=1,
        draft_version=1,
        **approved_by_owner(now),
        scheduled_at=now,
    )
    return post_id


# --- report ---------------------------------------------------------------------------


def _side_report(side: Side, *, made: dict[str, float], hours: int) -> dict[str, Any]:
    """``made``: our posts of the day, id -> time posted."""
    total = sum(side.passes)
    read = Counter(side.ids)
    return {
        "passes": len(side.passes),
        "passes_by_stage": dict(side.kinds),
        "requests": side.requests,
        "posts_read": total,
        "most_in_one_pass": max(side.passes, default=0),
        "per_pass": total / len(side.passes) if side.passes else 0.0,
        "per_post_of_ours": total / len(made) if made else 0.0,
        "cost_usd": total * OWNED_READ_USD,
        "cost_per_day_usd": total * OWNED_READ_USD * 24 / hours,
        "per_hour": [side.per_hour[h] for h in range(hours)],
        "distinct_posts_read": len(read),
        "posts_read_twice_or_more": sum(1 for n in read.values() if n > 1),
        # Posted before this side's last read and never read: missed, not merely late.
        "our_posts_missed": sum(
            1
            for post_id, posted in made.items()
            if post_id not in read and side.last_read is not None and posted <= side.last_read
        ),
        # Posted after its last read (nothing was watched any more, or the day ended).
        "our_posts_after_last_read": sum(
            1
            for post_id, posted in made.items()
            if post_id not in read and (side.last_read is None or posted > side.last_read)
        ),
        "read_outside_the_day": len(set(read) - set(made)),
    }


def _report(
    days: dict[str, Any],
    *,
    hours: int,
    replies_per_day: int,
    reconcile_every: int,
    publish_every: int,
) -> dict[str, Any]:
    counts = sorted(days, key=int)

    def side(n: str, name: str) -> dict[str, Any]:
        return days[n]["sides"][name]

    verdicts = {
        "current_reads_each_post_at_most_once": all(
            side(n, CURRENT)["posts_read_twice_or_more"] == 0
            and side(n, CURRENT)["read_outside_the_day"] == 0
            and side(n, CURRENT)["posts_read"] == side(n, CURRENT)["distinct_posts_read"]
            for n in counts
        ),
        "current_misses_none": all(side(n, CURRENT)["our_posts_missed"] == 0 for n in counts),
        "current_flat_as_posts_grow": all(
            side(n, CURRENT)["per_post_of_ours"] <= 1.0 for n in counts
        ),
        "current_reads_less_than_old": all(
            side(n, CURRENT)["posts_read"] < side(n, OLD)["posts_read"] for n in counts
        ),
        "day_as_planned": all(
            days[n]["replies_posted"] == days[n]["replies_due"] and days[n]["handoff_still_waiting"]
            for n in counts
        ),
    }
    return {
        "environment": machine(),
        "settings": {
            "hours": hours,
            "our_posts_per_day": [int(n) for n in counts],
            "replies_per_day": replies_per_day,
            "reconcile_every_minutes": reconcile_every,
            "publish_every_minutes": publish_every,
            "owned_read_usd": OWNED_READ_USD,
            "route": OUR_TIMELINE,
        },
        "days": days,
        "verdicts": verdicts,
    }


def _render(report: dict[str, Any]) -> str:
    refused = refused_line("Timeline reads benchmark", report)
    if refused:
        return refused
    env = report["environment"]
    cfg, days, ok = report["settings"], report["days"], report["verdicts"]
    counts = [str(n) for n in cfg["our_posts_per_day"]]
    lines = [
        f"Our timeline: posts read from X over a simulated {cfg['hours']} h, on {env['database']}",
        machine_line(env),
        f"One reply handed off 30 min before the start, never posted by the owner; "
        f"approved replies falling due and going by API: {cfg['replies_per_day']} a day; reconcile "
        f"every {cfg['reconcile_every_minutes']} min, publish every "
        f"{cfg['publish_every_minutes']} min; ${cfg['owned_read_usd']} per owned post read "
        f"({cfg['route']})",
        "",
        f"  {'our posts/day':<14}{'reader':<10}{'passes':>8}{'posts read':>12}{'max/pass':>10}"
        f"{'mean/pass':>11}{'per post':>10}{'$ per day':>11}",
    ]
    for n in counts:
        day = days[n]
        for name, label in ((CURRENT, "(a) now"), (OLD, "(b) old")):
            side = day["sides"][name]
            lines.append(
                f"  {n if name == CURRENT else '':<14}{label:<10}{side['passes']:>8,}"
                f"{side['posts_read']:>12,}{side['most_in_one_pass']:>10,}"
                f"{side['per_pass']:>11.3f}{side['per_post_of_ours']:>10.2f}"
                f"{side['cost_per_day_usd']:>11.3f}"
            )
    lines += [
        "",
        "  passes: the passes that asked X for our timeline. (a): reconcile passes while",
        "  anything is watched, publish passes with a reply due. (b): reconcile passes while",
        "  a handoff of the last 3 days or an unknown outcome waits (the old gate). per post:",
        "  posts read per post of ours made in the simulated time. $ per day: the total",
        "  scaled to 24 h.",
        "",
        "Targets",
    ]
    detail = "; ".join(
        f"N={n}: {days[n]['sides'][CURRENT]['posts_read']:,} read, "
        f"{days[n]['sides'][CURRENT]['distinct_posts_read']:,} distinct, of "
        f"{days[n]['our_posts_made']:,} posts of ours; "
        f"{days[n]['sides'][CURRENT]['posts_read_twice_or_more']} read twice"
        for n in counts
    )
    missed = "; ".join(
        f"N={n}: {days[n]['sides'][CURRENT]['our_posts_missed']} missed, "
        f"{days[n]['sides'][CURRENT]['our_posts_after_last_read']} posted after its last read"
        for n in counts
    )
    flat = ", ".join(
        f"{days[n]['sides'][CURRENT]['per_post_of_ours']:.2f} per post and at most "
        f"{days[n]['sides'][CURRENT]['most_in_one_pass']} a pass (old "
        f"{days[n]['sides'][OLD]['per_post_of_ours']:.2f} and "
        f"{days[n]['sides'][OLD]['most_in_one_pass']}) at N={n}"
        for n in counts
    )
    cheaper = ", ".join(
        f"${days[n]['sides'][CURRENT]['cost_per_day_usd']:.3f} vs "
        f"${days[n]['sides'][OLD]['cost_per_day_usd']:.3f} a day at N={n}"
        for n in counts
    )
    planned = ", ".join(
        f"N={n}: {days[n]['replies_posted']}/{days[n]['replies_due']} replies posted, handoff "
        + ("waiting" if days[n]["handoff_still_waiting"] else "NOT waiting")
        for n in counts
    )
    lines += [
        verdict(
            ok["current_reads_each_post_at_most_once"],
            f"(a) reads each of our posts from X at most once: {detail}",
        ),
        verdict(
            ok["current_misses_none"],
            f"(a) reads every post of ours made before its last read: {missed}",
        ),
        verdict(
            ok["current_flat_as_posts_grow"],
            f"(a) stays flat as N grows, at most 1 read per post of ours: {flat}",
        ),
        verdict(ok["current_reads_less_than_old"], f"(a) costs less than (b): {cheaper}"),
        verdict(ok["day_as_planned"], f"the day went as planned: {planned}"),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
