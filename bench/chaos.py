"""The chaos run: the real system on PostgreSQL under faults, then every invariant checked.

Run from the project root (PostgreSQL on 127.0.0.1:5432, user postgres, trust auth)::

    .venv/bin/python -m bench.chaos [--posts N] [--seed S] [--json] [--database NAME]
                                    [--chaos-seconds T] [--drain-seconds T]

What it starts (``docs/reliability.md`` says why each piece is there):

- a database of its own (``replyguy_chaos`` by default), dropped, created and migrated;
- the three stand-ins (``sandbox.harness.Sandbox``) in this process: X with 20 % 5xx,
  5 % of replies created and then the connection cut, bursts of 429s and a timeline
  that trails writes by 3 s; the model with 20 % errors (5xx, cut JSON) and spells of
  invalid output (too long, empty, cut off); Telegram with 10 % errors;
- a django-q2 cluster (``manage.py qcluster``, two workers) and the Telegram poller
  (``manage.py telegram_bot``) as real processes. The cluster's own schedules run every
  minute or two; the run also queues the same tasks every second or two (they are
  triggers that find their work in the database, so this only compresses time);
- chaos: every 2-5 s ``pg_terminate_backend`` on every connection to the chaos
  database but this process's own, a worker SIGKILLed every 8-20 s, the cluster
  restarted twice (SIGTERM) to go into quiet hours and out again;
- a scripted owner on the sandbox phone: presses the real buttons of the real approval
  messages (approve, edit through the force-reply question, regenerate, reject), and
  answers some posts by hand on X, as our account, before approving them.

Then the drain: faults off, killers stopped, the owner still acting, until every post
is final or held for a reason that outlasts the drain (a cap, quiet hours). The checks
are printed as a table; the exit status is 1 when an invariant fails. ``--json``
prints every figure instead.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
HARNESS_APP = "replyguy-chaos-harness"  # our connections' application_name: never terminated
POSTS_PER_AUTHOR = 3
TIMELINE_LAG = 3.0  # seconds the sandbox X's timelines trail writes
ALERT_COOLDOWN_MINUTES = 1
AUTHOR_CAP = 2
# Seconds before the owner gives up on a press or text the bot has not handled yet: long,
# as the bot handles every update in the end (a second Edit would make a newer question,
# and the bot takes an answer only to the newest).
UNANSWERED_FOR = 600.0
REFUSED_AFTER = 30.0  # seconds after the bot handled a text that changed nothing
WORKERS = 2
# How often this run queues each stage (seconds); the schedules' own are 1-5 minutes.
TRIGGERS = {
    "bot.tasks.discover": 3.0,
    "bot.tasks.draft": 1.5,
    "bot.tasks.schedule": 2.0,
    "bot.tasks.publish": 1.5,
    "bot.tasks.reconcile": 3.0,
    "bot.tasks.notify": 2.5,
    "bot.tasks.retry_dead_letters": 10.0,
}
WORDS = [
    "retries",
    "backoff",
    "jitter",
    "idempotency",
    "queues",
    "workers",
    "leases",
    "cursors",
    "timelines",
    "caches",
    "postgres",
    "sqlite",
    "redis",
    "breakers",
    "outages",
    "latency",
    "throughput",
    "batching",
    "pagination",
    "deadlines",
    "timeouts",
    "migrations",
    "schemas",
    "indexes",
    "locks",
    "replicas",
    "failover",
    "snapshots",
    "tracing",
    "metrics",
    "alerts",
    "dashboards",
    "budgets",
    "quotas",
    "tokens",
    "webhooks",
    "polling",
    "pacing",
    "drafts",
    "approvals",
    "moderation",
    "sandboxes",
    "fixtures",
    "mocks",
    "clocks",
    "schedulers",
    "cron",
    "deployments",
    "rollbacks",
    "canaries",
    "flags",
    "configs",
    "secrets",
    "vaults",
    "certificates",
    "proxies",
    "compilers",
    "parsers",
    "grammars",
    "lexers",
    "closures",
    "generators",
    "coroutines",
    "futures",
    "threads",
]
FINAL = {"posted", "rejected", "expired", "skipped", "failed"}


# --- configuration -------------------------------------------------------------------------


@dataclass
class Config:
    posts: int = 300
    seed: int = 1
    database: str = "replyguy_chaos"
    chaos_seconds: float | None = None
    drain_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.chaos_seconds is None:
            self.chaos_seconds = max(45.0, self.posts * 0.2)
        if self.drain_seconds is None:
            # Only an upper bound: the drain ends as soon as everything is settled. Room
            # for a breaker opened just before it (X's stays open 120 s).
            self.drain_seconds = 300.0 if self.posts <= 500 else 900.0

    @property
    def hourly_cap(self) -> int:
        # MAX_POSTS_PER_HOUR may not exceed 100 (X's write limit, 100 posts per 15 min).
        return min(100, max(5, int(self.posts * 0.35)))

    @property
    def daily_cap(self) -> int:
        return self.hourly_cap * 2

    @property
    def url(self) -> str:
        return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.database}"


def quiet_hours(now: datetime) -> tuple[int, int, datetime]:
    """Quiet hours (UTC) covering ``now`` for an hour at least, and when they end."""
    start = now.hour
    end = (start + 2) % 24
    ends = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    return start, end, ends


def pacing_env(config: Config, *, quiet: tuple[int, int] | None) -> dict[str, str]:
    start, end = quiet or (0, 0)
    return {
        "MIN_DELAY_MINUTES": "0",
        "MAX_DELAY_MINUTES": "0",
        "MIN_SPACING_MINUTES": "0",
        "MAX_POSTS_PER_HOUR": str(config.hourly_cap),
        "MAX_POSTS_PER_DAY": str(config.daily_cap),
        "MAX_REPLIES_PER_AUTHOR_PER_DAY": str(AUTHOR_CAP),
        "TIME_ZONE": "UTC",
        "QUIET_HOURS_START": str(start),
        "QUIET_HOURS_END": str(end),
        "REPLY_MODE": "auto",
        "TELEGRAM_SEND_INTERVAL_SECONDS": "0.05",
        "ALERT_COOLDOWN_MINUTES": str(ALERT_COOLDOWN_MINUTES),
    }


def base_env(config: Config) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PGAPPNAME"))}
    env.update(
        DJANGO_SETTINGS_MODULE="replyguy.settings",
        DATABASE_URL=config.url,
        DEBUG="false",
        SECRET_KEY="chaos-only-not-secret",
        SECURE_SSL_REDIRECT="false",
        REDIS_URL="",
        Q_BROKER="orm",
        Q_WORKERS=str(WORKERS),
        Q_TIMEOUT_SECONDS="60",
        Q_RETRY_SECONDS="120",
        CONN_MAX_AGE="60",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


# --- the database --------------------------------------------------------------------------


def recreate_database(name: str) -> None:
    import psycopg

    if not re.fullmatch(r"[a-z0-9_]+", name) or name in ("replyguy", "test_replyguy", "postgres"):
        raise SystemExit(f"refusing to drop database {name!r}: give the chaos run its own")
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_backends(name: str) -> int:
    """Cut every connection to the chaos database except this process's own."""
    import psycopg

    with psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        dbname="postgres",
        autocommit=True,
        application_name=HARNESS_APP,
    ) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND application_name <> %s",
            (name, HARNESS_APP),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


