"""The owner's Telegram in polling mode; also sets or removes the webhook."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bot.clients.telegram import TelegramClient
from bot.services import heartbeat
from bot.services.notices import notice_service_error
from bot.telegram.outbox import ask_owner
from bot.telegram.updates import handle_received, receive
from resilience import ServiceError
from resilience.alerts import deliver_alerts
from resilience.db import CONNECTION_ERRORS, with_db_recovery

log = logging.getLogger("bot.telegram.poller")

POLL_SECONDS = 5  # a long poll; Ctrl-C or SIGTERM ends the command after it
OUTBOX_EVERY = 5.0  # seconds between two outbox passes (alerts, approval messages)
WORKERS_EVERY = 60.0
ERROR_PAUSE = 5.0
CONFLICT_PAUSE = 30.0  # polling while a webhook is set: nothing to read until it is removed


class Command(BaseCommand):
    help = (
        "Run the owner's Telegram by long polling until stopped (Ctrl-C or SIGTERM): "
        "handle button presses and commands, send alerts and approval messages. "
        "--set-webhook URL / --delete-webhook switch to and from webhook mode."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--set-webhook",
            metavar="URL",
            help="Have Telegram POST updates to URL (https://<host>/telegram/webhook/), with "
            "TELEGRAM_WEBHOOK_SECRET, instead of polling.",
        )
        group.add_argument("--delete-webhook", action="store_true", help="Back to polling mode.")
        group.add_argument(
            "--once", action="store_true", help="One poll and one outbox pass, then exit."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            client = TelegramClient.from_settings()
        except Exception as exc:
            raise CommandError(f"Telegram is not configured: {exc}") from None
        if options["set_webhook"]:
            self._set_webhook(client, options["set_webhook"])
        elif options["delete_webhook"]:
            self._call(client.delete_webhook)
            self.stdout.write("Webhook removed: run `manage.py telegram_bot` to poll.")
        elif options["once"]:
            Poller(client).cycle(poll_seconds=0, outbox=True)
        else:
            self._poll(client)

    def _set_webhook(self, client: TelegramClient, url: str) -> None:
        secret = settings.TELEGRAM_WEBHOOK_SECRET
        if not secret:
            raise CommandError(
                "Set TELEGRAM_WEBHOOK_SECRET first (1-256 characters A-Z, a-z, 0-9, _ and -): "
                "Telegram sends it with every update and the webhook refuses calls without it."
            )
        if not url.rstrip("/").endswith("/telegram/webhook"):
            raise CommandError(f"{url} is not Reply Guy's webhook: it ends in /telegram/webhook/")
        self._call(client.set_webhook, url, secret)
        self.stdout.write(f"Webhook set: Telegram now POSTs updates to {url}")

    def _call(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ServiceError as exc:
            raise CommandError(f"Telegram refused: {exc}") from None

    def _poll(self, client: TelegramClient) -> None:
        stop = threading.Event()
        poller = Poller(client, stop=stop)

        def stopping(signum: int, frame: object) -> None:
            if stop.is_set():
                raise KeyboardInterrupt  # asked twice: now
            # The cycle under way ends (a long poll is at most POLL_SECONDS) and nothing
            # is cut half way: no update kept but unhandled, no asyncio loop left open.
            stop.set()

        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        self.stdout.write(f"Telegram poller: chat {client.chat_id}; Ctrl-C stops it")
        try:
            while not stop.is_set():
                try:
                    poller.cycle(poll_seconds=POLL_SECONDS, outbox=poller.outbox_due())
                except Exception:  # the database gone for longer than its retries, say
                    log.exception("telegram poller: this cycle failed; the next one goes on")
                    stop.wait(ERROR_PAUSE)
        except KeyboardInterrupt:
            pass
        self.stdout.write("Telegram poller stopped")


class Poller:
    """One process's polling loop: updates in, then now and then the outbox out."""

    def __init__(self, client: TelegramClient, *, stop: threading.Event | None = None) -> None:
        self.client = client
        self.stop = stop or threading.Event()
        self.offset: int | None = None
        self.started = time.time()
        self.last_outbox = 0.0
        self.last_workers_check = time.time()

    def outbox_due(self) -> bool:
        return time.time() - self.last_outbox >= OUTBOX_EVERY

    @with_db_recovery
    def cycle(self, *, poll_seconds: int, outbox: bool) -> None:
        try:
            updates = self.client.get_updates(offset=self.offset, timeout=poll_seconds)
        except ServiceError as exc:
            conflict = exc.status == 409
            log.warning(
                "telegram: cannot read updates (%s); %s",
                exc,
                "a webhook is set or another poller runs: run `manage.py telegram_bot "
                "--delete-webhook`, or stop this poller (webhook mode needs none)"
                if conflict
                else "trying again shortly",
            )
            if conflict:
                notice_service_error(exc)
            self.stop.wait((CONFLICT_PAUSE if conflict else ERROR_PAUSE) if poll_seconds else 0)
            updates = []
        for update in updates:
            try:
                receive(update)
            except CONNECTION_ERRORS:
                # The database, not the update: the offset stays before it, so Telegram
                # gives it again once with_db_recovery has a new connection.
                raise
            except Exception:
                log.exception("telegram: update %s could not be kept", update.get("update_id"))
            # Past it once kept, or refused for itself: one update we cannot keep never
            # blocks the rest.
            self.offset = max(self.offset or 0, int(update.get("update_id", 0)) + 1)
        handle_received(self.client)
        if time.time() - self.last_workers_check >= WORKERS_EVERY:
            self.last_workers_check = time.time()
            heartbeat.check_workers(since=self.started)
        if outbox:
            self.last_outbox = time.time()
            deliver_alerts()
            ask_owner(self.client)
