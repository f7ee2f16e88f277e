"""After a crash: settle replies whose worker died mid-publish, and report what waits."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count
from django.utils import timezone

from bot.models import FailedTweet
from bot.services import reconciling
from bot.tasks import configured_x


class Command(BaseCommand):
    help = (
        "Mark replies stuck in 'publishing' (lease expired, or claimed longer ago than "
        "--timeout-minutes) as 'unknown', then reconcile them against our timeline on X."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout-minutes",
            type=int,
            default=None,
            help="Also treat rows claimed more than N minutes ago as stale (default: lease only).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Report, change nothing.")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        minutes = options["timeout_minutes"]
        if minutes is not None and minutes < 1:
            raise CommandError("--timeout-minutes must be at least 1", returncode=2)
        older_than = timedelta(minutes=minutes) if minutes else None
        stale = reconciling.stale_publishing(now=now, older_than=older_than)
        report: dict[str, Any] = {
            "dry_run": options["dry_run"],
            "stale": list(stale.values_list("id", flat=True)),
        }
        if not options["dry_run"]:
            report["marked_unknown"] = reconciling.recover_stale(now=now, older_than=older_than)
            x = configured_x("recover_stale")
            report["reconciled"] = reconciling.reconcile(x, now=now) if x else {}
        report["dead_letters"] = dict(
            FailedTweet.objects.values_list("status").annotate(n=Count("id"))
        )
        if options["json"]:
            self.stdout.write(json.dumps(report))
            return
        self.stdout.write(f"stale publishing rows: {len(report['stale'])}")
        if not options["dry_run"]:
            self.stdout.write(f"marked unknown: {len(report['marked_unknown'])}")
            self.stdout.write(f"reconciled: {report['reconciled']}")
        self.stdout.write(f"dead-letter queue: {report['dead_letters'] or 'empty'}")