# --- processes -----------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``, oldest first (from /proc; no psutil)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[0] == pid:
                found.append((stat[1], int(entry)))
    return [child for _, child in sorted(found)]


def busy(pid: int) -> bool:
    """Whether a django-q2 worker is running a task rather than waiting for one.

    An idle worker waits in ``multiprocessing.Queue.get``: reading the queue's pipe
    while holding the queue's lock, or waiting for that lock (a futex). Killed there,
    it takes the lock with it and every other worker waits for it for ever: a hazard of
    multiprocessing queues, not of Reply Guy (docs/reliability.md). So the run kills
    workers only inside a task, where killing one tests what Reply Guy promises.
    """
    try:
        call = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    if not call or call[0] in ("running", "-1"):
        return call[:1] == ["running"]
    number = int(call[0])
    if number == 202:  # futex: waiting for the queue's lock
        return False
    if number == 0:  # read: from the queue's pipe?
        with suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{int(call[1], 16)}")
            return not target.startswith("pipe:")
    return True


class Cluster:
    """``manage.py qcluster``: the main process, its sentinel, and the sentinel's children
    (the workers, spawned first, then the monitor and the pusher)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.process = spawn("qcluster", env, log)
        self.workers: set[int] = set()
        self.auxiliary: set[int] = set()
        self.seen: set[int] = set()
        self.replacements = 0
        self.sentinel_pid: int | None = None
        self.kills: list[str] = []  # when, whom, the system call it was in
        self.self_restarts = 0

    def sentinel(self) -> int | None:
        kids = children(self.process.pid)
        return kids[0] if kids else None

    def wait_started(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sentinel = self.sentinel()
            kids = children(sentinel) if sentinel else []
            if len(kids) >= WORKERS + 2:
                self._identify(sentinel, kids)
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def _identify(self, sentinel: int | None, kids: list[int]) -> None:
        self.sentinel_pid = sentinel
        self.workers = set(kids[:WORKERS])
        self.auxiliary = set(kids[WORKERS : WORKERS + 2])
        self.seen = set(kids)
        self.replacements = 0

    def _refresh(self) -> list[int]:
        sentinel = self.sentinel()
        kids = children(sentinel) if sentinel else []
        if sentinel != self.sentinel_pid:
            # A new sentinel: the cluster restarted itself (its watchdog, Q_STUCK_SECONDS).
            # Its workers are its first children again, once it has them all.
            if len(kids) < WORKERS + 2:
                return []
            self.self_restarts += 1
            self._identify(sentinel, kids)
        for pid in kids:
            if pid in self.seen:
                continue
            self.seen.add(pid)
            # A new child replaces the worker we killed; any other is the sentinel
            # replacing its monitor or pusher.
            if self.replacements:
                self.replacements -= 1
                self.workers.add(pid)
            else:
                self.auxiliary.add(pid)
        live = set(kids)
        self.workers &= live
        self.auxiliary &= live
        return sorted(self.workers)

    def kill_worker(self, rng: random.Random) -> int | None:
        """SIGKILL a worker that is running a task (None when none is, this time)."""
        workers = [pid for pid in self._refresh() if busy(pid)]
        if not workers:
            return None
        victim = rng.choice(workers)
        with suppress(OSError):
            self.kills.append(
                f"{datetime.now(UTC):%H:%M:%S} pid {victim}: "
                + Path(f"/proc/{victim}/syscall").read_text().split(" ", 1)[0]
            )
        with suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
            self.workers.discard(victim)
            self.replacements += 1
            return victim
        return None

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM, as a platform stops a process; SIGKILL after ``timeout``. Clean?

        Then whatever is left of its process group is killed: nothing of it may outlive
        it (a worker the sentinel forked while the main process was stopping, say)."""
        return stop_process(self.process, timeout)


# The child sets PR_SET_PDEATHSIG (SIGTERM) before it becomes manage.py: should the
# harness die without its finally (SIGKILL, the OOM killer), the cluster and the poller
# get the SIGTERM a platform would send, and stop themselves. Linux only; elsewhere the
# prctl is skipped.
_LAUNCH = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the harness is already gone
os.execv(sys.executable, [sys.executable, "manage.py", *sys.argv[2:]])
"""

PROCESSES: list[subprocess.Popen] = []  # every child this run started, for the last word


def spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``manage.py <command>`` in a session (so a process group) of its own: a Ctrl-C at
    the terminal reaches only the harness, which then stops its children in order."""
    with log.open("a") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(os.getpid()), command],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    PROCESSES.append(process)
    return process


def start_poller(env: dict[str, str], log: Path) -> subprocess.Popen:
    return spawn("telegram_bot", env, log)


def kill_group(process: subprocess.Popen) -> int:
    """SIGKILL what is left of the process group ``process`` leads; how many were left."""
    left = group_members(process.pid)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return len(left)


def group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) in process group ``pgid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def stop_process(process: subprocess.Popen, timeout: float = 20) -> bool:
    """SIGTERM, SIGKILL after ``timeout``, then the rest of its group. Clean?"""
    clean = True
    if process.poll() is None:
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            clean = False
            process.kill()
            process.wait(10)
    if kill_group(process):
        clean = False
    return clean


def stop_everything(say: Callable[[str], None]) -> None:
    """The last word on every child: stopped, and its process group with it."""
    for process in PROCESSES:
        if process.poll() is None or group_members(process.pid):
            left = not stop_process(process, timeout=15)
            say(f"stopped {process.args[4]} (pid {process.pid}){' by SIGKILL' if left else ''}")
    PROCESSES.clear()


# --- background actors -----------------------------------------------------------------------


class Actor(threading.Thread):
    """A daemon thread calling ``step`` until stopped; ``step`` returns the next wait."""

    def __init__(self, name: str, step: Callable[[], float], errors: Counter[str]) -> None:
        super().__init__(name=name, daemon=True)
        self.step = step
        self.stopping = threading.Event()
        self.errors = errors

    def run(self) -> None:
        from django.db import connections

        while not self.stopping.is_set():
            try:
                wait = self.step()
            except Exception as exc:  # an actor must not die of one bad step
                self.errors[f"{self.name}: {type(exc).__name__}: {str(exc)[:120]}"] += 1
                connections.close_all()
                wait = 0.5
            self.stopping.wait(wait)
        connections.close_all()

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


