"""What one tweet costs the pipeline: database queries and X posts read per stage, and
tweets per second.

Run from the project root; it uses a throwaway SQLite database unless DATABASE_URL
is set, and starts the X, OpenAI-compatible and Telegram stand-ins in-process::

    .venv/bin/python -m bench.pipeline [--posts N] [--queue-sizes 10,1000]
                                       [--repeats R] [--json] [--wipe]

For each queue size the pipeline tables are emptied and pre-filled with that many
unrelated rows (posted, skipped, rejected, expired and handed-off tweets of the last 30
days, with their audit rows), then N authors each @mention our account in the sandbox
and the batch goes through its whole lifecycle in one worker: the tasks of
``bot.tasks.STAGES`` in their order, with the owner's approvals (``reply_approve``)
after the draft stage. Each task runs pass after pass until a pass finds nothing to do,
as a worker draining a backlog would (draft and publish take 20 rows a pass).

In one run it measures:

1. every database query of each stage, counted with ``connection.execute_wrapper``,
   per tweet of the batch, side by side for each queue size;
2. the posts each stage read from X (X bills every post read), from the sandbox's
   ``posts_returned``: summed over its routes and for ``user_tweets`` (our own timeline)
   alone, per tweet of the batch and per pass, in the same counted lifecycle;
3. the wall time of each stage and of the whole lifecycle, best of R runs, as tweets
   per second through one worker against the zero-latency sandbox.

It checks that every post was answered exactly once, prints a verdict per target and
always exits 0: it measures, it does not test.

It empties every table of the ``bot`` app (queued tweets, dead letters, audit, cursors,
targets, our replies) in the database it runs on. On a database that already holds
queued tweets it refuses unless ``--wipe`` is given: point it at a database of its own.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bench.common import (
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
    from bot.models import QueuedTweet
    from sandbox.harness import Sandbox
    from sandbox.x_api import XApp

DEFAULT_POSTS = 200
DEFAULT_QUEUE_SIZES = (10, 1000)
DEFAULT_REPEATS = 3
# Discovery reads at most 50 pages of 100 a feed per pass; the sandbox's create_tweet
# cap is 10,000 a day per app.
MAX_POSTS = 5000
# A stage runs until a pass finds nothing to do; this bounds one that never settles.
MAX_PASSES = 1000
SEED = 20261128
# The sandbox route that serves our own timeline (an owned read, X's cheaper price).
OUR_TIMELINE = "user_tweets"

# Publish as soon as approved: no delay, no quiet hours, no spacing, caps out of reach.
PACING: dict[str, Any] = {
    "MIN_DELAY_MINUTES": 0,
    "MAX_DELAY_MINUTES": 0,
    "QUIET_HOURS_START": 0,
    "QUIET_HOURS_END": 0,
    "MAX_POSTS_PER_HOUR": 1_000_000,
    "MAX_POSTS_PER_DAY": 1_000_000,
    "MIN_SPACING_MINUTES": 0,
    "MAX_REPLIES_PER_AUTHOR_PER_DAY": 1_000,
    "REPLY_MODE": "auto",
    "PUBLISHING_PAUSED": False,
    "RELEVANCE_THRESHOLD": 0.0,
    "TOPIC_KEYWORDS": [],
}

# The unrelated rows a queue holds after a month of use: (status, share).
PREFILL_MIX: list[tuple[str, float]] = [
    ("skipped", 0.45),
    ("posted", 0.33),
    ("rejected", 0.10),
    ("expired", 0.09),
    # Approved replies to authors who had not summoned us, whose link the owner never used.
    ("handoff", 0.03),
]
PREFILL_DAYS = 30
# Pre-filled post ids sit far below the sandbox's snowflakes, so they never collide.
PREFILL_ID_BASE = 1_000_000_000_000_000_000
PREFILL_MESSAGE_BASE = 900_000_000

TOPICS = [
    "retries without sleeping",
    "select_for_update with skip_locked",
    "circuit breakers in Django",
    "idempotent task queues",
    "migrations on a busy table",
    "testing against a fake API",
]
# The model stand-in writes a reply from the post's longest words, and X refuses a
# reply identical to one we posted before: each post carries six words of its own.
STEMS = ["retrying", "locking", "breaking", "queueing", "migrating", "sandboxing"]


@dataclass
class Tally:
    """The queries one stage issued."""

    count: int = 0
    reads: int = 0
    breaker: int = 0
    shapes: Counter[str] = field(default_factory=Counter)


@dataclass
class StageRun:
    passes: int
    seconds: float
    tally: Tally | None
    # Posts read from X in each pass, per sandbox route (counted lifecycles only).
    reads: list[Counter[str]] | None = None


class _ReadMeter:
    """Posts the sandbox's X put in its answers (``posts_returned``), pass by pass."""

    def __init__(self, app: XApp) -> None:
        self.app = app
        self.passes: list[Counter[str]] = []

    def _returned(self) -> Counter[str]:
        with self.app.lock:
            return Counter(self.app.posts_returned)

    @contextmanager
    def one_pass(self) -> Iterator[None]:
        before = self._returned()
        try:
            yield
        finally:
            self.passes.append(self._returned() - before)


