"""The owner's desk in a real headless Chromium: a moderation and a dead-letter bulk retry,
clicked through as the owner would, on a 1366 x 900 screen.

As in ``test_telegram_browser.py``: Playwright's sync API keeps an event loop running in
the test's thread, so the pipeline's passes (whose Telegram client refuses to run under
one) run in a worker thread, and the database may be touched from the test's thread
only because DJANGO_ALLOW_ASYNC_UNSAFE is set around this module. The admin is served by
``live_server`` from its own thread, on the same (file or PostgreSQL) test database.

Each test takes a screenshot for the README; they replace ``docs/screenshots/`` only with
UPDATE_SCREENSHOTS=1 (times and ports differ on every run, so a plain run leaves the
committed ones alone)::

    UPDATE_SCREENSHOTS=1 .venv/bin/pytest tests/test_admin_browser.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from bot.models import FailedTweet, QueuedTweet, Status, TargetAccount
from bot.services import heartbeat
from bot.services.dead_letters import Stage, fail
from resilience import get_breaker
from tests.helpers import approved, discovered, run_pipeline, summon

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

T = TypeVar("T")
SCREEN = {"width": 1366, "height": 900}


@pytest.fixture(scope="module", autouse=True)
def _database_beside_the_browser(django_db_setup: None) -> Iterator[None]:
    """The test database exists before the browser starts, and the test's own setup
    (rows, the owner's account) may touch it from the browser's thread."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


def service(fn: Callable[[], T]) -> T:
    """Run the service's side in its own thread (closing its connection after)."""

    def run() -> T:
        try:
            return fn()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=60)


@pytest.fixture
def desk(browser: Any, live_server: Any, pipeline: Any) -> Iterator[Any]:
    """The owner logged in to the admin on a laptop-sized screen."""
    User.objects.create_superuser("owner", password="a long owner password")
    context = browser.new_context(viewport=SCREEN)
    page = context.new_page()
    page.goto(f"{live_server.url}/admin/login/")
    page.get_by_label("Username").fill("owner")
    page.get_by_label("Password").fill("a long owner password")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="The owner's desk").wait_for()
    yield page
    context.close()


def test_the_owner_reviews_edits_and_approves_and_sees_the_reply_posted(
    desk, pipeline, settings, screenshots
):
    settings.DRAFT_VARIANTS = 2
    TargetAccount.objects.all().delete()  # answered by mention only
    post_id = summon(pipeline, "how do you test code that retries with backoff?", "dana")
    service(run_pipeline)  # discovered and drafted
    tweet = discovered(post_id)
    assert tweet.status == Status.PENDING

    desk.get_by_role("link", name="Queued tweets").first.click()
    question = "how do you test code that retries with backoff?"
    row = desk.locator("#result_list tr", has_text=question)
    row.get_by_role("link", name="@dana").click()
    panel = desk.locator("#decision")
    panel.get_by_text("Through the API.").wait_for()
    assert panel.get_by_role("button", name="Approve").is_visible()
    assert panel.get_by_text(tweet.variants[1]).is_visible()
    desk.screenshot(path=str(screenshots / "review.png"))

    reply = desk.get_by_label("Our reply")
    too_long = "Inject the clock and the sleep; assert every wait. " * 7
    reply.fill(too_long)
    panel.get_by_role("button", name="Approve").click()
    desk.get_by_text("This reply cannot be posted").wait_for()
    assert desk.get_by_label("Our reply").input_value() == too_long
    assert discovered(post_id).status == Status.PENDING

    mine = "Inject the clock and the sleep function, then assert every wait: no real sleeping."
    desk.get_by_label("Our reply").fill(mine)
    desk.locator("#decision").get_by_role("button", name="Approve").click()
    desk.get_by_text("Approved; it is scheduled. It goes out with the next publish pass").wait_for()
    assert discovered(post_id).status == Status.APPROVED

    service(run_pipeline)  # published
    assert [r.text for r in pipeline.x.replies_to(post_id)] == [mine]
    desk.reload()
    desk.locator("#decision").get_by_text("Status: Posted").wait_for()


def test_the_owner_sees_the_dashboard_and_retries_every_publish_failure_at_once(
    desk, pipeline, settings, live_server, screenshots
):
    TargetAccount.objects.all().delete()
    settings.MIN_DELAY_MINUTES = settings.MAX_DELAY_MINUTES = 25
    asked = [
        summon(pipeline, question, author)
        for question, author in [
            ("what is your favourite way to test retries?", "bob"),
            ("do you mock the clock or inject it?", "carol"),
            ("how long should a circuit breaker stay open?", "dave"),
            ("is exponential backoff with jitter always right?", "erin"),
            ("where do you keep your dead letters?", "frank"),
            ("should a retry ever be silent?", "grace"),
        ]
    ]
    service(run_pipeline)
    for post_id in asked[:4]:
        approved(post_id)
    now = timezone.now()
    for post_id in asked[:3]:
        fail(
            discovered(post_id),
            stage=Stage.PUBLISH,
            expected=Status.APPROVED,
            error="X refused the reply: 400 Bad Request (the post is not available)",
            kind="permanent",
            now=now,
        )
    # One failure whose reply went out after all: a retry must leave it alone.
    QueuedTweet.objects.filter(target_tweet_id=asked[2]).update(
        status=Status.POSTED, reply_tweet_id="1", posted_at=now, claimed_at=now
    )
    get_breaker("ai_service").open_until((now + timedelta(minutes=2)).timestamp())
    heartbeat.beat()

    desk.goto(f"{live_server.url}/admin/")
    desk.locator("#desk-next").get_by_text("random delay until").wait_for()
    assert desk.locator("#sandbox-banner").is_visible()
    desk.screenshot(path=str(screenshots / "dashboard.png"))
    assert (screenshots / "dashboard.png").stat().st_size > 10_000

    desk.locator("#desk-dead-letters").get_by_role("link", name="Dead letters").click()
    desk.locator("#changelist-filter").get_by_role("link", name="publish").click()
    desk.get_by_role("link", name="Retry everything matching this filter (3)").click()
    desk.get_by_text("The filter stage=publish matches 3 failed replies.").wait_for()
    assert desk.locator("#matching-retryable").inner_text() == "2"
    assert "post posted" in desk.locator("#left-alone").inner_text()
    assert QueuedTweet.objects.filter(status=Status.FAILED).count() == 2  # not yet

    desk.get_by_role("button", name="Yes, retry 2 now").click()
    desk.get_by_text("Sent back to their stage: 2.").wait_for()
    assert {discovered(post_id).status for post_id in asked[:2]} == {Status.APPROVED}
    assert discovered(asked[2]).status == Status.POSTED
    assert set(FailedTweet.objects.values_list("status", flat=True)) == {"retrying", "pending"}
