"""Run the pipeline's stages synchronously: one pass of every stage, for cron and tests."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from bot.tasks import STAGES

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Run one synchronous pass of every pipeline stage (discover, draft, ..., reconcile). "
        "A stage that fails does not stop the others; the command then exits with status 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once", action="store_true", required=True, help="One pass, then exit."
        )
        parser.add_argument("--json", action="store_true", help="Print the counts as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        results: dict[str, dict[str, Any]] = {}
        failed: list[str] = []
        for name, stage in STAGES:
            try:
                results[name] = stage()
            except Exception as exc:
                log.exception("run_pipeline: stage %s failed", name)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                failed.append(name)
            if not options["json"]:
                counts = ", ".join(f"{k} {v}" for k, v in results[name].items()) or "nothing to do"
                self.stdout.write(f"{name}: {counts}")
        if options["json"]:
            self.stdout.write(json.dumps(results))
        if failed:
            raise CommandError(
                f"{len(failed)} of {len(STAGES)} stages failed: {', '.join(failed)} "
                "(the others ran; see the log for each error)"
            )
