"""After a crash: settle what dead workers left half done (``recovery.recover_stale_tweets``)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from bot.services.recovery import DEFAULT_TIMEOUT, RecoveryReport, recover_stale_tweets

# How each action reads in the summary, in the report's order.
LABELS = {
    "publishing_marked_unknown": "publishing, lease over: marked unknown",
    "unknown_to_judge": "unknown, due for a verdict",
    "reconciled_posted": "  found on our timeline: posted",
    "reconciled_requeued": "  not on our timeline: approved again, re-paced",
    "reconciled_redraft": "  refused as a duplicate: failed, to be redrafted",
    "reconciled_failed": "  last attempt spent: failed",
    "reconciled_found_unwanted": "  live although not wanted: recorded, owner alerted",
    "drafts_requeued": "drafts under an expired lease: queued again",
    "dead_letters_released": "dead letters stuck retrying: released",
    "dead_letters_resolved": "dead letters whose post is settled: resolved",
    "approval_messages_released": "approval messages never sent: released",
}
BAR = 30


class Command(BaseCommand):
    help = (
        "Settle what dead workers left behind: publishing rows whose lease ran out (or "
        "claimed over --timeout-minutes ago) and unknown rows, against our timeline on X "
        "(posted, or approved again with a fresh time); drafts, dead letters and approval "
        "messages stuck under expired claims."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        default = int(DEFAULT_TIMEOUT.total_seconds() // 60)
        parser.add_argument(
            "--timeout-minutes",
            type=int,
            default=default,
            help=f"treat publishing rows claimed over N minutes ago as stale ({default})",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="report what it would do; change nothing"
        )
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        minutes = options["timeout_minutes"]
        if minutes < 1:
            raise CommandError("--timeout-minutes must be at least 1", returncode=2)
        bar = _Bar(self.stdout) if self.stdout.isatty() and not options["json"] else None
        report = recover_stale_tweets(
            timeout=timedelta(minutes=minutes),
            dry_run=options["dry_run"],
            progress=bar.show if bar else None,
        )
        if bar:
            bar.clear()
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
        else:
            self.stdout.write(_summary(report))
        if report.failed:
            raise CommandError(f"steps failed: {', '.join(report.failed)}")


def _summary(report: RecoveryReport) -> str:
    head = "recover_stale: dry run, nothing changed" if report.dry_run else "recover_stale"
    lines = [f"{head} (timeout {report.timeout_minutes} min, {report.seconds:.1f} s)"]
    width = max(len(label) for label in LABELS.values())
    lines += [
        f"  {LABELS.get(action, action):<{width}}  {count:>7,}"
        for action, count in report.actions.items()
    ]
    lines += [f"  skipped {step}: {why}" for step, why in report.skipped.items()]
    lines += [f"  FAILED {step}: {why}" for step, why in report.failed.items()]
    if report.waiting.get("unknown"):
        lines.append(
            f"  waiting: {report.waiting['unknown']:,} unknown row(s), for a lease to run "
            "out or our timeline to be read to the end (the reconcile task goes on)"
        )
    return "\n".join(lines)


class _Bar:
    """A one-line progress bar on a terminal, redrawn at most ten times a second."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out
        self.drawn = 0.0

    def show(self, step: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.drawn < 0.1:
            return
        self.drawn = now
        filled = BAR * done // max(total, 1)
        line = f"\r{step:<18} [{'#' * filled}{'.' * (BAR - filled)}] {done:,}/{total:,}"
        self.out.write(line, ending="")
        self.out.flush()

    def clear(self) -> None:
        if self.drawn:
            self.out.write("\r" + " " * 80 + "\r", ending="")
            self.out.flush()