# Tasks of a stage the run keeps queued or running at once. Drafting is the slow stage:
# a pass stops at the model's first failure (the rest wait, nothing fails), so under 20 %
# model errors it drafts two or three posts; one pass at a time (queued behind the other
# stages' tasks, every 4-5 s) drafted under half a post a second, and a long run ended
# its chaos with most posts never drafted. Passes in parallel are safe: each claims its
# posts with a lease (one model call per draft).
IN_FLIGHT = {"bot.tasks.draft": 3}


class Triggers:
    """Queues each stage's task on a compressed clock, one at a time per stage (a few for
    drafting, ``IN_FLIGHT``)."""

    def __init__(self) -> None:
        self.last: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.queued = 0

    def step(self) -> float:
        from django_q.models import Task
        from django_q.tasks import async_task

        now = time.monotonic()
        for func, every in TRIGGERS.items():
            last = self.last[func]
            if last and now - last[-1][0] < every:
                continue
            # Those still queued or running (a dead worker's task comes back after
            # Q_RETRY_SECONDS): each given 30 s before it stops counting.
            done = set(
                Task.objects.filter(id__in=[task_id for _, task_id in last]).values_list(
                    "id", flat=True
                )
            )
            last[:] = [(at, task_id) for at, task_id in last if task_id not in done]
            last[:] = [(at, task_id) for at, task_id in last if now - at < 30]
            if len(last) >= IN_FLIGHT.get(func, 1):
                continue
            last.append((now, async_task(func)))
            self.queued += 1
        return 0.25


@dataclass
class Plan:
    action: str  # approve, edit, regenerate, reject, by_hand
    stage: str = "new"  # what the owner did last
    acted_at: float = 0.0
    version: int = 0
    text: str = ""
    query: str = ""  # the callback query of the last press
    sent: int = 0  # the update id of the last text the owner sent (an edit)


class Owner:
    """The owner on the sandbox phone: reads the chat, presses, answers the edit question."""

    SHARES = (
        ("approve", 0.50),
        ("edit", 0.12),
        ("regenerate", 0.10),
        ("reject", 0.14),
        ("by_hand", 0.14),
    )

    def __init__(self, sandbox: Any, seed: int) -> None:
        self.sandbox = sandbox
        self.seed = seed
        self.plans: dict[str, Plan] = {}
        self.done: Counter[str] = Counter()
        self.presses: Counter[str] = Counter()
        self.hand_replies: dict[str, str] = {}  # post id -> our reply typed by hand
        self.edits = 0
        self.answered_prompts: set[int] = set()
        self.last_action = time.monotonic()

    def plan_for(self, post_id: str) -> Plan:
        if post_id not in self.plans:
            draw = random.Random(f"{self.seed}:{post_id}").random()
            total = 0.0
            action = self.SHARES[-1][0]
            for name, share in self.SHARES:
                total += share
                if draw < total:
                    action = name
                    break
            self.plans[post_id] = Plan(action)
        return self.plans[post_id]

    def press(self, message: dict[str, Any], data: str, label: str) -> str:
        query = self.sandbox.telegram.press_button(message["message_id"], data)
        self.presses[label] += 1
        self.last_action = time.monotonic()
        return query

    def came_to_nothing(self, plan: Plan, now: float) -> bool:
        """Whether the owner's last word will not take effect, so a person presses again:
        the bot handled it and failed (a press left unanswered, a text with an error), or
        refused the text (handled, and the draft unchanged ``REFUSED_AFTER`` later), or
        nothing came of it for ``UNANSWERED_FOR``. An answered press is done; one the bot
        has not handled yet waits its turn (the poller behind, or Telegram failing and
        the update tried again)."""
        from bot.models import TelegramUpdate

        if plan.stage == "edit_sent":  # the owner's text, not the press, was the last word
            update = TelegramUpdate.objects.filter(update_id=plan.sent).first()
            if update is None or update.handled_at is None:
                return now - plan.acted_at >= UNANSWERED_FOR
            # Handled, and still the same draft a while later: the bot refused the text
            # (an older question, one it never recorded) or failed on it.
            waited = (datetime.now(UTC) - update.handled_at).total_seconds()
            return bool(update.error) or waited >= REFUSED_AFTER
        with self.sandbox.telegram.lock:
            query = self.sandbox.telegram.callback_queries.get(plan.query)
            if query is None or query["answered"]:
                return False
        if now - plan.acted_at >= UNANSWERED_FOR:
            return True
        return TelegramUpdate.objects.filter(
            payload__callback_query__id=plan.query, handled_at__isnull=False
        ).exists()

    def step(self) -> float:
        from bot.telegram.buttons import Act, parse
        from sandbox.x_api import OUR_USERNAME

        telegram = self.sandbox.telegram
        now = time.monotonic()
        messages = telegram.bot_messages()
        by_id = {m["message_id"]: m for m in messages}
        # First the edit question, answered with the owner's text: before any button, as
        # an Edit pressed again in the same breath makes a newer question and the bot then
        # refuses the answer. The newest one, as a person answers the question at the
        # bottom of the chat (the bot takes an answer only to the newest it asked).
        for message in reversed(messages):
            if not message["text"].startswith("✏️ Send the new reply"):
                continue
            if message["message_id"] in self.answered_prompts:
                continue
            # The message it quotes, as it is now or (retired since) as it was then.
            quoted = message.get("reply_to_message") or {}
            original = by_id.get(quoted.get("message_id")) or {}
            found = re.search(r"/status/(\d+)", original.get("text", "")) or re.search(
                r"/status/(\d+)", quoted.get("text", "")
            )
            if found is None:
                continue
            plan = self.plan_for(found.group(1))
            if plan.action != "edit" or plan.stage != "edit_pressed":
                continue
            self.edits += 1
            rng = random.Random(f"{self.seed}:edit:{found.group(1)}")
            plan.text = f"Edited by the owner ({self.edits}): " + " ".join(rng.sample(WORDS, 6))
            plan.sent = telegram.send_user_message(
                plan.text, reply_to_message_id=message["message_id"]
            )
            self.answered_prompts.add(message["message_id"])
            plan.stage = "edit_sent"
            plan.acted_at = now  # the 45 s before pressing Edit again count from here
            self.last_action = now
        for message in messages:
            buttons = {}
            for row in (message.get("reply_markup") or {}).get("inline_keyboard") or []:
                for button in row:
                    press = parse(button.get("callback_data") or "")
                    if press is not None and press.tweet_id:
                        buttons[press.act] = (button["callback_data"], press)
            if Act.APPROVE not in buttons:
                continue
            found = re.search(r"/status/(\d+)", message["text"])
            if found is None:
                continue
            post_id = found.group(1)
            plan = self.plan_for(post_id)
            version = buttons[Act.APPROVE][1].version
            # The same draft again: press again only once the last press came to nothing,
            # and after a while. An edit waits longer: a second Edit makes a new question,
            # and the bot takes an answer only to the newest one.
            patience = 45 if plan.action == "edit" else 8
            if plan.version == version and (
                now - plan.acted_at < patience or not self.came_to_nothing(plan, now)
            ):
                continue
            step = self._decide(plan, version, post_id, now, OUR_USERNAME)
            if step is None:
                continue
            act, label = step
            if act in buttons:
                plan.query = self.press(message, buttons[act][0], label)
                plan.acted_at, plan.version = now, version
        return 0.3

    def _decide(
        self, plan: Plan, version: int, post_id: str, now: float, our_username: str
    ) -> tuple[Any, str] | None:
        from bot.telegram.buttons import Act

        if plan.action == "reject":
            self.done["reject"] += plan.stage == "new"
            plan.stage = "done"
            return Act.REJECT, "reject"
        if plan.action == "regenerate" and (plan.stage == "new" or version == plan.version):
            # First, or again when the last press came to nothing (the old draft still).
            plan.stage = "regenerated"
            return Act.REGENERATE, "regenerate"
        if plan.action == "edit" and plan.stage in ("new", "edit_pressed"):
            # Pressed, but the question never came (Telegram failed): press again.
            plan.stage = "edit_pressed"
            return Act.EDIT, "edit"
        if plan.action == "edit" and plan.stage == "edit_sent" and version == plan.version:
            plan.stage = "edit_pressed"  # the text came to nothing: ask again
            return Act.EDIT, "edit"
        if plan.action == "by_hand" and plan.stage == "new":
            rng = random.Random(f"{self.seed}:hand:{post_id}")
            text = "Answered by hand: " + " ".join(rng.sample(WORDS, 6))
            self.hand_replies[post_id] = self.sandbox.x.publish(
                our_username, text, reply_to=post_id
            )
            plan.stage = "answered_by_hand"
            plan.acted_at = now
            return None
        if (
            plan.action == "by_hand"
            and plan.stage == "answered_by_hand"
            and now - plan.acted_at < TIMELINE_LAG + 2
        ):
            return None  # the owner comes back to the chat a little later
        if plan.stage not in ("approved",):
            self.done[plan.action] += 1
        plan.stage = "approved"
        return Act.APPROVE, "approve"


