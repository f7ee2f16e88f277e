"""Run the pipeline's stages synchronously: one pass of every stage, for cron and tests."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from bot.tasks import STAGES


class Command(BaseCommand):
    help = "Run one synchronous pass of every pipeline stage (discover, draft, ..., reconcile)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once", action="store_true", required=True, help="One pass, then exit."
        )
        parser.add_argument("--json", action="store_true", help="Print the counts as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        results: dict[str, dict[str, int]] = {}
        for name, stage in STAGES:
            results[name] = stage()
            if not options["json"]:
                counts = ", ".join(f"{k} {v}" for k, v in results[name].items()) or "nothing to do"
                self.stdout.write(f"{name}: {counts}")
        if options["json"]:
            self.stdout.write(json.dumps(results))
