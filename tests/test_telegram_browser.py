"""The whole Telegram flow as the owner sees it: the sandbox phone in headless Chromium.

Playwright's sync API keeps an event loop running in the test's thread, where Django
refuses database calls and the Telegram client refuses its sync calls; the service's
side (pipeline passes, the poller) therefore runs in a worker thread, as it would run
in its own process.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from django.core.management import call_command
from django.db import connection

from bot.models import Status
from tests.helpers import discovered, run_pipeline, summon

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

T = TypeVar("T")


@pytest.fixture(scope="module", autouse=True)
def _database_beside_the_browser(django_db_setup: None) -> Iterator[None]:
    """The test database exists before the browser starts, and the fixtures' own setup
    (flushing tables, creating a target) may touch it from the browser's thread."""
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


def poller() -> None:
    call_command("telegram_bot", "--once", stdout=io.StringIO())


@pytest.fixture
def phone(page: Any, pipeline: Any) -> Any:
    page.goto(f"{pipeline.urls()['telegram']}/phone")
    return page


def bubble_with(phone: Any, text: str) -> Any:
    return phone.locator(".msg", has_text=text).last


def test_the_owner_approves_on_the_phone_and_sees_the_reply_posted(phone, pipeline, screenshots):
    post_id = service(lambda: summon(pipeline, "favourite way to test retries?"))
    service(run_pipeline)  # discovered, drafted, sent to the phone
    draft = service(lambda: discovered(post_id).draft)
    message = bubble_with(phone, "favourite way to test retries?")
    message.get_by_text(draft).wait_for()
    phone.screenshot(path=str(screenshots / "phone.png"))
    message.get_by_role("button", name="✅ Approve").click()
    service(poller)  # the press is handled and answered
    phone.locator("#toast").get_by_text("Approved: it goes out around").wait_for()
    message.get_by_text("Approved by telegram:owner").wait_for()
    assert message.get_by_role("button", name="✅ Approve").count() == 0

    service(run_pipeline)  # published; the message shows the link
    reply_id = service(lambda: discovered(post_id).reply_tweet_id)
    message.get_by_text(f"Posted: https://x.com/i/web/status/{reply_id}").wait_for()
    assert service(lambda: discovered(post_id).status) == Status.POSTED


def test_the_owner_edits_on_the_phone_and_the_edited_text_goes_out(phone, pipeline):
    post_id = service(lambda: summon(pipeline, "what about flaky tests?"))
    service(run_pipeline)
    bubble_with(phone, "what about flaky tests?").get_by_role("button", name="✏️ Edit").click()
    service(poller)  # asks for the text (a force-reply question)
    phone.locator("#replying").get_by_text("Send the new reply to @alice").wait_for()
    phone.get_by_label("Message").fill("Quarantine them, then fix the clock they depend on.")
    phone.get_by_label("Message").press("Enter")
    phone.locator(".msg.owner", has_text="Quarantine them").wait_for()
    service(poller)  # the text is checked and shown for approval again
    shown = bubble_with(phone, "Draft:\nQuarantine them")
    shown.get_by_role("button", name="✅ Approve").wait_for()
    fresh = phone.locator(f'.msg[data-message-id="{shown.get_attribute("data-message-id")}"]')
    fresh.get_by_role("button", name="✅ Approve").click()
    service(poller)
    service(run_pipeline)
    texts = service(lambda: [r.text for r in pipeline.x.replies_to(post_id)])
    assert texts == ["Quarantine them, then fix the clock they depend on."]
    fresh.get_by_text("Posted: https://x.com/i/web/status/").wait_for()