@dataclass
class Lifecycle:
    queue_size: int
    posts: int
    stages: dict[str, StageRun]
    posted: int
    replies: int
    replied_twice: int
    # Posts of ours on the sandbox's X at the end: each may be read once, no more.
    our_posts: int = 0

    @property
    def seconds(self) -> float:
        return sum(stage.seconds for stage in self.stages.values())

    @property
    def counted(self) -> bool:
        return any(stage.tally is not None for stage in self.stages.values())

    @property
    def complete(self) -> bool:
        return self.posted == self.replies == self.posts and self.replied_twice == 0


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with bench_environment() as scratch:
        report = _run(
            posts=args.posts,
            queue_sizes=args.queue_sizes,
            repeats=args.repeats,
            wipe=args.wipe or scratch,
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_render(report))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description="Database queries per tweet and tweets per second through the pipeline.",
    )
    parser.add_argument(
        "--posts",
        type=_posts,
        default=DEFAULT_POSTS,
        help=f"posts in the batch, from distinct authors ({DEFAULT_POSTS})",
    )
    parser.add_argument(
        "--queue-sizes",
        type=_sizes,
        default=DEFAULT_QUEUE_SIZES,
        help="unrelated rows already in the queue, comma-separated (10,1000)",
    )
    parser.add_argument(
        "--repeats",
        type=positive,
        default=DEFAULT_REPEATS,
        help=f"timed lifecycles per queue size; best kept ({DEFAULT_REPEATS})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="empty the pipeline tables even if the database already holds queued tweets",
    )
    return parser.parse_args(argv)


