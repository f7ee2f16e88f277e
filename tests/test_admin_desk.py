"""The owner's desk in the admin, through the Django test client: the dashboard, review,
the dead-letter queue, alerts, breakers and the pause switch, as the owner uses them."""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bot.models import (
    Channel,
    Decision,
    FailedTweet,
    FailedTweetStatus,
    OperatorAction,
    PipelineControl,
    QueuedTweet,
    Source,
    Status,
)
from bot.services import heartbeat
from bot.services.control import set_publishing_paused
from bot.services.dead_letters import Stage, dead_letter_retry_due, dead_letters_retry, fail
from bot.services.scheduling import clock, reply_timing
from resilience import get_breaker
from resilience.models import AlertEvent, AlertStatus
from tests.helpers import approved, discovered, run_pipeline, shown_version, summon

pytestmark = pytest.mark.django_db

DESK = "/admin/"
QUEUE = "/admin/bot/queuedtweet/"
DEAD = "/admin/bot/failedtweet/"
MATCHING = "/admin/bot/failedtweet/retry-matching/"
SWITCH = "/admin/bot/pipelinecontrol/"
ALERTS = "/admin/resilience/alertevent/"
BREAKERS = "/admin/resilience/breakerrecord/"
# What the browser sends with a change form: the (empty) audit inline's management form.
INLINE = {"decisions-TOTAL_FORMS": "0", "decisions-INITIAL_FORMS": "0"}
PARIS = ZoneInfo("Europe/Paris")


def page_text(response) -> str:
    """The page's words as the owner reads them: tags dropped, entities decoded."""
    body = re.sub(r"<(style|script)\b.*?</\1>", " ", response.content.decode(), flags=re.S)
    body = re.sub(r"</?(td|th|tr|p|div|li|h\d|br|table|ul|label|option)\b[^>]*>", " ", body)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", body)).split())


def pending(pipeline, text: str = "how do you test retries?", author: str = "alice") -> QueuedTweet:
    post_id = summon(pipeline, text, author)
    run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.PENDING, tweet.last_error
    return tweet


def failed_rows(
    count: int,
    *,
    stage: str = Stage.PUBLISH,
    kind: str = "permanent",
    tweet_status: Status = Status.FAILED,
    first: int = 0,
) -> list[FailedTweet]:
    """``count`` tweets in the dead-letter queue, made directly (no X, no model)."""
    now = timezone.now()
    tweets = QueuedTweet.objects.bulk_create(
        QueuedTweet(
            target_tweet_id=str(10**15 + first + index),
            author_id=str(500 + index),
            author_username=f"author{first + index}",
            text=f"question number {first + index}?",
            tweet_created_at=now - timedelta(hours=1),
            source=Source.MENTION,
            summoned=True,
            status=tweet_status,
            draft=f"An answer to question {first + index}.",
            approved_at=now,
            approved_by="owner",
            approved_via=Channel.ADMIN,
            attempts=3,
        )
        for index in range(count)
    )
    return FailedTweet.objects.bulk_create(
        FailedTweet(
            queued_tweet=tweet,
            target_tweet_id=tweet.target_tweet_id,
            stage=stage,
            error=f"X refused the reply: 400 bad request ({tweet.target_tweet_id})",
            error_kind=kind,
            next_retry_at=now + timedelta(minutes=5),
        )
        for tweet in tweets
    )


def publish_failure(pipeline, text: str = "will this fail?") -> FailedTweet:
    """An approved reply X refused for good: in the dead-letter queue at stage publish."""
    post_id = summon(pipeline, text)
    run_pipeline()
    approved(post_id)
    fail(
        discovered(post_id),
        stage=Stage.PUBLISH,
        expected=Status.APPROVED,
        error="X refused it: 400 invalid reply",
        kind="permanent",
        now=timezone.now(),
    )
    return FailedTweet.objects.get(queued_tweet__target_tweet_id=post_id)


