"""What the tests share: waiting for background work, a webhook receiver, breakers as the
settings configure them, the stand-ins, and the pipeline driven from a test.

Fixtures stay in ``conftest.py``; everything here is a plain function or class, imported
by name (``from tests.helpers import wait_for``).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils.module_loading import import_string

from bot.models import Channel, QueuedTweet, Status
from bot.services.review import reply_approve
from resilience import CircuitBreaker, registry
from resilience.stores import MemoryStore

if TYPE_CHECKING:
    from django.http import HttpResponse

    from sandbox.harness import Sandbox
    from sandbox.http import App

__all__ = [
    "PUBLISH_AT_ONCE",
    "ROOT",
    "Receiver",
    "approved",
    "breaker_from_settings",
    "discovered",
    "environ_without",
    "free_port",
    "hang",
    "requests_to",
    "reset_breakers",
    "run_pipeline",
    "shown_version",
    "summon",
    "until",
    "wait_for",
    "worker_env",
]

ROOT = Path(__file__).resolve().parent.parent  # where manage.py is


# --- waiting for background work -----------------------------------------------------------


def until(condition: Callable[[], object], *, timeout: float, interval: float = 0.01) -> bool:
    """Poll ``condition`` every ``interval`` seconds until it holds or ``timeout`` passes.

    Says whether it held; never raises, so the caller's own assertion (with the output of
    a subprocess, say) reports the failure. ``time.monotonic`` keeps the deadline, so a
    frozen or travelling wall clock does not stop the wait.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def wait_for(
    condition: Callable[[], object],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str = "condition not met in time",
) -> None:
    """Wait for background work (a poll, a delivery) without asserting how long it took.

    Fails the test with ``message`` if ``condition`` does not hold within ``timeout``.
    """
    if not until(condition, timeout=timeout, interval=interval):
        raise AssertionError(message)


# --- loopback ports and a webhook receiver -------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on: bound by the OS, then released at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hang(marker: str, seconds: float) -> None:
    """A task that never finishes in time: says it started (``marker``), then sleeps."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)


class Receiver:
    """A tiny webhook endpoint on a loopback port recording what Telegram POSTs to it.

    Answers every POST with ``status``; ``calls`` holds (headers, JSON body) pairs in
    arrival order and ``arrived`` is set by the first. Close it (or use ``with``).
    """

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[dict[str, str], dict]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), json.loads(body)))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.arrived.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/telegram/webhook/"
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the stand-ins ---------------------------------------------------------------------------


def requests_to(app: App, endpoint: str) -> int:
    """How many requests a stand-in received for ``endpoint`` (its route's name)."""
    return sum(name == endpoint for name, _ in app.requests)


# --- circuit breakers ------------------------------------------------------------------------


def breaker_from_settings(
    name: str, *, clock: Callable[[], float] | None = None, **overrides: Any
) -> CircuitBreaker:
    """Breaker ``name`` with the thresholds ``settings.RESILIENCE`` gives it, but private.

    Unlike ``get_breaker`` it keeps its state in its own memory (no store shared with
    other tests or processes) and, given one, reads the test's ``clock``. ``overrides``
    replace single settings (a lower ``failure_threshold``, say).
    """
    config: dict[str, Any] = dict(settings.RESILIENCE["BREAKERS"][name])
    config.pop("store", None)
    failure_on = config.pop("failure_on")
    if isinstance(failure_on, str):
        failure_on = import_string(failure_on)
    if clock is not None:
        config["clock"] = clock
    config.update(overrides)
    return CircuitBreaker(name, failure_on=failure_on, store=MemoryStore(), **config)


def reset_breakers() -> None:
    """Forget every breaker (and store) the process built from settings: the next
    ``get_breaker`` starts from the shared store's state, or closed."""
    registry.clear()


# --- the pipeline ----------------------------------------------------------------------------

# Pacing that publishes as soon as a reply is approved: no delay, no quiet hours, roomy caps,
# and messages to the owner's chat without the second between them.
PUBLISH_AT_ONCE: Mapping[str, int | str] = {
    "TELEGRAM_SEND_INTERVAL_SECONDS": 0,
    "MIN_DELAY_MINUTES": 0,
    "MAX_DELAY_MINUTES": 0,
    "QUIET_HOURS_START": 0,
    "QUIET_HOURS_END": 0,
    "MAX_POSTS_PER_HOUR": 100,
    "MAX_POSTS_PER_DAY": 1000,
    "MIN_SPACING_MINUTES": 0,
    "MAX_REPLIES_PER_AUTHOR_PER_DAY": 5,
    "REPLY_MODE": "auto",
}


def run_pipeline() -> dict[str, dict[str, int]]:
    """One pass of every stage in this process (``run_pipeline --once``); its JSON report."""
    out = io.StringIO()
    call_command("run_pipeline", "--once", "--json", stdout=out)
    return json.loads(out.getvalue())


def summon(
    sandbox: Sandbox, text: str = "how do you test retries without sleeping?", author: str = "alice"
) -> str:
    """An author mentions us: X lets us answer through the API. The new post's id."""
    return sandbox.x.publish(author, f"@replyguy {text}")


def discovered(post_id: str) -> QueuedTweet:
    """The queue's row for the post ``post_id``."""
    return QueuedTweet.objects.get(target_tweet_id=post_id)


def approved(post_id: str, text: str | None = None) -> QueuedTweet:
    """The owner approves the pending draft for ``post_id`` on Telegram (edited to ``text``)."""
    tweet = discovered(post_id)
    assert tweet.status == Status.PENDING, tweet.last_error
    return reply_approve(
        tweet, actor="owner", channel=Channel.TELEGRAM, version=tweet.draft_version, text=text
    )


def shown_version(page: HttpResponse) -> str:
    """The draft version an admin review page rendered (what the browser posts back)."""
    found = re.search(r'name="shown_version" value="(\d+)"', page.content.decode())
    assert found, "the review page carries no draft version"
    return found.group(1)


def environ_without(*prefixes: str) -> dict[str, str]:
    """This process's environment less every variable whose name starts with a prefix."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def worker_env(sandbox: Sandbox, **pacing: str) -> dict[str, str]:
    """A worker process's environment: this test's database, the stand-ins, fast pacing."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{db['NAME']}"
    else:
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    env = environ_without("PYTEST")
    env.update({name: str(value) for name, value in sandbox.env().items()})
    env.update(
        DATABASE_URL=url,
        DEBUG="true",
        REDIS_URL="",
        **{name: str(value) for name, value in PUBLISH_AT_ONCE.items()},
        LOG_LEVEL="ERROR",
    )
    env.update(pacing)
    return env