def _posts(text: str) -> int:
    value = positive(text)
    if value > MAX_POSTS:
        raise argparse.ArgumentTypeError(f"at most {MAX_POSTS}, got {value}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    return number_list(text, low=0)


def _run(*, posts: int, queue_sizes: tuple[int, ...], repeats: int, wipe: bool) -> dict[str, Any]:
    import django

    django.setup()

    from django.conf import settings

    from sandbox.harness import Sandbox

    refused = migrate_or_refuse(wipe=wipe, what="the pipeline tables")
    if refused:
        return refused

    with Sandbox() as sandbox:
        for name, value in {**sandbox.env(), **PACING}.items():
            setattr(settings, name, value)
        try:
            # Imports, first connections and the interpreter's specialisation, unreported.
            _lifecycle(sandbox, queue_size=min(queue_sizes), posts=min(posts, 20), count=False)
            counted = {
                size: _lifecycle(sandbox, queue_size=size, posts=posts, count=True)
                for size in queue_sizes
            }
            timed: dict[int, list[Lifecycle]] = {size: [] for size in queue_sizes}
            # Interleaved so that drift in machine load hits every size alike.
            for _ in range(repeats):
                for size in queue_sizes:
                    timed[size].append(
                        _lifecycle(sandbox, queue_size=size, posts=posts, count=False)
                    )
        finally:
            _wipe()
    return _report(counted, timed, posts=posts, repeats=repeats)


# --- one lifecycle ---------------------------------------------------------------------


def _lifecycle(sandbox: Sandbox, *, queue_size: int, posts: int, count: bool) -> Lifecycle:
    """A fresh queue of ``queue_size`` unrelated rows, then ``posts`` new posts end to end."""
    from django.db import connection

    from resilience import registry
    from sandbox.x_api import OUR_USERNAME

    _wipe()
    _prefill(queue_size)
    registry.clear()
    batch = _summon(sandbox, posts)

    stages: dict[str, StageRun] = {}
    for name, stage in _stages(batch):
        tally = Tally() if count else None
        meter = _ReadMeter(sandbox.x) if count else None
        wrapper = connection.execute_wrapper(_Counter(tally)) if tally else nullcontext()
        with wrapper:
            started = time.perf_counter()
            passes = stage(meter)
            seconds = time.perf_counter() - started
        stages[name] = StageRun(passes, seconds, tally, meter.passes if meter else None)
    posted, replies, replied_twice = _outcome(sandbox, batch)
    our_posts = len(sandbox.x.posts_by(OUR_USERNAME))
    return Lifecycle(queue_size, posts, stages, posted, replies, replied_twice, our_posts)


def _stages(batch: list[str]) -> list[tuple[str, Callable[[_ReadMeter | None], int]]]:
    """``bot.tasks.STAGES`` in order, with the owner's approvals after the draft stage.

    Each task runs pass after pass until a pass finds nothing to do (that idle pass
    included), as a worker draining a backlog would. Returns (stage, run it -> passes);
    a meter given to the run notes the posts read from X in each pass.
    """
    from bot import tasks
    from bot.models import Channel, QueuedTweet, Status
    from bot.services.review import reply_approve

    def approve(meter: _ReadMeter | None) -> int:
        with meter.one_pass() if meter else nullcontext():
            _approve_all()
        return 1

    def _approve_all() -> None:
        # The owner's list of what waits, then one decision per row; each decision loads
        # its row first, as the admin and Telegram handlers do.
        waiting = list(
            QueuedTweet.objects.filter(status=Status.PENDING, target_tweet_id__in=batch)
            .order_by("id")
            .values_list("id", flat=True)
        )
        for tweet_id in waiting:
            tweet = QueuedTweet.objects.get(id=tweet_id)
            reply_approve(
                tweet, actor="owner", channel=Channel.TELEGRAM, version=tweet.draft_version
            )

    stages: list[tuple[str, Callable[[_ReadMeter | None], int]]] = []
    for name, task in tasks.STAGES:
        stages.append((name, _drain(task)))
        if name == "draft":
            stages.append(("approve", approve))
    return stages


def _drain(task: Callable[[], dict[str, int]]) -> Callable[[_ReadMeter | None], int]:
    def run(meter: _ReadMeter | None) -> int:
        for passes in range(1, MAX_PASSES + 1):
            with meter.one_pass() if meter else nullcontext():
                counts = task()
            # "waiting" means the service is down: nothing will move this pass or the next.
            if not any(value for key, value in counts.items() if key != "waiting"):
                return passes
        return MAX_PASSES

    return run


def _summon(sandbox: Sandbox, posts: int) -> list[str]:
    """``posts`` distinct authors each @mention our account: X lets us answer by API."""
    from sandbox.x_api import OUR_USERNAME

    sandbox.reset()
    # X's per-user window allows 100 replies in 15 minutes; a batch must not wait on it.
    sandbox.x.set_limit("create_tweet", 1_000_000)
    sandbox.x.set_limit("user_mentions", 1_000_000)
    return [
        sandbox.x.publish(
            f"author{index:05d}",
            f"@{OUR_USERNAME} how do you handle {TOPICS[index % len(TOPICS)]}? "
            + " ".join(f"{stem}{_letters(index)}" for stem in STEMS),
        )
        for index in range(posts)
    ]


def _letters(number: int) -> str:
    """A distinct run of letters per number: the model stand-in ignores digits."""
    letters = ""
    for _ in range(4):
        number, digit = divmod(number, 26)
        letters = chr(ord("a") + digit) + letters
    return letters


def _outcome(sandbox: Sandbox, batch: list[str]) -> tuple[int, int, int]:
    """(rows posted, replies on X, posts answered more than once) for the batch."""
    from bot.models import QueuedTweet, Status
    from sandbox.x_api import OUR_USERNAME

    wanted = set(batch)
    posted = QueuedTweet.objects.filter(target_tweet_id__in=batch, status=Status.POSTED).count()
    answered = Counter(
        post.reply_to for post in sandbox.x.posts_by(OUR_USERNAME) if post.reply_to in wanted
    )
    return posted, sum(answered.values()), sum(1 for n in answered.values() if n > 1)


# --- the queue around the batch -----------------------------------------------------------


def _wipe() -> None:
    """Every table of the bot app, and the configured breakers' rows."""
    wipe_bot_tables(breakers=True)


def _prefill(size: int) -> None:
    """``size`` rows the batch has nothing to do with, spread over the last 30 days."""
    from django.utils import timezone

    from bot.models import ApprovalMessage, Channel, Decision, QueuedTweet, Status

    rng = random.Random(SEED + size)
    now = timezone.now()
    statuses = [status for status, _ in PREFILL_MIX]
    weights = [share for _, share in PREFILL_MIX]
    rows: list[QueuedTweet] = []
    for index in range(size):
        status = Status(rng.choices(statuses, weights)[0])
        # At least 6 hours old, so every later step of its story is in the past too.
        created = now - timedelta(seconds=rng.uniform(6 * 3600, PREFILL_DAYS * 86400))
        rows.append(_old_row(index, status, created, rng))
    # bulk_create stamps auto_now(_add) fields with now, on the objects too; the history
    # is put back afterwards.
    history = [(row.created_at, row.updated_at) for row in rows]
    bulk_seed(QueuedTweet, rows, batch_size=500)
    for row, (created, updated) in zip(rows, history, strict=True):
        row.created_at, row.updated_at = created, updated
    QueuedTweet.objects.bulk_update(rows, ["created_at", "updated_at"], batch_size=500)

    decisions = [
        Decision(
            queued_tweet=row,
            action=Decision.Action.REJECT if rejected else Decision.Action.APPROVE,
            actor="owner",
            channel=Channel.TELEGRAM,
            text_before=row.draft,
            text_after="" if rejected else row.draft,
        )
        for row in rows
        if row.status in (Status.POSTED, Status.HANDOFF, Status.REJECTED)
        for rejected in [row.status == Status.REJECTED]
    ]
    bulk_seed(Decision, decisions, batch_size=500)
    for decision in decisions:
        decision.created_at = decision.queued_tweet.updated_at
    Decision.objects.bulk_update(decisions, ["created_at"], batch_size=500)
    # The owner was told of every handed-off reply at the time (a Telegram message with
    # its link): without that message the notify stage would send it now, one a second.
    bulk_seed(
        ApprovalMessage,
        (
            ApprovalMessage(
                queued_tweet=row,
                message_id=PREFILL_MESSAGE_BASE + index,
                sent_at=row.updated_at,
                settled=True,
            )
            for index, row in enumerate(rows)
            if row.status == Status.HANDOFF
        ),
        batch_size=500,
    )
    analyze(QueuedTweet)


def _old_row(index: int, status: str, created: datetime, rng: random.Random) -> QueuedTweet:
    from bot.models import QueuedTweet, Source, Status

    author = index % 300
    row = QueuedTweet(
        target_tweet_id=str(PREFILL_ID_BASE + index),
        author_id=str(PREFILL_ID_BASE + 10_000_000 + author),
        author_username=f"old{author:05d}",
        text=f"an older post about {TOPICS[index % len(TOPICS)]} (#{index})",
        tweet_created_at=created - timedelta(minutes=rng.uniform(1, 30)),
        source=rng.choice([Source.MENTION, Source.SEARCH, Source.TARGET]),
        status=status,
        created_at=created,
        updated_at=created,
    )
    if status == Status.SKIPPED:
        row.skip_reason = rng.choice(["off topic (no keyword)", "a repost", "our own post"])
        return row
    row.summoned = row.source == Source.MENTION and status != Status.HANDOFF
    row.draft = f"An earlier reply about {TOPICS[index % len(TOPICS)]}."
    row.variants = [row.draft]
    row.draft_attempts = 1
    decided = created + timedelta(minutes=rng.uniform(5, 240))
    row.updated_at = decided
    if status == Status.EXPIRED:
        row.skip_reason = "too old to answer"
    elif status == Status.HANDOFF:
        _approve(row, decided)
        row.scheduled_at = row.updated_at = decided + timedelta(minutes=rng.uniform(5, 30))
    elif status == Status.POSTED:
        claimed = decided + timedelta(minutes=rng.uniform(5, 30))
        _approve(row, decided)
        row.scheduled_at = row.claimed_at = claimed
        row.publish_request_id = uuid.uuid4()
        row.attempts = 0
        row.reply_tweet_id = str(PREFILL_ID_BASE + 20_000_000 + index)
        row.posted_at = row.updated_at = claimed + timedelta(seconds=rng.uniform(0.2, 2))
    return row


def _approve(row: QueuedTweet, when: datetime) -> None:
    for name, value in approved_by_owner(when).items():
        setattr(row, name, value)


# --- counting ---------------------------------------------------------------------------------


class _Counter:
    """An ``execute_wrapper`` that tallies every query, by kind and by shape."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        tally = self.tally
        tally.count += 1
        upper = sql.lstrip().upper()
        if upper.startswith("SELECT") and "FOR UPDATE" not in upper:
            tally.reads += 1
        if '"resilience_breaker"' in sql:
            tally.breaker += 1
        tally.shapes[_shape(sql)] += 1
        return execute(sql, params, many, context)


_COLUMNS = re.compile(r"^SELECT .*? FROM ", re.DOTALL)
_SAVEPOINT = re.compile(r'"s\d+_x\d+"')
_PARAMS = re.compile(r"%s(?:, %s)+|(?<=IN \()%s(?=\))")
_ROWS = re.compile(r"\(%s, \.\.\.\)(?:, \(%s, \.\.\.\))+")


def _shape(sql: str) -> str:
    """The query without its column list and with parameter lists folded, to group by."""
    shape = _COLUMNS.sub("SELECT ... FROM ", " ".join(sql.split()))
    shape = _ROWS.sub("(%s, ...), ...", _PARAMS.sub("%s, ...", shape))
    shape = _SAVEPOINT.sub('"savepoint"', shape)
    return shape[:220]


# --- report ----------------------------------------------------------------------------------


def _report(
    counted: dict[int, Lifecycle], timed: dict[int, list[Lifecycle]], *, posts: int, repeats: int
) -> dict[str, Any]:
    from django.conf import settings

    sizes = sorted(counted)
    queries = {str(size): _queries(counted[size]) for size in sizes}
    x_reads = {str(size): _x_reads(counted[size]) for size in sizes}
    throughput = {str(size): _throughput(timed[size]) for size in sizes}
    runs = [counted[size] for size in sizes] + [run for size in sizes for run in timed[size]]

    def pipeline_total(size: int) -> float:
        return queries[str(size)]["total"]["pipeline_per_tweet"]

    def reads_total(size: int) -> float:
        return x_reads[str(size)]["total"]["per_tweet"]

    growth = _growth(counted) if len(sizes) > 1 else {}
    verdicts = {
        "queries_per_tweet_flat": all(
            pipeline_total(size) <= pipeline_total(sizes[0]) for size in sizes
        ),
        "x_posts_read_per_tweet_flat": all(
            reads_total(size) <= reads_total(sizes[0]) for size in sizes
        ),
        # A bound, not an id check: never more timeline reads than posts of ours exist.
        "our_timeline_posts_read_at_most_once": all(
            x_reads[str(size)]["total"][OUR_TIMELINE] <= counted[size].our_posts for size in sizes
        ),
        "every_post_answered_exactly_once": all(run.complete for run in runs),
    }
    return {
        "environment": machine(),
        "settings": {
            "posts": posts,
            "queue_sizes": sizes,
            "repeats": repeats,
            "prefill_mix": dict(PREFILL_MIX),
            "prefill_days": PREFILL_DAYS,
            "pacing": PACING,
            "debug": settings.DEBUG,
            "snapshot_ttl": float(settings.RESILIENCE["SNAPSHOT_TTL"]),
            "breaker_store": settings.RESILIENCE["STORE"],
        },
        "queries": queries,
        "x_posts_read": x_reads,
        "throughput": throughput,
        "growth": growth,
        "outcomes": [
            {
                "queue_size": run.queue_size,
                "counted": run.counted,
                "posted": run.posted,
                "replies_on_x": run.replies,
                "answered_twice": run.replied_twice,
                "our_posts_on_x": run.our_posts,
            }
            for run in runs
        ],
        "verdicts": verdicts,
    }


def _queries(run: Lifecycle) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    total = Tally()
    for name, stage in run.stages.items():
        tally = _tally(run, name)
        total.count += tally.count
        total.reads += tally.reads
        total.breaker += tally.breaker
        total.shapes.update(tally.shapes)
        stages[name] = {
            "passes": stage.passes,
            **_per_tweet(tally, run.posts),
            "top_shapes": tally.shapes.most_common(6),
        }
    return {"stages": stages, "total": _per_tweet(total, run.posts)}


def _x_reads(run: Lifecycle) -> dict[str, Any]:
    """Posts read from X per stage: by route, all routes and our timeline alone."""
    stages: dict[str, Any] = {}
    every: list[Counter[str]] = []
    for name, stage in run.stages.items():
        if stage.reads is None:
            raise ValueError(f"the {name} stage of this lifecycle was not counted")
        stages[name] = {"passes": stage.passes, **_reads_summary(stage.reads, run.posts)}
        every += stage.reads
    return {"stages": stages, "total": _reads_summary(every, run.posts)}


def _reads_summary(passes: list[Counter[str]], posts: int) -> dict[str, Any]:
    by_route: Counter[str] = Counter()
    for one in passes:
        by_route.update(one)
    total = sum(by_route.values())
    ours = by_route[OUR_TIMELINE]
    return {
        "by_route": dict(sorted(by_route.items())),
        "posts_read": total,
        OUR_TIMELINE: ours,
        "per_tweet": total / posts,
        f"{OUR_TIMELINE}_per_tweet": ours / posts,
        "per_pass": total / len(passes) if passes else 0.0,
        f"{OUR_TIMELINE}_per_pass": ours / len(passes) if passes else 0.0,
        "most_in_one_pass": max((sum(one.values()) for one in passes), default=0),
        f"{OUR_TIMELINE}_most_in_one_pass": max((one[OUR_TIMELINE] for one in passes), default=0),
    }


def _per_tweet(tally: Tally, posts: int) -> dict[str, Any]:
    return {
        "queries": tally.count,
        "reads": tally.reads,
        "writes": tally.count - tally.reads,
        "breaker_reads": tally.breaker,
        "per_tweet": tally.count / posts,
        "pipeline_per_tweet": (tally.count - tally.breaker) / posts,
        "breaker_per_tweet": tally.breaker / posts,
    }


def _throughput(runs: list[Lifecycle]) -> dict[str, Any]:
    best = min(runs, key=lambda run: run.seconds)
    return {
        "runs_seconds": [run.seconds for run in runs],
        "best_seconds": best.seconds,
        "tweets_per_second": best.posts / best.seconds,
        "stages": {
            name: {"passes": stage.passes, "seconds": stage.seconds}
            for name, stage in best.stages.items()
        },
    }


def _growth(counted: dict[int, Lifecycle]) -> dict[str, list[dict[str, Any]]]:
    """Query shapes whose count changes with the queue size, per stage (breaker reads aside)."""
    sizes = sorted(counted)
    found: dict[str, list[dict[str, Any]]] = {}
    for name in counted[sizes[0]].stages:
        tallies = [_tally(counted[size], name) for size in sizes]
        shapes = sorted(set().union(*(tally.shapes for tally in tallies)))
        for shape in shapes:
            counts = [tally.shapes[shape] for tally in tallies]
            if len(set(counts)) > 1 and '"resilience_breaker"' not in shape:
                found.setdefault(name, []).append(
                    {"shape": shape, "counts": dict(zip(map(str, sizes), counts, strict=True))}
                )
    return found


def _tally(run: Lifecycle, stage: str) -> Tally:
    tally = run.stages[stage].tally
    if tally is None:
        raise ValueError(f"the {stage} stage of this lifecycle was not counted")
    return tally


def _render(report: dict[str, Any]) -> str:
    refused = refused_line("Pipeline benchmark", report)
    if refused:
        return refused
    env = report["environment"]
    cfg, queries, speed = report["settings"], report["queries"], report["throughput"]
    sizes = [str(size) for size in cfg["queue_sizes"]]
    heads = "".join(f"{'queue ' + f'{int(size):,}':>14}" for size in sizes)
    first = queries[sizes[0]]["stages"]
    lines = [
        f"Pipeline: queries per tweet and throughput on {env['database']}",
        machine_line(env),
        f"{cfg['posts']} new posts per batch from distinct authors, each @mentioning us; "
        f"queue pre-filled with {' / '.join(f'{int(s):,}' for s in sizes)} unrelated rows; "
        f"timing best of {cfg['repeats']}; DEBUG {cfg['debug']}; breaker store "
        f"{cfg['breaker_store']}, snapshot_ttl {cfg['snapshot_ttl']} s",
        "",
        "Database queries per tweet (every query, connection.execute_wrapper)",
        f"  {'stage':<20}{'passes':>7}{heads}",
    ]
    for name in first:
        values = "".join(f"{queries[size]['stages'][name]['per_tweet']:>14.2f}" for size in sizes)
        lines.append(f"  {name:<20}{first[name]['passes']:>7}{values}")
    lines += [
        f"  {'total':<27}"
        + "".join(f"{queries[size]['total']['per_tweet']:>14.2f}" for size in sizes),
        f"  {'  breaker reads':<27}"
        + "".join(f"{queries[size]['total']['breaker_per_tweet']:>14.2f}" for size in sizes),
        f"  {'  the pipeline':<27}"
        + "".join(f"{queries[size]['total']['pipeline_per_tweet']:>14.2f}" for size in sizes),
        f"  {'queries in all':<27}"
        + "".join(f"{queries[size]['total']['queries']:>14,}" for size in sizes),
        "",
    ]
    lines += _render_reads(report, sizes)
    lines += [
        "",
        "Wall time, one worker, zero-latency sandbox in this process (best run)",
        f"  {'stage':<20}{'passes':>7}{heads}",
    ]
    best = {size: speed[size]["stages"] for size in sizes}
    for name in best[sizes[0]]:
        values = "".join(f"{best[size][name]['seconds']:>12.3f} s" for size in sizes)
        lines.append(f"  {name:<20}{best[sizes[0]][name]['passes']:>7}{values}")
    lines += [
        f"  {'total':<27}" + "".join(f"{speed[s]['best_seconds']:>12.3f} s" for s in sizes),
        f"  {'tweets/s':<27}" + "".join(f"{speed[s]['tweets_per_second']:>14.1f}" for s in sizes),
    ]
    lines += [
        f"  every run at queue {int(s):,}: "
        + ", ".join(f"{t:.2f}" for t in speed[s]["runs_seconds"])
        + " s"
        for s in sizes
    ]
    if report["growth"]:
        lines += ["", "Query shapes whose count changes with the queue size"]
        for stage, shapes in report["growth"].items():
            for entry in shapes:
                counts = ", ".join(f"{k}: {v}" for k, v in entry["counts"].items())
                lines.append(f"  {stage}: {counts}  {entry['shape']}")
    wrong = [
        f"{o['posted']} posted, {o['replies_on_x']} replies, {o['answered_twice']} answered "
        f"twice at queue {o['queue_size']:,}"
        for o in report["outcomes"]
        if o["posted"] != cfg["posts"] or o["replies_on_x"] != cfg["posts"] or o["answered_twice"]
    ]
    ok = report["verdicts"]
    totals = ", ".join(
        f"{queries[size]['total']['pipeline_per_tweet']:.2f} at {int(size):,} rows"
        for size in sizes
    )
    reads = {size: report["x_posts_read"][size]["total"] for size in sizes}
    read_totals = ", ".join(
        f"{reads[size]['per_tweet']:.2f} ({reads[size][OUR_TIMELINE + '_per_tweet']:.2f} "
        f"of our timeline) at {int(size):,} rows"
        for size in sizes
    )
    ours = ", ".join(
        f"{reads[o_size][OUR_TIMELINE]:,} read of {o['our_posts_on_x']:,}"
        for o in report["outcomes"]
        if o["counted"]
        for o_size in [str(o["queue_size"])]
    )
    lines += [
        "",
        "Targets",
        verdict(
            ok["queries_per_tweet_flat"],
            f"queries per tweet do not grow with the queue (breaker snapshot reads, "
            f"which follow the clock, aside): {totals}",
        ),
        verdict(
            ok["x_posts_read_per_tweet_flat"],
            f"X posts read per tweet do not grow with the queue: {read_totals}",
        ),
        verdict(
            ok["our_timeline_posts_read_at_most_once"],
            f"our timeline ({OUR_TIMELINE}) reads never exceed the posts of ours on X: {ours}",
        ),
        verdict(
            ok["every_post_answered_exactly_once"],
            f"every post answered exactly once in all {len(report['outcomes'])} lifecycles"
            + (f"; instead: {'; '.join(wrong)}" if wrong else ""),
        ),
    ]
    return "\n".join(lines)


def _render_reads(report: dict[str, Any], sizes: list[str]) -> list[str]:
    """Posts read from X per tweet, all routes / our timeline, per stage and queue size."""
    reads = report["x_posts_read"]
    first = reads[sizes[0]]["stages"]
    ours = OUR_TIMELINE
    heads = "".join(f"{'queue ' + f'{int(size):,}':>16}" for size in sizes)

    def cell(entry: dict[str, Any], key: str, fmt: str) -> str:
        return f"{format(entry[key], fmt)} / {format(entry[ours + '_' + key], fmt)}"

    lines = [
        f"X posts read per tweet (sandbox posts_returned: all routes / {ours}, our timeline)",
        f"  {'stage':<20}{'passes':>7}{heads}",
    ]
    for name in first:
        values = "".join(
            f"{cell(reads[size]['stages'][name], 'per_tweet', '.2f'):>16}" for size in sizes
        )
        lines.append(f"  {name:<20}{first[name]['passes']:>7}{values}")

    def total_line(label: str, text: Callable[[dict[str, Any]], str]) -> str:
        return f"  {label:<27}" + "".join(f"{text(reads[size]['total']):>16}" for size in sizes)

    lines += [
        total_line("total", lambda t: cell(t, "per_tweet", ".2f")),
        total_line("posts read in all", lambda t: f"{t['posts_read']:,} / {t[ours]:,}"),
        total_line("per pass (mean)", lambda t: cell(t, "per_pass", ".2f")),
        total_line("most in one pass", lambda t: cell(t, "most_in_one_pass", "d")),
    ]
    for size in sizes:
        routes = reads[size]["total"]["by_route"]
        listed = ", ".join(f"{route} {n:,}" for route, n in routes.items()) or "none"
        lines.append(f"  posts by route at {int(size):,} rows: {listed}")
    return lines


if __name__ == "__main__":
    main()