@pytest.fixture
def viewer(db) -> User:
    """Staff who may look at everything and change nothing."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__startswith="view_", content_type__app_label="bot")
    )
    return user


@pytest.fixture
def slow_pacing(settings):
    """Approved replies wait a 20-minute delay; no quiet hours; roomy caps."""
    settings.MIN_DELAY_MINUTES = settings.MAX_DELAY_MINUTES = 20
    return settings


# --- the dashboard ---------------------------------------------------------------------------


def test_the_dashboard_shows_the_queue_the_next_reply_breakers_workers_alerts_and_x_usage(
    pipeline, slow_pacing, admin_client
):
    waiting = pending(pipeline, "first question?", "bob")
    pending(pipeline, "second question?", "carol")
    approved(waiting.target_tweet_id)
    get_breaker("ai_service").open_until(timezone.now().timestamp() + 600)
    heartbeat.beat()
    AlertEvent.objects.create(
        kind="breaker_opened", subject="ai_service", message="The model is down"
    )
    when = clock(discovered(waiting.target_tweet_id).scheduled_at, timezone.now())

    page = admin_client.get(DESK)
    text = page_text(page)
    assert "The owner's desk" in text
    assert re.search(r"Waiting for approval 1 .*Approved 1 ", text)
    assert f"To @bob: “{discovered(waiting.target_tweet_id).draft}”" in text
    assert f"It goes out around {when}: random delay until {when}." in text
    assert "ai_service open Open: calls are refused until" in text
    assert "twitter_api closed Closed: calls go through." in text
    assert "Running: last heartbeat" in text
    assert "breaker_opened" in text
    assert "The model is down" in text
    assert re.search(r"Recent alerts · \d+ not seen", text)
    # The pipeline's reads of X were counted; the sandbox is named plainly.
    assert re.search(r"X usage today \(UTC\) Calls [1-9]", text)
    assert "Local sandbox. X, the model and Telegram are the stand-ins on this machine" in text
    assert "Running: approved replies go out" in text


def test_view_site_leads_to_the_dashboard(admin_client):
    page = admin_client.get("/admin/bot/queuedtweet/")
    assert '<a href="/admin/">View site</a>' in page.content.decode()


def test_the_real_services_are_not_called_a_sandbox(admin_client, settings):
    settings.X_API_BASE_URL = "https://api.twitter.com"
    settings.OPENAI_BASE_URL = "https://api.openai.com/v1"
    settings.TELEGRAM_API_BASE_URL = "https://api.telegram.org"
    text = page_text(admin_client.get(DESK))
    assert "Local sandbox" not in text
    assert "https://api.twitter.com the real service" in text


def test_a_silent_worker_is_said_to_be_silent(admin_client):
    heartbeat.beat(now=timezone.now().timestamp() - 3600)
    assert "Silent for 1 hour" in page_text(admin_client.get(DESK))


def test_the_paused_banner_is_on_every_admin_page_while_publishing_is_paused(admin_client):
    set_publishing_paused(True, actor="owner", channel=Channel.TELEGRAM, reason="lunch break")
    for url in (DESK, QUEUE, DEAD, "/admin/auth/user/", ALERTS, BREAKERS):
        assert "⏸ Publishing is paused (lunch break)." in page_text(admin_client.get(url)), url
    set_publishing_paused(False, actor="owner", channel=Channel.TELEGRAM)
    assert "paused-banner" not in admin_client.get(QUEUE).content.decode()


def test_the_environment_pause_is_named_in_the_banner(admin_client, settings):
    settings.PUBLISHING_PAUSED = True
    assert "PUBLISHING_PAUSED is set in the environment" in page_text(admin_client.get(QUEUE))


# --- why a reply waits -------------------------------------------------------------------------


def test_quiet_hours_are_named_as_the_reason_a_reply_waits(pipeline, settings):
    settings.TIME_ZONE = "Europe/Paris"
    settings.QUIET_HOURS_START, settings.QUIET_HOURS_END = 23, 7
    settings.MIN_DELAY_MINUTES = settings.MAX_DELAY_MINUTES = 10
    tweet = pending(pipeline)
    with time_machine.travel(datetime(2026, 11, 10, 1, 0, tzinfo=PARIS), tick=False):
        timezone.activate(PARIS)
        approved(tweet.target_tweet_id)
        timing = reply_timing(discovered(tweet.target_tweet_id))
        assert timing.at == datetime(2026, 11, 10, 7, 0, tzinfo=PARIS)
        assert timing.sentence() == "It goes out around 07:00: quiet hours until 07:00"


def test_a_full_hourly_cap_is_named_with_the_time_it_frees(pipeline, settings):
    settings.MAX_POSTS_PER_HOUR = 1
    first, second = pending(pipeline, "one?", "bob"), pending(pipeline, "two?", "carol")
    approved(first.target_tweet_id)
    run_pipeline()
    assert discovered(first.target_tweet_id).status == Status.POSTED
    approved(second.target_tweet_id)
    claimed = discovered(first.target_tweet_id).claimed_at
    timing = reply_timing(discovered(second.target_tweet_id))
    assert timing.at == claimed + timedelta(hours=1)
    frees = clock(claimed + timedelta(hours=1), timezone.now())
    assert timing.sentence().endswith(f": hourly cap of 1 an hour until {frees}")


def test_a_paused_reply_says_so_before_anything_else(pipeline, slow_pacing):
    tweet = pending(pipeline)
    approved(tweet.target_tweet_id)
    set_publishing_paused(True, actor="owner", channel=Channel.ADMIN, reason="checking drafts")
    sentence = reply_timing(discovered(tweet.target_tweet_id)).sentence()
    assert sentence.startswith(
        "Publishing is paused (checking drafts): nothing goes out until it is resumed; "
        "then it goes out around "
    )
    assert "random delay until" in sentence


def test_a_reply_not_summoned_comes_back_as_a_link(pipeline, slow_pacing):
    post_id = pipeline.x.publish("alice", "a post of a target account, no mention")
    run_pipeline()
    approved(post_id)
    sentence = reply_timing(discovered(post_id)).sentence()
    assert sentence.startswith("It comes back to you as a link to post around ")


# --- queued tweets -----------------------------------------------------------------------------


def test_the_list_shows_post_and_draft_and_filters_by_status_source_target_and_date(
    pipeline, admin_client
):
    asked = pending(pipeline, "how do you name tests?", "alice")
    other = pending(pipeline, "what about flaky ones?", "bob")
    text = page_text(admin_client.get(QUEUE))
    assert "how do you name tests?" in text
    assert asked.draft in text
    assert f'name="shown_version_{asked.id}" value="{asked.draft_version}"' in (
        admin_client.get(QUEUE).content.decode()
    )
    by_target = page_text(admin_client.get(QUEUE, {"author": "alice"}))
    assert "how do you name tests?" in by_target
    assert "what about flaky ones?" not in by_target
    assert "@alice" in page_text(admin_client.get(QUEUE))  # the target filter's choice
    assert "what about flaky" in page_text(admin_client.get(QUEUE, {"status__exact": "pending"}))
    assert "0 queued tweets" in page_text(admin_client.get(QUEUE, {"status__exact": "posted"}))
    assert "flaky" in page_text(admin_client.get(QUEUE, {"source__exact": Source.MENTION}))
    today = timezone.localdate()
    dated = {"created_at__year": today.year, "created_at__month": today.month}
    assert "flaky" in page_text(admin_client.get(QUEUE, dated))
    searched = page_text(admin_client.get(QUEUE, {"q": "flaky"}))
    assert other.text in searched
    assert asked.text not in searched


def test_a_handed_off_reply_shows_its_link_in_the_list_and_can_be_marked_posted(
    pipeline, admin_client
):
    post_id = pipeline.x.publish("alice", "a post of a target account, no mention")
    run_pipeline()
    approved(post_id)
    run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.HANDOFF
    assert "https://x.com/intent/post?in_reply_to=" in admin_client.get(QUEUE).content.decode()
    url = f"{QUEUE}{tweet.id}/change/"
    text = page_text(admin_client.get(url))
    assert "As a link for you. Comes back to you as a link to post it yourself" in text
    admin_client.post(url, {"_posted_by_hand": "I posted it", **INLINE})
    assert discovered(post_id).status == Status.POSTED


def test_the_review_page_puts_the_decision_first_and_hides_empty_fields(pipeline, admin_client):
    tweet = pending(pipeline, "is there a decision first?")
    page = admin_client.get(f"{QUEUE}{tweet.id}/change/")
    body = page.content.decode()
    buttons, post, fields = (
        body.index('name="_approve"'),
        body.index("is there a decision first?"),
        body.index('class="form-row'),
    )
    assert buttons < post < fields
    text = page_text(page)
    assert "@alice wrote, under a minute ago (mentioning us):" in text
    assert "Expires in 23 h 59 min if not approved" in text
    assert "Through the API. Goes through X's API: the author mentioned us" in text
    # Empty fields are hidden: no reply id, no posted time, no error yet.
    for label in ("Reply tweet id", "Posted at", "Last error", "Skip reason"):
        assert label not in text, label
    assert "Submit" not in text
    assert 'name="_save"' not in body


def test_an_edit_that_fails_validation_keeps_the_typed_text_and_says_why(pipeline, admin_client):
    tweet = pending(pipeline)
    url = f"{QUEUE}{tweet.id}/change/"
    too_long = "This reply is far too long for X. " * 12
    response = admin_client.post(
        url,
        {"reply_text": too_long, "shown_version": shown_version(admin_client.get(url)),
         "_approve": "Approve", **INLINE},
    )  # fmt: skip
    assert response.status_code == 200
    text = page_text(response)
    assert "This reply cannot be posted:" in text
    assert html.escape(too_long.strip()) in response.content.decode()
    assert discovered(tweet.target_tweet_id).status == Status.PENDING


def test_approving_says_when_it_goes_out_and_why_it_waits(pipeline, slow_pacing, admin_client):
    tweet = pending(pipeline)
    url = f"{QUEUE}{tweet.id}/change/"
    response = admin_client.post(
        url,
        {"reply_text": tweet.draft, "shown_version": shown_version(admin_client.get(url)),
         "_approve": "Approve", **INLINE},
        follow=True,
    )  # fmt: skip
    when = clock(discovered(tweet.target_tweet_id).scheduled_at, timezone.now())
    assert (
        f"Approved; it is scheduled. It goes out around {when}: random delay until {when}."
        in page_text(response)
    )
    assert f"It goes out around {when}" in page_text(admin_client.get(url))


def test_a_variant_is_approved_as_it_is(pipeline, settings, admin_client):
    settings.DRAFT_VARIANTS = 3
    tweet = pending(pipeline)
    assert len(tweet.variants) == 3
    url = f"{QUEUE}{tweet.id}/change/"
    page = admin_client.get(url)
    assert tweet.variants[2] in page_text(page)
    admin_client.post(
        url,
        {"reply_text": tweet.draft, "variant": "2", "shown_version": shown_version(page),
         "_approve": "Approve", **INLINE},
    )  # fmt: skip
    tweet = discovered(tweet.target_tweet_id)
    assert (tweet.status, tweet.draft) == (Status.APPROVED, tweet.variants[2])
    assert Decision.objects.get(queued_tweet=tweet).text_after == tweet.variants[2]


def test_view_only_staff_see_no_buttons_and_cannot_decide(pipeline, viewer, client):
    tweet = pending(pipeline)
    client.force_login(viewer)
    url = f"{QUEUE}{tweet.id}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert 'name="_approve"' not in page.content.decode()
    response = client.post(url, {"_approve": "Approve", "shown_version": tweet.draft_version})
    assert response.status_code == 403
    bulk = client.post(
        QUEUE, {"action": "approve_selected", "_selected_action": [tweet.id], "index": "0",
                f"shown_version_{tweet.id}": str(tweet.draft_version)},
    )  # fmt: skip
    assert bulk.status_code in (200, 302, 403)
    assert discovered(tweet.target_tweet_id).status == Status.PENDING


@pytest.mark.parametrize("url", [DESK, QUEUE, DEAD, MATCHING, SWITCH, ALERTS])
def test_anonymous_visitors_are_sent_to_log_in(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


# --- the dead-letter queue --------------------------------------------------------------------


def test_dead_letters_filter_by_stage_error_kind_status_and_age(admin_client):
    failed_rows(2, stage=Stage.PUBLISH, kind="permanent")
    failed_rows(1, stage=Stage.DRAFT, kind="invalid_output", first=100)
    old = failed_rows(1, stage=Stage.DRAFT, kind="permanent", first=200)[0]
    FailedTweet.objects.filter(id=old.id).update(
        created_at=timezone.now() - timedelta(days=9), status=FailedTweetStatus.EXHAUSTED
    )

    def shown(**query: str) -> int:
        found = re.search(r"(\d+) failed tweets?", page_text(admin_client.get(DEAD, query)))
        return int(found.group(1))

    assert shown() == 4
    assert shown(stage="publish") == 2
    assert shown(error_kind="invalid_output") == 1
    assert shown(status__exact="exhausted") == 1
    assert shown(age="day") == 3
    assert shown(age="older") == 1


def test_the_detail_page_shows_the_error_and_the_attempt_history(pipeline, admin_client):
    failure = publish_failure(pipeline)
    admin_client.post(f"{DEAD}{failure.id}/change/", {"_park": "Park"})
    text = page_text(admin_client.get(f"{DEAD}{failure.id}/change/"))
    assert "The error X refused it: 400 invalid reply" in text
    history = text[text.index("History When What Who") :]
    found, failed, approval, parked = (
        history.index("Found ("),
        history.index("Failed at stage publish (permanent): X refused it: 400"),
        history.index("Approved"),
        history.index("Parked failed replies admin"),
    )
    assert found < approval < failed < parked


def test_retry_now_sends_a_publish_failure_back_and_it_goes_out(pipeline, admin_client):
    failure = publish_failure(pipeline)
    response = admin_client.post(
        f"{DEAD}{failure.id}/change/", {"_retry": "Retry now"}, follow=True
    )
    assert f"Failed reply #{failure.id} goes back to its publish stage now." in page_text(response)
    run_pipeline()
    tweet = discovered(failure.target_tweet_id)
    assert tweet.status == Status.POSTED
    assert [r.text for r in pipeline.x.replies_to(tweet.target_tweet_id)] == [tweet.draft]
    action = OperatorAction.objects.get(action=OperatorAction.Action.RETRY)
    assert (action.actor, action.channel) == ("admin", Channel.ADMIN)


def test_retry_leaves_alone_rows_already_posted_or_whose_outcome_is_unknown(admin_client):
    still = failed_rows(2)
    failed_rows(1, tweet_status=Status.POSTED, first=10)
    failed_rows(1, tweet_status=Status.UNKNOWN, first=20)
    batch = dead_letters_retry(FailedTweet.objects.all(), actor="owner", channel=Channel.ADMIN)
    assert (batch.done, batch.skipped) == (2, 2)
    statuses = dict(QueuedTweet.objects.values_list("target_tweet_id", "status"))
    assert sorted(statuses.values()) == ["approved", "approved", "posted", "unknown"]
    assert {f.status for f in FailedTweet.objects.filter(id__in=[f.id for f in still])} == {
        FailedTweetStatus.RETRYING
    }
    assert FailedTweet.objects.filter(status=FailedTweetStatus.PENDING).count() == 2


def test_retry_everything_matching_the_filter_shows_the_count_and_asks_first(admin_client):
    failed_rows(3, stage=Stage.PUBLISH)
    failed_rows(1, stage=Stage.PUBLISH, tweet_status=Status.POSTED, first=10)
    failed_rows(2, stage=Stage.DRAFT, kind="invalid_output", first=20)
    listing = admin_client.get(DEAD, {"stage": "publish"}).content.decode()
    assert f'href="{MATCHING}?stage=publish"' in listing
    assert "Retry everything matching this filter (4)" in listing

    ask = page_text(admin_client.get(MATCHING, {"stage": "publish"}))
    assert "The filter stage=publish matches 4 failed replies." in ask
    assert "3 go back to their stage now" in ask
    assert "1: post posted" in ask
    assert QueuedTweet.objects.filter(status=Status.FAILED).count() == 5  # nothing yet

    done = admin_client.post(f"{MATCHING}?stage=publish", {"confirmed": "yes"}, follow=True)
    assert "Sent back to their stage: 3." in page_text(done)
    assert "Left alone: 1" in page_text(done)
    assert QueuedTweet.objects.filter(status=Status.APPROVED).count() == 3
    assert QueuedTweet.objects.filter(status=Status.FAILED).count() == 2  # the draft ones
    action = OperatorAction.objects.get()
    assert action.detail == "3 failed replies sent back: everything matching stage=publish"


def test_a_draft_failure_retried_needs_a_new_draft_and_a_new_approval(admin_client):
    failed_rows(1, stage=Stage.DRAFT)
    admin_client.post(f"{MATCHING}?stage=draft", {"confirmed": "yes"})
    tweet = QueuedTweet.objects.get()
    assert (tweet.status, tweet.approved_at, tweet.approved_by) == (Status.NEW, None, "")


@pytest.mark.parametrize("count", [10, 200])
def test_bulk_retry_takes_a_fixed_number_of_queries(admin_client, count, request):
    failed_rows(count // 2, stage=Stage.PUBLISH)
    failed_rows(count - count // 2, stage=Stage.DRAFT, first=count)
    with CaptureQueriesContext(connection) as queries:
        batch = dead_letters_retry(FailedTweet.objects.all(), actor="owner", channel=Channel.ADMIN)
    assert batch.done == count
    # The same for 10 rows as for 200 (and 10,000: bench/dead_letter_retry.py).
    assert len(queries) == 9, [q["sql"][:120] for q in queries.captured_queries]


def test_bulk_retry_marks_retrying_only_the_rows_it_sent_back(admin_client):
    sent, other = failed_rows(2, stage=Stage.PUBLISH)
    # The other's tweet went back some other way (a retry by hand), its row still open.
    QueuedTweet.objects.filter(id=other.queued_tweet_id).update(status=Status.APPROVED)
    batch = dead_letters_retry(FailedTweet.objects.all(), actor="owner", channel=Channel.ADMIN)
    assert batch.done == 1
    sent.refresh_from_db()
    other.refresh_from_db()
    assert sent.status == FailedTweetStatus.RETRYING
    assert other.status != FailedTweetStatus.RETRYING


def test_a_parked_row_is_kept_and_never_retried_automatically(admin_client):
    row = failed_rows(1)[0]
    admin_client.post(DEAD, {"action": "park_selected", "_selected_action": [row.id], "index": "0"})
    row.refresh_from_db()
    assert (row.status, row.next_retry_at) == (FailedTweetStatus.PARKED, None)
    assert dead_letter_retry_due(now=timezone.now() + timedelta(days=1)) == 0
    assert QueuedTweet.objects.get().status == Status.FAILED
    # The owner can still send it back by hand.
    admin_client.post(f"{DEAD}{row.id}/change/", {"_retry": "Retry now"})
    assert QueuedTweet.objects.get().status == Status.APPROVED
    assert OperatorAction.objects.filter(action=OperatorAction.Action.PARK).count() == 1


def test_discarding_asks_for_a_reason_and_keeps_it_with_each_row(admin_client):
    rows = failed_rows(2)
    selected = {
        "action": "discard_selected",
        "_selected_action": [r.id for r in rows],
        "index": "0",
    }
    ask = admin_client.post(DEAD, selected)
    assert ask.status_code == 200
    assert "Why discard them?" in page_text(ask)
    assert not FailedTweet.objects.filter(status=FailedTweetStatus.DISCARDED).exists()

    refused = admin_client.post(DEAD, {**selected, "apply": "Discard 2", "reason": ""})
    assert "This field is required" in page_text(refused)
    done = admin_client.post(
        DEAD,
        {**selected, "apply": "Discard 2", "reason": "the author deleted the thread"},
        follow=True,
    )
    assert "Discarded: 2." in page_text(done)
    assert set(FailedTweet.objects.values_list("status", "discard_reason")) == {
        (FailedTweetStatus.DISCARDED, "the author deleted the thread")
    }
    assert Decision.objects.filter(action=Decision.Action.DISCARD).count() == 2
    action = OperatorAction.objects.get(action=OperatorAction.Action.DISCARD)
    assert action.detail == "2 failed replies discarded: the author deleted the thread"


def test_discarding_from_the_detail_page_needs_a_reason(admin_client):
    row = failed_rows(1)[0]
    url = f"{DEAD}{row.id}/change/"
    refused = admin_client.post(url, {"_discard": "Discard", "reason": " "})
    assert "Say why: the reason is kept with the row." in page_text(refused)
    admin_client.post(url, {"_discard": "Discard", "reason": "not worth it"})
    row.refresh_from_db()
    assert (row.status, row.discard_reason) == (FailedTweetStatus.DISCARDED, "not worth it")


def test_edit_then_retry_checks_the_text_audits_it_and_posts_it(pipeline, admin_client):
    failure = publish_failure(pipeline)
    url = f"{DEAD}{failure.id}/change/"
    too_long = "Far too long for X to take. " * 15
    refused = admin_client.post(url, {"_edit_retry": "Retry", "reply_text": too_long})
    assert "This reply cannot be posted:" in page_text(refused)
    assert html.escape(too_long.strip()) in refused.content.decode()
    assert discovered(failure.target_tweet_id).status == Status.FAILED

    mine = "Retries with a fake clock: assert the waits, never sleep."
    done = admin_client.post(url, {"_edit_retry": "Retry", "reply_text": mine}, follow=True)
    assert "goes back to publishing now, with your text" in page_text(done)
    tweet = discovered(failure.target_tweet_id)
    assert (tweet.status, tweet.draft, tweet.approved_by) == (Status.APPROVED, mine, "admin")
    edit = Decision.objects.get(queued_tweet=tweet, action=Decision.Action.EDIT)
    assert (edit.actor, edit.text_after) == ("admin", mine)
    run_pipeline()
    assert [r.text for r in pipeline.x.replies_to(tweet.target_tweet_id)] == [mine]


def test_a_draft_stage_failure_offers_no_edit(admin_client):
    row = failed_rows(1, stage=Stage.DRAFT)[0]
    body = admin_client.get(f"{DEAD}{row.id}/change/").content.decode()
    assert 'name="_retry"' in body
    assert 'name="_edit_retry"' not in body
    response = admin_client.post(
        f"{DEAD}{row.id}/change/", {"_edit_retry": "Retry", "reply_text": "a text"}, follow=True
    )
    assert "failed while drafting: a retry writes a new draft" in page_text(response)
    assert QueuedTweet.objects.get().status == Status.FAILED


def test_view_only_staff_cannot_act_on_dead_letters(viewer, client):
    row = failed_rows(1)[0]
    client.force_login(viewer)
    listing = client.get(DEAD).content.decode()
    assert "Retry everything matching" not in listing
    assert "retry_selected" not in listing
    assert client.get(MATCHING).status_code == 403
    assert client.post(MATCHING, {"confirmed": "yes"}).status_code == 403
    assert client.post(f"{DEAD}{row.id}/change/", {"_retry": "Retry now"}).status_code == 403
    assert QueuedTweet.objects.get().status == Status.FAILED


# --- alerts, breakers, the pause switch ----------------------------------------------------------


def test_alerts_list_sent_suppressed_and_failed_and_can_be_marked_seen(admin_client):
    sent = AlertEvent.objects.create(
        kind="a", subject="s", message="went out", status=AlertStatus.SENT
    )
    AlertEvent.objects.create(kind="b", subject="s", message="quiet", repeats=4)
    AlertEvent.objects.create(
        kind="c", subject="s", message="lost", status=AlertStatus.FAILED, last_error="Telegram 403"
    )
    text = page_text(admin_client.get(ALERTS))
    assert "Not delivered: Telegram 403" in text
    assert "went out" in text
    assert "quiet" in page_text(admin_client.get(ALERTS, {"repeats": "yes"}))
    assert "went out" not in page_text(admin_client.get(ALERTS, {"repeats": "yes"}))
    assert "lost" in page_text(admin_client.get(ALERTS, {"status__exact": "failed"}))

    admin_client.post(ALERTS, {"action": "mark_seen", "_selected_action": [sent.id], "index": "0"})
    assert AlertEvent.objects.get(id=sent.id).seen_at is not None
    assert "went out" not in page_text(admin_client.get(ALERTS, {"seen": "no"}))
    assert "2 not seen" in page_text(admin_client.get(DESK))


@pytest.mark.parametrize(
    ("action", "words"),
    [
        ("force_open", "Every call to twitter_api is refused at once"),
        ("disable", "The breaker stops protecting twitter_api"),
    ],
)
def test_breaker_actions_that_stop_traffic_ask_first_and_say_what_they_do(
    admin_client, action, words
):
    ask = admin_client.post(BREAKERS, {"action": action, "breaker": "twitter_api"})
    text = page_text(ask)
    assert words in text
    assert "twitter_api is now closed: Closed: calls go through." in text
    assert get_breaker("twitter_api").state == "closed"
    done = admin_client.post(
        BREAKERS, {"action": action, "breaker": "twitter_api", "confirmed": "yes"}, follow=True
    )
    assert get_breaker("twitter_api").state != "closed"
    assert "by an operator" in page_text(done)


def test_the_pause_switch_goes_through_the_service_and_is_audited(admin_client, viewer, client):
    PipelineControl.objects.get_or_create(pk=1)
    admin_client.post(SWITCH, {"publishing": "pause", "reason": "reading the drafts"})
    control = PipelineControl.objects.get(pk=1)
    assert (control.publishing_paused, control.paused_reason) == (True, "reading the drafts")
    pause = OperatorAction.objects.get(action=OperatorAction.Action.PAUSE)
    assert (pause.actor, pause.channel, pause.detail) == (
        "admin",
        Channel.ADMIN,
        "reading the drafts",
    )
    assert "⏸ Publishing is paused (reading the drafts)." in page_text(admin_client.get(DESK))

    client.force_login(viewer)
    assert client.post(SWITCH, {"publishing": "resume"}).status_code == 403
    resumed = admin_client.post(SWITCH, {"publishing": "resume", "next": DESK}, follow=True)
    assert "Publishing resumed." in page_text(resumed)
    assert not PipelineControl.objects.get(pk=1).publishing_paused
    assert OperatorAction.objects.filter(action=OperatorAction.Action.RESUME).count() == 1
    # The old row editor is gone: its change page leads to the switch.
    assert admin_client.get(f"{SWITCH}1/change/")["Location"] == SWITCH
