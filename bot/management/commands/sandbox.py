"""Start the local stand-ins for X, an OpenAI-compatible model and Telegram."""

from __future__ import annotations

import shlex
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from sandbox.harness import OUR_USERNAME, Sandbox

DEMO_ACCOUNTS = {
    "djangonaut": [
        "Just shipped a Django 5.2 upgrade, the new composite primary keys are lovely.",
        "Anyone else running django-q2 in production? How do you monitor it?",
        "Hot take: most apps do not need Celery. A database queue goes a long way.",
    ],
    "pyfan": [
        f"@{OUR_USERNAME} what is your favourite way to test retries without sleeping?",
        "Circuit breakers in Python: which library do you trust?",
    ],
}


class Command(BaseCommand):
    help = (
        "Run the X API v2, OpenAI-compatible and Telegram Bot API stand-ins on loopback "
        "ports until interrupted. --env prints the settings that point Reply Guy at them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--x-port", type=int, default=8701)
        parser.add_argument("--openai-port", type=int, default=8702)
        parser.add_argument("--telegram-port", type=int, default=8703)
        parser.add_argument("--seed", type=int, default=0, help="Fault injection seed.")
        parser.add_argument(
            "--demo", action="store_true", help="Seed demo accounts that post now and then."
        )
        parser.add_argument(
            "--env",
            action="store_true",
            help="Print `export NAME=value` lines for these ports and exit.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        sandbox = Sandbox(
            host=options["host"],
            x_port=options["x_port"],
            openai_port=options["openai_port"],
            telegram_port=options["telegram_port"],
            seed=options["seed"],
        )
        if options["env"]:
            for name, value in sandbox.env().items():
                self.stdout.write(f"export {name}={shlex.quote(str(value))}")
            for server in sandbox.servers.values():
                server.httpd.server_close()
            return
        if options["demo"]:
            for username, texts in DEMO_ACCOUNTS.items():
                sandbox.x.add_user(username)
                sandbox.x.schedule_posts(username, texts, every_seconds=120)
        with sandbox:
            for name, url in sandbox.urls().items():
                self.stdout.write(f"sandbox {name}: {url} (control API: {url}/_sandbox/state)")
            self.stdout.write(
                f"sandbox phone (the owner's Telegram): {sandbox.urls()['telegram']}/phone"
            )
            self.stdout.write(f"our X account: @{OUR_USERNAME}; Ctrl-C stops the sandbox")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                self.stdout.write("sandbox stopped")
