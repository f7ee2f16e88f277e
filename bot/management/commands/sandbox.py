"""Start the local stand-ins for X, an OpenAI-compatible model and Telegram."""

from __future__ import annotations

import shlex
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.harness import OUR_USERNAME, Sandbox

# The sandbox model's drafts say what they are: nobody mistakes them for a real model's.
PLACEHOLDER = "[sandbox placeholder] "

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
        host = options["host"]
        ports = {name: options[f"{name}_port"] for name in ("x", "openai", "telegram")}
        if options["env"]:
            # Only the addresses: nothing is bound, so this works while a sandbox runs.
            urls = {name: f"http://{host}:{port}" for name, port in ports.items()}
            for name, value in Sandbox.env_for(**urls).items():
                self.stdout.write(f"export {name}={shlex.quote(str(value))}")
            return
        try:
            sandbox = Sandbox(
                host=host,
                x_port=ports["x"],
                openai_port=ports["openai"],
                telegram_port=ports["telegram"],
                seed=options["seed"],
                placeholder=PLACEHOLDER,
            )
        except OSError as error:
            raise CommandError(
                f"the sandbox cannot listen on {host} ports "
                f"{', '.join(map(str, ports.values()))}: {error.strerror or error}. "
                "Choose others with --x-port, --openai-port and --telegram-port."
            ) from None
        if options["demo"]:
            for username, texts in DEMO_ACCOUNTS.items():
                sandbox.x.add_user(username)
                sandbox.x.schedule_posts(username, texts, every_seconds=120)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        with sandbox:
            for name, url in sandbox.urls().items():
                self.stdout.write(f"sandbox {name}: {url} (control API: {url}/_sandbox/state)")
            self.stdout.write(
                f"sandbox phone (the owner's Telegram): {sandbox.urls()['telegram']}/phone"
            )
            self.stdout.write(f"our X account: @{OUR_USERNAME}; Ctrl-C stops the sandbox")
            self.stdout.flush()
            while not stop.wait(0.5):
                pass
        self.stdout.write("sandbox stopped")
