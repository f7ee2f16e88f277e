"""django-q2's ``qcluster``, with a stop that is sure as well as clean.

On SIGTERM (how a platform stops a process) or Ctrl-C the cluster stops as django-q2
stops it: no new tasks, the running ones finish, the workers leave. That stop can hang:
a worker killed while it held the task queue's lock leaves the others waiting on it
forever, and a long task keeps its worker past any platform's grace period. So a stop
has ``Q_STOP_GRACE_SECONDS``; after it, or at a second signal, every process of the
cluster is killed and the command exits. Nothing is lost by that: a task cut short
left its claim with a lease, and the next cluster's ``recover_stale`` settles it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django_q.management.commands.qcluster import Command as QClusterCommand

from bot.pacing import Pacing
from bot.simulated import listed, simulated_names

log = logging.getLogger("replyguy.worker")


class Command(QClusterCommand):
    help = (
        "Start the django-q2 cluster (the workers). SIGTERM or Ctrl-C stops it within "
        "Q_STOP_GRACE_SECONDS; a second signal stops it at once."
    )

    def handle(self, *args: Any, **options: Any) -> Any:
        import django_q.cluster

        say_how_it_runs(log)
        stop = Deadline(settings.Q_STOP_GRACE_SECONDS)
        Watchdog(settings.Q_STUCK_SECONDS, stop).start()
        original = django_q.cluster.Cluster.sig_handler

        def sig_handler(cluster: django_q.cluster.Cluster, signum: int, frame: Any) -> None:
            if stop.arm():
                original(cluster, signum, frame)

        django_q.cluster.Cluster.sig_handler = sig_handler
        try:
            return super().handle(*args, **options)
        finally:
            django_q.cluster.Cluster.sig_handler = original


def say_how_it_runs(logger: logging.Logger) -> None:
    """The two facts a first look at the log needs: what is simulated, and the pacing."""
    names = simulated_names()
    if names:
        logger.warning(
            "simulated: %s %s the local sandbox; nothing reaches the real service%s",
            listed(names),
            "is" if len(names) == 1 else "are",
            "" if len(names) == 1 else "s",
        )
    logger.info("pacing: %s", Pacing.from_settings().summary())


class Watchdog:
    """Restarts a cluster whose workers have stopped taking tasks.

    A worker waiting for a task holds the task queue's lock; killed there (the OOM
    killer, say), it never lets go, and every other worker waits on it for good while
    django-q2 starts new ones into the same wait. Each worker stamps a time shared with
    this process (``LAST_START``) when it starts a task. When tasks have waited in the
    broker (queued, not yet taken) at every check for ``Q_STUCK_SECONDS`` and none has
    started since they were first seen (more than a task's timeout, so a busy worker is
    never taken for a stuck one), every process of the cluster is killed and this
    command starts again in place (same process id). Nothing is lost: tasks find their
    work in the database, the broker hands out again what the dead cluster had taken
    (the ORM broker; a Redis broker's taken tasks run again with their schedule), and
    recover_stale runs at start. After three restarts in a row with no task started in
    between, it gives up and exits 1: that is not this lock.
    """

    CHECK_EVERY = 5.0
    RESTARTS = "REPLYGUY_WATCHDOG_RESTARTS"  # carried across the restarts, in place
    GIVE_UP_AFTER = 3

    def __init__(self, stuck_after: float, stop: Deadline) -> None:
        self.stuck_after = stuck_after
        self.stop = stop
        self.waiting_since: float | None = None

    def start(self) -> None:
        from django_q.signals import pre_execute

        _reap()
        LAST_START.value = 0.0
        pre_execute.connect(_stamp_start, dispatch_uid="replyguy.watchdog")
        threading.Thread(target=self._watch, name="cluster-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while not self.stop.armed.wait(self.CHECK_EVERY):
            if LAST_START.value:
                os.environ[self.RESTARTS] = "0"  # this start took tasks: not stuck
            self.check(time.time())

    def check(self, now: float) -> None:
        if not self._tasks_waiting():
            self.waiting_since = None
        elif self.waiting_since is None or LAST_START.value >= self.waiting_since:
            self.waiting_since = now  # seen waiting now, or taken since: watch afresh
        elif now - self.waiting_since >= self.stuck_after:
            self.restart(now - self.waiting_since)

    def _tasks_waiting(self) -> bool:
        from django.db import connection
        from django_q.brokers import get_broker

        try:
            return get_broker().queue_size() > 0
        except Exception:  # the broker unreachable is not a stuck cluster
            return False
        finally:
            connection.close()

    def restart(self, waited: float) -> None:
        restarts = int(os.environ.get(self.RESTARTS) or 0) + 1
        below = descendants(os.getpid())
        if restarts > self.GIVE_UP_AFTER:
            log.error(
                "the cluster is stuck again after %d restarts with no task started: "
                "giving up (exit 1); look at the log above",
                self.GIVE_UP_AFTER,
            )
            _kill(below)
            os._exit(1)
        log.error(
            "the cluster is stuck: tasks have waited %d s and none has started; killing "
            "its %d processes and starting it again (restart %d)",
            waited,
            len(below),
            restarts,
        )
        os.environ[self.RESTARTS] = str(restarts)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # The sentinel last, and the new start at once: its death would otherwise let
        # the main thread finish and end the process. The new start reaps the dead.
        _kill(below)
        os.execv(sys.executable, [sys.executable, *sys.argv])  # noqa: S606 (this very command)


def _kill(pids: list[int]) -> None:
    for pid in reversed(pids):  # deepest first: the sentinel (a child) goes last
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _reap() -> None:
    """Collect children a previous start of this process left dead (no zombies)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


# When a worker of this cluster last started a task: shared memory, inherited by the
# sentinel and every worker it forks.
LAST_START = multiprocessing.Value("d", 0.0, lock=False)


def _stamp_start(**kwargs: Any) -> None:
    LAST_START.value = time.time()


class Deadline:
    """The first signal starts the grace period; its end, or a second signal, kills
    every process below this one and exits."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.armed = threading.Event()

    def arm(self) -> bool:
        """True for the first signal (stop gracefully), False for any later one."""
        if self.armed.is_set():
            self.kill("a second signal")
            return False
        self.armed.set()
        log.warning("stopping: running tasks get %s s to finish", f"{self.grace:g}")
        threading.Thread(target=self._expire, name="stop-deadline", daemon=True).start()
        return True

    def _expire(self) -> None:
        # A cluster that stopped in time has ended this process, and this thread with it.
        time.sleep(self.grace)
        self.kill(f"still running {self.grace:g} s after the stop")

    def kill(self, why: str) -> None:
        below = descendants(os.getpid())
        log.warning(
            "the cluster was %s: killing its %d processes; unfinished tasks are taken up "
            "again by recover_stale at the next start",
            why,
            len(below),
        )
        _kill(below)
        os._exit(1)  # stopped, but not cleanly


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children first (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop()
        path = Path(f"/proc/{parent}/task/{parent}/children")
        try:
            children = [int(child) for child in path.read_text().split()]
        except (OSError, ValueError):
            continue
        found.extend(children)
        queue.extend(children)
    return found
