"""After a crash or a bad night: everything a dead worker left half done, put right at once.

``recover_stale_tweets`` is one pass over every kind of claim a worker can die holding,
each settled by the rules of the stage that owns it (this module adds none of its own):

1. publishing rows whose lease ran out (or claimed over ``timeout`` ago) become
   ``unknown`` (``reconciling.recover_stale``);
2. unknown rows due for a verdict are judged against our own timeline, read first
   (``reconciling.reconcile``): found means ``posted``; not found, with the timeline
   read to the end, means back to ``approved`` with a fresh time from the scheduling
   rules (``scheduling.reply_schedule``), so they are spread, never all due at once;
3. drafts stuck in ``new`` under an expired draft lease are freed for the draft stage;
4. dead-letter rows stuck in ``retrying`` are released (``dead_letters.dead_letter_sweep``);
5. approval messages never sent, under an expired sending claim, are freed for the
   Telegram outbox.

Step 2 needs X (it reads our timeline, which X bills); without X it is reported as
skipped with the reason, and the other steps still run. A dry run makes every change
in one transaction and rolls it back, so it reports exactly what the other steps would
do and changes nothing; it never calls X, and reports how many unknown rows a real
run would judge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from bot.models import ApprovalMessage, FailedTweet, FailedTweetStatus, QueuedTweet, Status
from bot.services import dead_letters, reconciling

if TYPE_CHECKING:
    from bot.clients.x import XClient

__all__ = ["DEFAULT_TIMEOUT", "Progress", "RecoveryReport", "recover_stale_tweets"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
# (step, rows done, rows in all): told as a long step goes, for a progress bar.
Progress = Callable[[str, int, int], None]

PUBLISHING = "publishing"
RECONCILE = "reconcile"
DRAFTS = "drafts"
DEAD_LETTERS = "dead_letters"
APPROVAL_MESSAGES = "approval_messages"


@dataclass
class RecoveryReport:
    """What one pass did (or, in a dry run, would do): counts per action.

    ``actions`` keys, in order: ``publishing_marked_unknown``; ``unknown_to_judge`` (due
    for a verdict once step 1 is done) and reconcile's outcomes ``reconciled_posted``,
    ``reconciled_requeued``, ``reconciled_redraft``, ``reconciled_failed``,
    ``reconciled_found_unwanted`` (a real run with X; they include hand-offs and sent
    rows reconcile settles in the same read); ``drafts_requeued``;
    ``dead_letters_released``, ``dead_letters_resolved``; ``approval_messages_released``.
    ``skipped`` and ``failed`` map a step to why; ``waiting`` counts rows left for later;
    ``steps`` is the seconds each step took.
    """

    dry_run: bool
    timeout_minutes: int
    started_at: datetime
    actions: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)  # seconds each step took
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "timeout_minutes": self.timeout_minutes,
            "started_at": self.started_at.isoformat(),
            "actions": dict(self.actions),
            "skipped": dict(self.skipped),
            "failed": dict(self.failed),
            "waiting": dict(self.waiting),
            "steps": {step: round(seconds, 3) for step, seconds in self.steps.items()},
            "seconds": round(self.seconds, 3),
        }


def _x_from_settings() -> XClient:
    from bot.clients.x import XClient
    from bot.services.account import remembered_account

    return XClient.from_settings(me=remembered_account())


def recover_stale_tweets(
    *,
    timeout: timedelta = DEFAULT_TIMEOUT,
    dry_run: bool = False,
    now: datetime | None = None,
    connect_x: Callable[[], XClient] = _x_from_settings,
    progress: Progress | None = None,
) -> RecoveryReport:
    """Settle every claim a dead worker left behind (see the module); the report.

    ``timeout``: a publishing row claimed longer ago than this is taken for stale even
    if its lease has not run out. ``connect_x`` builds the X client, and is called only
    when there are unknown rows to judge (never in a dry run); ``ImproperlyConfigured``
    from it skips that step with its message. A step that fails is logged and named in
    ``failed``; the others still run.
    """
    now = now or timezone.now()
    started = time.perf_counter()
    report = RecoveryReport(
        dry_run=dry_run, timeout_minutes=int(timeout.total_seconds() // 60), started_at=now
    )
    steps = _Steps(report, now=now, timeout=timeout, connect_x=connect_x, progress=progress)
    if dry_run:
        with transaction.atomic():
            steps.run()
            transaction.set_rollback(True)  # a dry run changes nothing
    else:
        steps.run()
    report.seconds = time.perf_counter() - started
    return report


class _Steps:
    def __init__(
        self,
        report: RecoveryReport,
        *,
        now: datetime,
        timeout: timedelta,
        connect_x: Callable[[], XClient],
        progress: Progress | None,
    ) -> None:
        self.report = report
        self.now = now
        self.timeout = timeout
        self.connect_x = connect_x
        self.progress = progress

    def run(self) -> None:
        for name, step in [
            (PUBLISHING, self.publishing),
            (RECONCILE, self.reconcile),
            (DRAFTS, self.drafts),
            (DEAD_LETTERS, self.dead_letters),
            (APPROVAL_MESSAGES, self.approval_messages),
        ]:
            started = time.perf_counter()
            try:
                if self.report.dry_run:
                    # A savepoint in the dry run's transaction: a step that fails takes
                    # back its own writes only. A real run keeps no transaction open
                    # around a step: reconcile calls X, and each service commits its own.
                    with transaction.atomic():
                        step()
                else:
                    step()
            except Exception as exc:
                log.exception("recover_stale: step %s failed; the others go on", name)
                self.report.failed[name] = f"{type(exc).__name__}: {exc}"[:300]
            self.report.steps[name] = time.perf_counter() - started

    def _told(self, step: str) -> reconciling.Progress | None:
        progress = self.progress
        if progress is None:
            return None
        return lambda done, total: progress(step, done, total)

    def publishing(self) -> None:
        moved = reconciling.recover_stale(
            now=self.now, older_than=self.timeout, progress=self._told(PUBLISHING)
        )
        self.report.actions["publishing_marked_unknown"] = len(moved)

    def reconcile(self) -> None:
        due = reconciling.unknown_due(now=self.now).count()
        self.report.actions["unknown_to_judge"] = due
        if self.report.dry_run:
            self.report.skipped[RECONCILE] = (
                "dry run: our timeline is not read (X bills every read); a real run judges "
                f"{due} unknown row(s) against it"
            )
        elif due:  # else no X call is spent (hand-offs are the reconcile task's)
            self._reconcile_with_x()
        unknown = QueuedTweet.objects.filter(status=Status.UNKNOWN).count()
        # Left for a later pass: a lease not over yet, or a timeline not read to the end.
        self.report.waiting["unknown"] = unknown - due if self.report.dry_run else unknown

    def _reconcile_with_x(self) -> None:
        try:
            x = self.connect_x()
        except ImproperlyConfigured as exc:
            self.report.skipped[RECONCILE] = str(exc)
            return
        try:
            counts = reconciling.reconcile(x, now=self.now, progress=self._told(RECONCILE))
        finally:
            x.close()
        for outcome, n in counts.items():
            self.report.actions[f"reconciled_{outcome}"] = n

    def drafts(self) -> None:
        # The draft stage takes an expired lease anyway; freeing it says so plainly and
        # lets the next pass claim it without waiting on a dead worker's time.
        self.report.actions["drafts_requeued"] = QueuedTweet.objects.filter(
            status=Status.NEW, lease_until__lt=self.now
        ).update(lease_until=None, updated_at=self.now)

    def dead_letters(self) -> None:
        dead_letters.dead_letter_sweep(now=self.now)
        # What the sweep moved carries this pass's time: released rows are due at once,
        # closed ones resolved.
        touched = FailedTweet.objects.filter(updated_at=self.now)
        self.report.actions["dead_letters_released"] = touched.filter(
            status=FailedTweetStatus.PENDING, next_retry_at=self.now
        ).count()
        self.report.actions["dead_letters_resolved"] = touched.filter(
            status=FailedTweetStatus.RESOLVED
        ).count()

    def approval_messages(self) -> None:
        self.report.actions["approval_messages_released"] = ApprovalMessage.objects.filter(
            message_id__isnull=True, sending_until__lt=self.now
        ).update(sending_until=None)