class Chaos:
    """Faults that move: DB connections cut, workers killed, 429 bursts, bad model output."""

    def __init__(self, config: Config, sandbox: Any, rng: random.Random) -> None:
        self.config = config
        self.sandbox = sandbox
        self.rng = rng
        self.cluster: Cluster | None = None
        self.counts: Counter[str] = Counter()
        self.next = {"db": 0.0, "kill": time.monotonic() + 8, "burst": 0.0}
        self.bursts: list[tuple[float, Any]] = []  # (when it ends, the sandbox's fault)

    def step(self) -> float:
        now = time.monotonic()
        if now >= self.next["db"]:
            self.counts["connections_terminated"] += terminate_backends(self.config.database)
            self.counts["terminations"] += 1
            self.next["db"] = now + self.rng.uniform(2, 5)
        if now >= self.next["kill"] and self.cluster is not None:
            if self.cluster.kill_worker(self.rng) is not None:
                self.counts["workers_killed"] += 1
                self.next["kill"] = now + self.rng.uniform(8, 20)
            else:
                self.next["kill"] = now + 0.2  # no worker inside a task: look again
        for until, fault in list(self.bursts):
            if now >= until:
                fault.times = 0  # the burst is over
                self.bursts.remove((until, fault))
        if now >= self.next["burst"]:
            # A 429 burst lasts its reset time: every call to that endpoint gets 429 and
            # the reset, until the reset. (Counted in calls instead, a burst outlasts its
            # reset many times over: the client holds the endpoint until the reset, so
            # each 429 the burst still owes comes one reset later.)
            endpoint = self.rng.choice(["user_mentions", "user_tweets", "create_tweet"])
            seconds = self.rng.randint(5, 15)
            fault = self.sandbox.x.faults.add(endpoint, "error", status=429, reset_in=seconds)
            self.bursts.append((now + seconds - 1, fault))
            self.counts["429_bursts"] += 1
            self.next["burst"] = now + self.rng.uniform(10, 25)
        return 0.2


INVALID_OUTPUT = ("overlong", "empty", "truncated")  # sandbox.openai_api.OUTPUT_MODES


class InvalidOutput:
    """Some invalid model output: each answer, with chance ``rate``, in one of the
    stand-in's own bad output modes (too long, empty, cut off at the length limit).

    The stand-in's ``output_mode`` holds for every answer until changed; drawn per
    answer instead, bad drafts come scattered, as from a model having a bad moment,
    not in the unbroken run the pipeline rightly takes for a broken setup (the same
    error on three posts in a row opens the breaker for ten minutes). So after a bad
    answer the next ``gap`` are good: drawn freely, three cut-off drafts in a row came
    once in a long run (seed 7) and held the model's breaker open for the last six
    minutes of the chaos.
    """

    def __init__(self, app: Any, seed: int, rate: float = 0.08, gap: int = 3) -> None:
        self.app = app
        self.rate = rate
        self.gap = gap
        self.good_owed = 0
        self.rng = random.Random(f"{seed}:model")
        self.lock = threading.Lock()
        self.served: Counter[str] = Counter()
        self.on = True
        self.original = app._completion
        app._completion = self

    def __call__(self, body: dict[str, Any], mode: str) -> dict[str, Any]:
        with self.lock:
            if self.on and mode == "normal" and self.good_owed:
                self.good_owed -= 1
            elif self.on and mode == "normal" and self.rng.random() < self.rate:
                mode = self.rng.choice(INVALID_OUTPUT)
                self.served[mode] += 1
                self.good_owed = self.gap
        return self.original(body, mode)


def install_faults(sandbox: Any) -> None:
    x, model, telegram = sandbox.x.faults, sandbox.openai.faults, sandbox.telegram.faults
    # X: 5 % of replies created, then the connection cut; 20 % of every call a 5xx.
    x.add("create_tweet", "cut_after", rate=0.05)
    x.add("*", "error", status=503, rate=0.10)
    x.add("*", "error", status=500, rate=0.06)
    x.add("*", "error", status=502, rate=0.05)
    # The model: 20 % errors (5xx, a 200 whose JSON is cut off, a dropped connection).
    model.add("chat_completions", "error", status=503, rate=0.09)
    model.add("chat_completions", "error", status=500, rate=0.05)
    model.add("chat_completions", "truncated", rate=0.04)
    model.add("chat_completions", "cut_before", rate=0.03)
    # Telegram: 10 % errors, a few sends taken and then cut (the message shows twice).
    telegram.add("sendMessage", "cut_after", rate=0.02)
    telegram.add("*", "error", status=502, rate=0.08)


READ_WINDOW_SCALE = 10  # the run queues each stage 20-80 times as often as its schedule


