from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from resilience.retry import set_testing
from sandbox.http import App, Server
from tests.helpers import PUBLISH_AT_ONCE, Receiver, reset_breakers

# Markers naming services a run must not skip, e.g. REPLYGUY_REQUIRE=postgres,redis in CI.
REQUIRED = {name.strip() for name in os.environ.get("REPLYGUY_REQUIRE", "").split(",") if name}
_skipped_required: list[str] = []


def on_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL)")
    for item in items:
        if "redis_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)
        if item.get_closest_marker("postgres") and not on_postgres():
            item.add_marker(skip)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and any(name in report.keywords for name in REQUIRED):
        _skipped_required.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    wanted = list(_skipped_required)
    if wanted:
        print(f"\nFAILED: {len(wanted)} required test(s) were skipped ({', '.join(REQUIRED)}):")
        for nodeid in wanted:
            print(f"  {nodeid}")
        session.exitstatus = 1


class FakeClock:
    """Wall-clock stand-in: tests move time by hand instead of sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    reset_breakers()
    yield
    reset_breakers()


@pytest.fixture(autouse=True, scope="session")
def _retry_never_sleeps() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


@pytest.fixture
def redis_url() -> str:
    """A reachable Redis for tests that need one; skipped (or failed in CI) without."""
    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"needs Redis at {url}: {exc}")
    return url


@pytest.fixture
def server(app: App) -> Iterator[Server]:
    """The module's stand-in (its ``app`` fixture) served on a free loopback port."""
    with Server(app) as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook endpoint answering 200, closed after the test."""
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def sandbox_servers():
    """The three stand-ins, started once per test process on free loopback ports."""
    from sandbox.harness import Sandbox

    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(sandbox_servers, settings):
    """Fresh stand-ins, with Reply Guy's settings pointing at them."""
    sandbox_servers.reset()
    for name, value in sandbox_servers.env().items():
        setattr(settings, name, value)
    yield sandbox_servers
    sandbox_servers.reset()


@pytest.fixture
def pipeline(sandbox, settings):
    """Publishing as soon as approved: no delay, no quiet hours, roomy caps.

    The shared cache is emptied before and after: it holds state that outlives a test's
    transaction (rate-limit holds, error streaks, our account).
    """
    from django.core.cache import cache

    from bot.models import PipelineControl, TargetAccount

    # Made by a migration, and so gone after a transactional test's flush.
    PipelineControl.objects.get_or_create(pk=1)
    for name, value in PUBLISH_AT_ONCE.items():
        setattr(settings, name, value)
    settings.PUBLISHING_PAUSED = False
    cache.clear()
    TargetAccount.objects.create(username="alice")
    yield sandbox
    cache.clear()


# --- a real browser: Debian's Chromium driven by Playwright --------------------------------

from typing import TYPE_CHECKING  # noqa: E402 (kept next to the fixtures it types)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
# Chromium's own traffic (updates, sync, QUIC probes) is off: the tests run offline.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for tests marked ``browser``; skipped without it (failed in CI).

    Per module rather than per session: while Playwright runs, its event loop is the
    thread's running loop, and Django refuses database access from such a thread, so it
    must not outlive the browser tests' module.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs playwright (pip install -r requirements-dev.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab, phone-sized (400 x 760), in its own browser context."""
    if request.node.get_closest_marker("browser") is None:
        pytest.fail("a test using the browser must be marked @pytest.mark.browser")
    context = browser.new_context(viewport={"width": 400, "height": 760})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    """Where the README's screenshots go: ``docs/screenshots/`` with UPDATE_SCREENSHOTS=1,
    else a scratch folder (times and ports differ on every run, so a plain run leaves the
    committed ones alone)."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        folder = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path