def compress_read_windows(sandbox: Any) -> None:
    """X's read limits per 15 minutes, times ``READ_WINDOW_SCALE``: the run compresses
    time for the schedules, so it does for the read windows (mentions, 300 per window, are
    read every 3 s here; unscaled, a long run spends the window and discovery stops for
    the rest of it). The write limit (100 replies per 15 minutes) stays X's own."""
    from sandbox.x_api import DEFAULT_LIMITS

    for endpoint, scopes in DEFAULT_LIMITS.items():
        if endpoint in ("create_tweet", "delete_tweet"):
            continue
        for scope, limit in scopes.items():
            sandbox.x.set_limit(endpoint, limit * READ_WINDOW_SCALE, scope=scope)


def clear_faults(sandbox: Any) -> None:
    for app in (sandbox.x, sandbox.openai, sandbox.telegram):
        app.faults.clear()


# --- the run -----------------------------------------------------------------------------------


@contextmanager
def django_on(config: Config) -> Iterator[None]:
    os.environ.update(base_env(config))
    os.environ["PGAPPNAME"] = HARNESS_APP  # libpq names our connections: never terminated
    os.environ["LOG_LEVEL"] = "ERROR"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    try:
        yield
    finally:
        from django.db import connections

        connections.close_all()


def summon_posts(config: Config, sandbox: Any, rng: random.Random) -> list[tuple[float, str, str]]:
    """(when, author, text) of every post that mentions us, spread over the chaos phase."""
    authors = [f"chaos{n:04d}" for n in range((config.posts + POSTS_PER_AUTHOR - 1) // 3)]
    for author in authors:
        sandbox.x.add_user(author)
    spread = config.chaos_seconds * 0.75
    plan = []
    for n in range(config.posts):
        author = authors[n % len(authors)]
        words = " ".join(rng.sample(WORDS, 7))
        plan.append((rng.uniform(0, spread), author, f"@replyguy post {n}: what about {words}?"))
    return sorted(plan)


def run(config: Config, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The run; whatever ends it (the checks, a crash, Ctrl-C, SIGTERM), the cluster, the
    poller (each with its process group), the actors and the stand-ins are stopped."""
    started = time.monotonic()
    logs = Path(tempfile.mkdtemp(prefix="replyguy-chaos-"))
    recreate_database(config.database)
    try:
        report = _run(config, say, started, logs)
    except BaseException as exc:
        say(
            f"the run did not finish ({type(exc).__name__}: {exc or 'Ctrl-C'}); kept for a "
            "post-mortem: "
            f"the logs in {logs}, the database {config.database}"
        )
        raise
    finally:
        stop_everything(say)  # a backstop: _run's own exit has stopped them already
    if report["passed"]:
        drop_database(config.database)
        shutil.rmtree(logs, ignore_errors=True)
        report["figures"]["logs"] = "removed (the run passed)"
    return report


def _run(config: Config, say: Callable[[str], None], started: float, logs: Path) -> dict[str, Any]:
    from sandbox.harness import Sandbox

    rng = random.Random(config.seed)
    errors: Counter[str] = Counter()
    # Left in reverse order, whatever the way out: the actors, the cluster, the poller
    # (the ExitStack), then the stand-ins, then the harness's own connections.
    with django_on(config), Sandbox(seed=config.seed) as sandbox, ExitStack() as stack:
        from bot.models import PipelineControl, QueuedTweet

        PipelineControl.objects.get_or_create(pk=1)
        sandbox.x.timeline_lag = TIMELINE_LAG
        compress_read_windows(sandbox)
        env = {**base_env(config), **{k: str(v) for k, v in sandbox.env().items()}}
        posts = summon_posts(config, sandbox, rng)
        quiet_start, quiet_end, quiet_ends_at = quiet_hours(datetime.now(UTC))
        shifts: list[dict[str, Any]] = []

        def start_cluster(quiet: bool) -> Cluster:
            cluster_env = {
                **env,
                **pacing_env(config, quiet=(quiet_start, quiet_end) if quiet else None),
            }
            cluster = Cluster(cluster_env, logs / "qcluster.log")
            if not cluster.wait_started():
                raise RuntimeError(f"the cluster did not start; see {logs / 'qcluster.log'}")
            shifts.append({"quiet": quiet, "from": sandbox.x.clock(), "until": None})
            return cluster

        def stop_cluster(cluster: Cluster) -> None:
            clean = cluster.stop()
            shifts[-1]["until"] = sandbox.x.clock()
            shifts[-1]["clean_stop"] = clean
            shifts[-1]["kills"] = cluster.kills
            shifts[-1]["restarts_seen_by_the_killer"] = cluster.self_restarts

        poller = start_poller({**env, **pacing_env(config, quiet=None)}, logs / "poller.log")
        stack.callback(stop_process, poller)
        running: dict[str, Cluster] = {}
        stack.callback(lambda: running["cluster"].stop() if running else None)
        cluster = running["cluster"] = start_cluster(quiet=False)
        say(f"chaos: {config.posts} posts over {config.chaos_seconds:.0f} s, seed {config.seed}")
        say(f"  poller pid {poller.pid}, cluster pid {cluster.process.pid}; logs in {logs}")
        install_faults(sandbox)
        invalid_output = InvalidOutput(sandbox.openai, config.seed)
        owner = Owner(sandbox, config.seed)
        chaos = Chaos(config, sandbox, rng)
        chaos.cluster = cluster
        triggers = Triggers()
        actors = [
            Actor("owner", owner.step, errors),
            Actor("triggers", triggers.step, errors),
            Actor("chaos", chaos.step, errors),
        ]
        for actor in actors:
            actor.start()
            stack.callback(actor.stop)

        chaos_started = time.monotonic()
        published: list[str] = []
        restarts = {0.35: True, 0.55: False}  # share of the chaos phase -> quiet next
        while True:
            elapsed = time.monotonic() - chaos_started
            while posts and posts[0][0] <= elapsed:
                _, author, text = posts.pop(0)
                published.append(sandbox.x.publish(author, text))
            for share, quiet in list(restarts.items()):
                if elapsed >= share * config.chaos_seconds:
                    del restarts[share]
                    stop_cluster(cluster)
                    cluster = running["cluster"] = start_cluster(quiet=quiet)
                    chaos.cluster = cluster
                    hours = "on" if quiet else "off"
                    say(
                        f"  {elapsed:5.0f} s: cluster restarted (pid {cluster.process.pid}), "
                        f"quiet hours {hours}"
                    )
            if elapsed >= config.chaos_seconds and not posts:
                break
            time.sleep(0.05)

        actors[2].stop()  # chaos off
        # Where the posts stood when the faults stopped: how many went through the chaos.
        at_chaos_end = dict(
            Counter(
                QueuedTweet.objects.filter(target_tweet_id__in=published).values_list(
                    "status", flat=True
                )
            )
        )
        fired = {
            name: dict(Counter(kind for _, kind in app.faults.fired))
            for name, app in (
                ("x", sandbox.x),
                ("model", sandbox.openai),
                ("telegram", sandbox.telegram),
            )
        }
        clear_faults(sandbox)
        invalid_output.on = False
        chaos_requests = {
            "x": dict(Counter(name for name, _ in sandbox.x.requests)),
            "model": len(sandbox.openai.completions),
            "telegram": dict(Counter(name for name, _ in sandbox.telegram.requests)),
        }
        drain_started = time.monotonic()
        say(f"drain: faults off, up to {config.drain_seconds:.0f} s")
        deadline = drain_started + config.drain_seconds
        state = settle_state(published, deadline_in=config.drain_seconds)
        settled: dict[str, Any] | None = None  # the first settled state of a quiet spell
        while time.monotonic() < deadline:
            state = settle_state(published, deadline_in=deadline - time.monotonic())
            owner_idle = time.monotonic() - owner.last_action > 3
            if state["in_progress"] or not owner_idle:
                settled = None
            elif settled is None or settled["leased"] != state["leased"]:
                settled = {**state, "at": time.monotonic()}
            elif time.monotonic() - settled["at"] >= 15:
                break  # settled for 15 s, longer than any task, the same leases held
            time.sleep(1)
        drain_seconds = time.monotonic() - drain_started
        for actor in actors[:2]:
            actor.stop()
        stop_cluster(cluster)
        poller_clean = stop_process(poller)

        report = check(config, sandbox, owner, published, shifts, quiet_ends_at)
        report["figures"].update(
            {
                "seed": config.seed,
                "posts": config.posts,
                "chaos_seconds": round(config.chaos_seconds, 1),
                "drain_seconds": round(drain_seconds, 1),
                "total_seconds": round(time.monotonic() - started, 1),
                "x_faults_fired": fired["x"],
                "model_faults_fired": fired["model"],
                "telegram_faults_fired": fired["telegram"],
                "invalid_model_output": dict(invalid_output.served),
                "requests_during_chaos": chaos_requests,
                "statuses_at_chaos_end": at_chaos_end,
                **chaos.counts,
                "cluster_shifts": len(shifts),
                "cluster_shift_details": shifts,
                "cluster_stops_unclean": sum(not s.get("clean_stop", True) for s in shifts),
                "poller_stopped_cleanly": poller_clean,
                "tasks_queued_by_the_run": triggers.queued,
                "owner_presses": dict(owner.presses),
                "owner_plans": dict(Counter(p.action for p in owner.plans.values())),
                "harness_errors": dict(errors),
                "logs": str(logs),
                "left_in_progress_at_drain_end": state["in_progress"],
            }
        )
        report["figures"]["log_tracebacks"] = count_tracebacks(logs)
        with suppress(OSError):
            # The cluster's watchdog (Q_STUCK_SECONDS): tasks waited and none started.
            log = (logs / "qcluster.log").read_text(errors="replace")
            report["figures"]["cluster_stuck_restarts"] = log.count("the cluster is stuck")
        if not report["passed"]:
            (logs / "telegram.json").write_text(
                json.dumps(sandbox.telegram.snapshot(), default=str)
            )
            (logs / "x.json").write_text(json.dumps(sandbox.x.snapshot(), default=str))
    return report


def count_tracebacks(logs: Path) -> dict[str, int]:
    found = {}
    for path in logs.glob("*.log"):
        found[path.name] = path.read_text(errors="replace").count("Traceback")
    return found


# --- judging the state -------------------------------------------------------------------------


def explain(tweet: Any, now: datetime, deadline: datetime) -> str | None:
    """Why a row that is not final may stay so past the drain; None if it should move."""
    if tweet.status in FINAL:
        return "final"
    if tweet.status == "approved" and tweet.scheduled_at and tweet.scheduled_at > deadline:
        return "held"  # by pacing (judged in ``check``)
    if tweet.status == "publishing" and tweet.lease_until and tweet.lease_until > deadline:
        return "lease"  # a worker killed or stopped while publishing it holds it
    if (
        tweet.status == "unknown"
        and tweet.lease_until
        and tweet.lease_until + timedelta(minutes=1) > deadline
    ):
        return "lease"
    if tweet.status == "new" and tweet.lease_until and tweet.lease_until > deadline:
        return "lease"  # a worker killed while drafting it holds it
    return None


def settle_state(published: list[str], *, deadline_in: float) -> dict[str, Any]:
    from django.db import connection

    from bot.models import QueuedTweet

    now = datetime.now(UTC)
    deadline = now + timedelta(seconds=max(deadline_in, 0))
    rows = {t.target_tweet_id: t for t in QueuedTweet.objects.filter(target_tweet_id__in=published)}
    in_progress = sum(
        1 for post in published if post not in rows or explain(rows[post], now, deadline) is None
    )
    # Rows held by a lease: a killed worker's, or a live worker's still at work (a draft
    # lease of minutes outlives a deadline a minute away). Only the first kind stays put.
    leased = frozenset(
        (t.id, t.status, t.lease_until)
        for t in rows.values()
        if explain(t, now, deadline) == "lease"
    )
    connection.close()
    return {"in_progress": in_progress, "leased": leased}


def hourly_full(
    tweet: Any, started: datetime, claims: list[datetime], rows: Any, cap: int, now: datetime
) -> bool:
    """Whether ``tweet`` waits for the hourly cap: its time is an hour after a moment of
    this run (a claim's, maybe one given up since), and the replies claimed plus those
    waiting with a time (scheduling plans each approved reply a slot, so planned ones
    fill the hour too) reach the cap."""
    first = started - timedelta(seconds=1)
    if not first + timedelta(hours=1) <= tweet.scheduled_at <= now + timedelta(hours=1, seconds=1):
        return False
    waiting = sum(1 for t in rows if t.status == "approved" and t.scheduled_at)
    return len(claims) + waiting >= cap


def post_mortem(post: str, rows: dict[str, Any], now: datetime) -> dict[str, Any]:
    """What a lost post's row says, and its author's other rows: enough to tell a rule
    the harness does not know from a reply the pipeline dropped."""
    tweet = rows.get(post)
    if tweet is None:
        return {"post": post, "status": "never queued"}

    def seen(t: Any) -> dict[str, Any]:
        return {
            "id": t.id,
            "status": t.status,
            "scheduled_in_s": round((t.scheduled_at - now).total_seconds())
            if t.scheduled_at
            else None,
            "next_attempt_in_s": round((t.next_attempt_at - now).total_seconds())
            if t.next_attempt_at
            else None,
            "claimed_at": t.claimed_at.isoformat() if t.claimed_at else None,
            "attempts": t.attempts,
            "last_error": t.last_error[:100],
        }

    return {
        "post": post,
        **seen(tweet),
        "author": tweet.author_id,
        "author_rows": [seen(t) for t in rows.values() if t.author_id == tweet.author_id],
    }


def sliding_max(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


DEAD_LETTER_CAUSES = (
    # (stage, words in the error, the cause the run injected)
    ("draft", "too long", "invalid model output (overlong), three drafts in a row"),
    ("draft", "empty", "invalid model output (empty), three drafts in a row"),
    ("draft", "cut off", "invalid model output (cut off), three drafts in a row"),
    ("draft", "truncated", "the model stopped at its output limit, three drafts in a row"),
    ("draft", "duplicate", "X refused the text as a duplicate: redraft needed"),
    # The stand-in model writes from a few templates, so drafts come close to our replies.
    ("draft", "too close to a reply we already posted", "a draft too close to ours, 3 times"),
)


def dead_letter_cause(row: Any) -> str | None:
    error = row.error.lower()
    if row.error_kind == "unexpected" or "unexpected" in error:
        return None
    for stage, words, cause in DEAD_LETTER_CAUSES:
        if row.stage == stage and words in error:
            return cause
    return None


def check(
    config: Config,
    sandbox: Any,
    owner: Owner,
    published: list[str],
    shifts: list[dict[str, Any]],
    quiet_ends_at: datetime,
) -> dict[str, Any]:
    from django.db.models import Q

    from bot.models import Decision, FailedTweet, QueuedTweet
    from resilience.models import AlertEvent
    from sandbox.x_api import OUR_USER_ID

    now = datetime.now(UTC)
    rows = {t.target_tweet_id: t for t in QueuedTweet.objects.filter(target_tweet_id__in=published)}
    ours = [p for p in sandbox.x.posts.values() if p.author_id == OUR_USER_ID and p.reply_to]
    hand_ids = set(owner.hand_replies.values())
    api_replies = [p for p in ours if p.id not in hand_ids]
    replies_per_post = Counter(p.reply_to for p in ours)
    approved_texts: dict[int, set[str]] = defaultdict(set)
    for decision in Decision.objects.filter(
        Q(action=Decision.Action.APPROVE) | Q(action=Decision.Action.EDIT)
    ):
        approved_texts[decision.queued_tweet_id].add(decision.text_after)

    duplicates = sorted(post for post, n in replies_per_post.items() if n > 1)
    text_differs, unapproved = [], []
    for reply in api_replies:
        tweet = rows.get(reply.reply_to)
        if tweet is None or tweet.approved_at is None or not approved_texts.get(tweet.id):
            unapproved.append(reply.id)
        elif reply.text not in approved_texts[tweet.id]:
            text_differs.append(reply.id)

    explanations: Counter[str] = Counter()
    lost = []
    held: Counter[str] = Counter()
    started = datetime.fromtimestamp(shifts[0]["from"], UTC)
    claims = sorted(
        t.claimed_at
        for t in rows.values()
        if t.claimed_at and t.status in ("posted", "unknown", "publishing")
    )
    per_author: Counter[str] = Counter(
        t.author_id
        for t in rows.values()
        if t.claimed_at and t.status in ("posted", "unknown", "publishing")
    )
    for post in published:
        tweet = rows.get(post)
        if tweet is None:
            lost.append(post)
            continue
        why = explain(tweet, now, now)
        if why is None:
            lost.append(post)
            explanations[f"unexplained: {tweet.status}"] += 1
            continue
        if why == "final":
            explanations[tweet.status] += 1
            continue
        if why == "lease":
            explanations[f"{tweet.status}, lease of a killed worker"] += 1
            continue
        # Held: which rule holds it, as the claim judged it.
        # The author cap first: it moves a reply by a day, past quiet hours' end too.
        if per_author[tweet.author_id] >= AUTHOR_CAP:
            rule = "author cap"
        elif tweet.scheduled_at >= quiet_ends_at - timedelta(seconds=5):
            rule = "quiet hours"
        elif hourly_full(tweet, started, claims, list(rows.values()), config.hourly_cap, now):
            rule = "hourly cap"
        elif tweet.last_error:
            rule = "retry after a failure"
        else:
            rule = None
        if rule is None:
            lost.append(post)
            explanations["unexplained: approved, scheduled later"] += 1
        else:
            held[rule] += 1
            explanations[f"approved, held by {rule}"] += 1

    # Caps and quiet hours, against the times X gave our replies.
    created = [p.created_at for p in api_replies]
    hourly_max = sliding_max(created, 3600)
    daily_max = sliding_max(created, 86400)
    author_of = {t.target_tweet_id: t.author_id for t in rows.values()}
    author_max = max(Counter(author_of.get(p.reply_to) for p in api_replies).values(), default=0)
    quiet = [s for s in shifts if s["quiet"]]
    in_quiet = [p.id for p in api_replies for s in quiet if s["from"] <= p.created_at <= s["until"]]

    # Alerts: at most one per kind and subject per cooldown.
    cooldown = timedelta(minutes=ALERT_COOLDOWN_MINUTES)
    by_key: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    alerts = list(AlertEvent.objects.order_by("created_at"))
    for alert in alerts:
        by_key[(alert.kind, alert.subject)].append(alert.created_at)
    too_close = sum(
        1 for times in by_key.values() for a, b in itertools.pairwise(times) if b - a < cooldown
    )

    dead = list(FailedTweet.objects.all())
    causes = Counter(dead_letter_cause(row) or "unexplained" for row in dead)
    unexplained_dead = [
        f"{row.target_tweet_id} at {row.stage}: {row.error[:120]}"
        for row in dead
        if dead_letter_cause(row) is None
    ]

    # The queue against X: a row posted with no reply of ours there, or settled otherwise
    # (failed, rejected, expired, skipped) while the bot's reply is there. A figure: the
    # watch over sent rows (WATCH_SENT_FOR, 3 days) may still settle the second kind.
    replied = {p.reply_to for p in ours}
    bot_replied = {p.reply_to for p in api_replies}
    posted_without_reply = sorted(
        post for post, t in rows.items() if t.status == "posted" and post not in replied
    )
    settled_otherwise = sorted(
        f"{post}: {t.status}"
        for post, t in rows.items()
        if t.status in FINAL - {"posted"} and post in bot_replied
    )
    handled = sum(1 for t in rows.values() if t.status in FINAL)
    reads = sum(sandbox.x.posts_returned.values())
    read_calls = sum(
        1
        for name, _ in sandbox.x.requests
        if name in ("user_tweets", "user_mentions", "search_recent", "tweet_lookup", "me")
    )
    checks = [
        ("duplicate replies", len(duplicates), "0", not duplicates),
        ("posts lost", len(lost), "0", not lost),
        (
            "replies whose text differs from the approved text",
            len(text_differs),
            "0",
            not text_differs,
        ),
        ("replies without an approval", len(unapproved), "0", not unapproved),
        (
            f"hourly cap ({config.hourly_cap}) held: most replies in an hour",
            hourly_max,
            f"<= {config.hourly_cap}",
            hourly_max <= config.hourly_cap,
        ),
        (
            f"daily cap ({config.daily_cap}) held: most replies in a day",
            daily_max,
            f"<= {config.daily_cap}",
            daily_max <= config.daily_cap,
        ),
        (
            f"author cap ({AUTHOR_CAP}) held: most replies to one author",
            author_max,
            f"<= {AUTHOR_CAP}",
            author_max <= AUTHOR_CAP,
        ),
        ("quiet hours held: replies created during quiet hours", len(in_quiet), "0", not in_quiet),
        (
            f"alerts bounded per cooldown ({ALERT_COOLDOWN_MINUTES} min): repeats inside it",
            too_close,
            "0",
            too_close == 0,
        ),
        ("dead-letter rows unexplained", len(unexplained_dead), "0", not unexplained_dead),
        # Binding: a cap nobody reached proves nothing.
        (
            "hourly cap binding: replies held by it",
            held["hourly cap"],
            "> 0",
            held["hourly cap"] > 0,
        ),
        (
            "author cap binding: replies held by it",
            held["author cap"],
            "> 0",
            held["author cap"] > 0,
        ),
        (
            "quiet hours binding: replies held by them",
            held["quiet hours"],
            "> 0",
            held["quiet hours"] > 0,
        ),
    ]
    figures = {
        "replies_by_the_bot": len(api_replies),
        "replies_by_hand": len(hand_ids),
        "outcomes": dict(explanations),
        "dead_letters": len(dead),
        "dead_letter_causes": dict(causes),
        "alerts": len(alerts),
        "alert_kinds": dict(Counter(a.kind for a in alerts)),
        "handled_posts": handled,
        "x_posts_read": reads,
        "x_read_calls": read_calls,
        "x_posts_read_per_handled_post": round(reads / handled, 2) if handled else None,
        "x_read_calls_per_handled_post": round(read_calls / handled, 2) if handled else None,
        "x_writes": sum(1 for name, _ in sandbox.x.requests if name == "create_tweet"),
        "posted_without_a_reply_on_x": len(posted_without_reply),
        "settled_otherwise_with_a_bot_reply_on_x": len(settled_otherwise),
    }
    details = {
        "duplicates": duplicates[:20],
        "lost": [post_mortem(post, rows, now) for post in lost[:20]],
        "text_differs": text_differs[:20],
        "unapproved": unapproved[:20],
        "in_quiet_hours": in_quiet[:20],
        "unexplained_dead_letters": unexplained_dead[:20],
        "posted_without_a_reply_on_x": posted_without_reply[:20],
        "settled_otherwise_with_a_bot_reply_on_x": settled_otherwise[:20],
    }
    return {
        "passed": all(ok for *_, ok in checks),
        "checks": [
            {"check": name, "value": value, "expected": expected, "ok": ok}
            for name, value, expected, ok in checks
        ],
        "figures": figures,
        "details": {k: v for k, v in details.items() if v},
    }


# --- the printed report ------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    rows = [
        (c["check"], str(c["value"]), c["expected"], "ok" if c["ok"] else "FAIL")
        for c in report["checks"]
    ]
    f = report["figures"]
    rows.append(("X posts read per handled post", str(f["x_posts_read_per_handled_post"]), "", ""))
    rows.append(("X read calls per handled post", str(f["x_read_calls_per_handled_post"]), "", ""))
    widths = [max(len(r[i]) for r in [*rows, ("check", "value", "expected", "")]) for i in range(4)]
    lines = [
        "  ".join(
            h.ljust(w) for h, w in zip(("check", "value", "expected", ""), widths, strict=True)
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def summary(report: dict[str, Any]) -> str:
    f = report["figures"]
    parts = [
        f"seed {f['seed']}, {f['posts']} posts, chaos {f['chaos_seconds']} s, "
        f"drain {f['drain_seconds']} s, {f['total_seconds']} s in all",
        f"outcomes: {json.dumps(f['outcomes'], sort_keys=True)}",
        f"replies: {f['replies_by_the_bot']} by the bot, {f['replies_by_hand']} by hand; "
        f"X writes {f['x_writes']}",
        f"owner presses: {json.dumps(f['owner_presses'], sort_keys=True)}",
        f"chaos: {f.get('connections_terminated', 0)} connections terminated in "
        f"{f.get('terminations', 0)} sweeps, {f.get('workers_killed', 0)} workers SIGKILLed, "
        f"{f['cluster_shifts'] - 1} cluster restarts, {f.get('429_bursts', 0)} 429 bursts, "
        f"invalid model output {json.dumps(f['invalid_model_output'], sort_keys=True)}",
        f"faults fired: X {json.dumps(f['x_faults_fired'], sort_keys=True)}, model "
        f"{json.dumps(f['model_faults_fired'], sort_keys=True)}, Telegram "
        f"{json.dumps(f['telegram_faults_fired'], sort_keys=True)}",
        f"dead letters: {f['dead_letters']} {json.dumps(f['dead_letter_causes'], sort_keys=True)}",
        f"the queue against X: {f['posted_without_a_reply_on_x']} posted without a reply "
        f"there, {f['settled_otherwise_with_a_bot_reply_on_x']} settled otherwise with the "
        "bot's reply there",
        f"statuses when the chaos stopped: "
        f"{json.dumps(f.get('statuses_at_chaos_end', {}), sort_keys=True)}",
        f"alerts: {f['alerts']} {json.dumps(f['alert_kinds'], sort_keys=True)}",
        f"logs: {f['logs']} (tracebacks {json.dumps(f['log_tracebacks'], sort_keys=True)}); "
        f"the cluster restarted by its watchdog {f.get('cluster_stuck_restarts', 0)} times",
    ]
    if f["harness_errors"]:
        parts.append(f"harness errors: {json.dumps(f['harness_errors'])}")
    for name, items in report["details"].items():
        parts.append(f"{name}: {items}")
    return "\n".join(parts)


def interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--posts", type=int, default=300, help="posts that mention us (300)")
    parser.add_argument("--seed", type=int, default=1, help="the plan's seed (1)")
    parser.add_argument("--database", default="replyguy_chaos", help="dropped and recreated")
    parser.add_argument("--chaos-seconds", type=float, default=None)
    parser.add_argument("--drain-seconds", type=float, default=None)
    parser.add_argument("--json", action="store_true", help="every figure, as JSON")
    args = parser.parse_args(argv)
    if args.posts < 30:
        parser.error("--posts must be at least 30 (the caps need room to bind)")
    config = Config(
        posts=args.posts,
        seed=args.seed,
        database=args.database,
        chaos_seconds=args.chaos_seconds,
        drain_seconds=args.drain_seconds,
    )
    out = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    # SIGTERM (a CI runner's timeout) and SIGHUP end the run as Ctrl-C does: through
    # run's finally, which stops every child.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    try:
        report = run(config, say=say)
    except KeyboardInterrupt as exc:
        say(f"interrupted ({exc or 'Ctrl-C'}): every child stopped")
        return 130
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print()
        print(table(report))
        print()
        print(summary(report))
        print("\nPASS: every invariant held" if report["passed"] else "\nFAIL: an invariant broke")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
