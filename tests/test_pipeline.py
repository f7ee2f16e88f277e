"""The whole pipeline against the stand-ins over real HTTP: discover, draft, approve,
schedule, publish exactly once, and every failure kind at every stage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import IntegrityError, transaction
from django.utils import timezone

from bot.models import (
    Channel,
    Decision,
    FailedTweet,
    PipelineControl,
    QueuedTweet,
    SearchQuery,
    Status,
    TargetAccount,
)
from bot.services.discovery import discover_all
from bot.services.drafting import draft_new
from bot.services.review import reply_approve, reply_reject
from bot.tasks import configured_llm, configured_x
from resilience import get_breaker
from resilience.models import AlertEvent
from tests.helpers import approved, discovered, requests_to, run_pipeline, shown_version, summon

pytestmark = pytest.mark.django_db

# Minutes after a claim when its lease (5 min) and X's timeline lag (1 min) have passed.
LEASE_PASSED = 7
# Twenty minutes before a month ends (UTC).
MONTH_END = datetime(2026, 1, 31, 23, 40, tzinfo=UTC)


def test_end_to_end_published_exactly_once_as_a_reply_to_the_right_post(pipeline, admin_client):
    post_id = summon(pipeline)
    run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.PENDING
    assert tweet.summoned
    assert tweet.draft

    page = admin_client.get(f"/admin/bot/queuedtweet/{tweet.id}/change/")
    assert page.status_code == 200
    edited = "Inject a clock and a sleep function; assert on the waits, never sleep."
    response = admin_client.post(
        f"/admin/bot/queuedtweet/{tweet.id}/change/",
        # What the browser sends: the button, the text, the draft version the page showed,
        # and the (empty) audit inline's form.
        {
            "reply_text": edited,
            "shown_version": shown_version(page),
            "_approve": "Approve",
            "decisions-TOTAL_FORMS": "0",
            "decisions-INITIAL_FORMS": "0",
        },
        follow=True,
    )
    assert "Approved; it is scheduled" in response.content.decode()
    tweet.refresh_from_db()
    assert (tweet.status, tweet.draft, tweet.approved_via) == (Status.APPROVED, edited, "admin")

    run_pipeline()
    tweet.refresh_from_db()
    assert tweet.status == Status.POSTED
    replies = pipeline.x.replies_to(post_id)
    assert [(r.id, r.text) for r in replies] == [(tweet.reply_tweet_id, f"{edited}")]

    run_pipeline()
    run_pipeline()
    assert len(pipeline.x.replies_to(post_id)) == 1
    decision = Decision.objects.get(queued_tweet=tweet)
    assert (decision.action, decision.actor, decision.channel) == ("edit", "admin", "admin")
    assert decision.text_after == edited


def test_x_down_for_the_whole_run_dead_letters_nothing_then_publishes_everything(pipeline):
    posts = [summon(pipeline, "any tips?", author) for author in ("bob", "carol", "dave")]
    run_pipeline()
    for post_id in posts:
        approved(post_id)
    pipeline.x.faults.add("*", "error", status=503)

    for _ in range(8):
        run_pipeline()
    assert FailedTweet.objects.count() == 0
    waiting = QueuedTweet.objects.filter(target_tweet_id__in=posts)
    assert {(t.status, t.attempts) for t in waiting} == {(Status.APPROVED, 0)}
    assert get_breaker("twitter_api").state == "open"

    pipeline.x.faults.clear()
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        run_pipeline()
    assert {t.status for t in waiting.all()} == {Status.POSTED}
    assert [len(pipeline.x.replies_to(post_id)) for post_id in posts] == [1, 1, 1]


def test_ambiguous_create_is_reconciled_never_posted_twice(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("create_tweet", "cut_after", times=1)

    run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.UNKNOWN
    assert len(pipeline.x.replies_to(post_id)) == 1  # it did go out

    run_pipeline()  # too early to judge: nothing is re-sent
    assert discovered(post_id).status == Status.UNKNOWN
    with time_machine.travel(timezone.now() + timedelta(minutes=LEASE_PASSED)):
        run_pipeline()
    tweet.refresh_from_db()
    assert tweet.status == Status.POSTED
    assert [r.id for r in pipeline.x.replies_to(post_id)] == [tweet.reply_tweet_id]


def test_unknown_outcome_not_on_our_timeline_is_sent_again_once(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("create_tweet", "cut_before", times=1)
    run_pipeline()
    assert discovered(post_id).status == Status.UNKNOWN
    assert pipeline.x.replies_to(post_id) == []
    with time_machine.travel(timezone.now() + timedelta(minutes=LEASE_PASSED)):
        run_pipeline()  # reconcile: not there; requeued, to go 2 minutes later
    with time_machine.travel(timezone.now() + timedelta(minutes=LEASE_PASSED + 3)):
        run_pipeline()
    assert discovered(post_id).status == Status.POSTED
    assert len(pipeline.x.replies_to(post_id)) == 1


def test_a_claim_given_up_frees_the_author_cap_it_filled(pipeline, settings):
    """A reply the author cap moved by a day, because of a claim that then turned out to
    have sent nothing, goes out now; the cap still holds for the one that follows."""
    settings.MAX_REPLIES_PER_AUTHOR_PER_DAY = 1
    first, second = summon(pipeline, "one?", "bob"), summon(pipeline, "two?", "bob")
    run_pipeline()
    approved(first)
    pipeline.x.faults.add("create_tweet", "cut_before", times=1)
    run_pipeline()
    assert discovered(first).status == Status.UNKNOWN  # its claim fills bob's cap
    approved(second)
    run_pipeline()
    held = discovered(second)
    assert held.status == Status.APPROVED
    assert held.scheduled_at > timezone.now() + timedelta(hours=23)

    with time_machine.travel(timezone.now() + timedelta(minutes=LEASE_PASSED)):
        run_pipeline()  # reconcile: the first is not on X, its claim is given up
        assert discovered(first).status == Status.APPROVED
        assert discovered(second).scheduled_at <= timezone.now()
        run_pipeline()
        assert discovered(second).status == Status.POSTED
    with time_machine.travel(timezone.now() + timedelta(minutes=LEASE_PASSED + 3)):
        run_pipeline()
        again = discovered(first)
        assert again.status == Status.APPROVED  # now the cap holds it, for a day
        assert again.scheduled_at > timezone.now() + timedelta(hours=23)
    assert pipeline.x.replies_to(first) == []
    assert len(pipeline.x.replies_to(second)) == 1


def test_posts_the_author_did_not_summon_are_handed_off_without_calling_x(pipeline):
    post_id = pipeline.x.publish("alice", "Django 5.2 composite keys are lovely")
    run_pipeline()
    tweet = approved(post_id)
    run_pipeline()
    tweet.refresh_from_db()
    assert tweet.status == Status.HANDOFF
    assert ("create_tweet", "/2/tweets") not in pipeline.x.requests

    # The owner posts it from the link; the bot sees it on our timeline.
    pipeline.x.publish("replyguy", tweet.draft, reply_to=post_id)
    run_pipeline()
    tweet.refresh_from_db()
    assert tweet.status == Status.POSTED
    assert Decision.objects.filter(queued_tweet=tweet, action="mark_posted").exists()


def test_reply_refused_by_x_rule_goes_to_handoff(pipeline, settings):
    settings.REPLY_MODE = "api"
    post_id = pipeline.x.publish("alice", "a post that does not mention us")
    run_pipeline()
    approved(post_id)
    run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.HANDOFF
    assert tweet.last_error_kind == "not_permitted"
    assert pipeline.x.replies_to(post_id) == []
    assert FailedTweet.objects.count() == 0


def test_invalid_model_output_is_rewritten_then_dead_lettered_then_retried(pipeline):
    pipeline.openai.output_mode = "empty"
    post_id = summon(pipeline)
    for _ in range(3):
        run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.FAILED
    assert tweet.draft_attempts == 3
    failure = FailedTweet.objects.get(queued_tweet=tweet)
    assert (failure.stage, failure.status, failure.error_kind) == ("draft", "pending", "permanent")

    pipeline.openai.output_mode = "normal"
    with time_machine.travel(timezone.now() + timedelta(minutes=6)):
        run_pipeline()
    tweet.refresh_from_db()
    failure.refresh_from_db()
    assert tweet.status == Status.PENDING
    assert tweet.draft
    assert failure.status == "resolved"


def test_model_down_leaves_posts_waiting_not_failed(pipeline):
    pipeline.openai.faults.add("chat_completions", "error", status=503)
    post_id = summon(pipeline)
    for _ in range(5):
        run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.draft_attempts) == (Status.NEW, 0)
    assert FailedTweet.objects.count() == 0


def test_deleted_target_goes_to_the_dead_letter_queue_and_exhausts(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.delete(post_id)
    run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.FAILED
    failure = FailedTweet.objects.get(queued_tweet=tweet)
    assert (failure.stage, failure.error_kind, failure.retry_count) == ("publish", "permanent", 0)

    when = timezone.now()
    for _ in range(5):
        when += timedelta(hours=3)  # past every retry's exponential spacing
        with time_machine.travel(when):
            run_pipeline()
            run_pipeline()
    failure.refresh_from_db()
    assert (failure.status, failure.retry_count) == ("exhausted", 5)
    assert AlertEvent.objects.filter(kind="dead_letter_exhausted").count() == 1
    assert pipeline.x.replies_to(post_id) == []


def test_pause_switch_stops_publishing_at_once(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    PipelineControl.objects.filter(pk=1).update(publishing_paused=True)
    run_pipeline()
    assert discovered(post_id).status == Status.APPROVED
    assert pipeline.x.replies_to(post_id) == []
    PipelineControl.objects.filter(pk=1).update(publishing_paused=False)
    run_pipeline()
    assert discovered(post_id).status == Status.POSTED


def test_invariant_1_the_database_refuses_an_approved_row_without_approval(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    tweet = discovered(post_id)
    with pytest.raises(IntegrityError), transaction.atomic():
        QueuedTweet.objects.filter(id=tweet.id).update(status=Status.APPROVED)


def test_invariant_1_pending_drafts_are_never_published(pipeline):
    post_id = summon(pipeline)
    for _ in range(3):
        run_pipeline()
    assert discovered(post_id).status == Status.PENDING
    assert pipeline.x.replies_to(post_id) == []


def test_discovery_skips_what_it_will_not_answer_and_keeps_the_reason(pipeline, settings):
    settings.TOPIC_KEYWORDS = ["django"]
    SearchQuery.objects.create(query="django")
    ok = pipeline.x.publish("alice", "Django tip: use select_for_update(skip_locked=True)")
    off_topic = pipeline.x.publish("alice", "what a sunset tonight")
    repost = pipeline.x.publish("bob", "", retweet_of=ok)
    old = pipeline.x.publish(
        "carol", "Django 1.0 is out!", created_at=timezone.now() - timedelta(days=3)
    )
    summoned_off_topic = summon(pipeline, "what do you think of sunsets?")
    run_pipeline()
    assert discovered(ok).status == Status.PENDING
    assert discovered(off_topic).skip_reason == "off topic (no keyword)"
    assert discovered(repost).skip_reason == "a repost"  # found by the search
    assert discovered(old).skip_reason == "older than 24 hours"
    assert discovered(summoned_off_topic).status == Status.PENDING
    run_pipeline()
    assert QueuedTweet.objects.count() == 5  # nothing fetched and judged twice


SETTLED = {Status.POSTED, Status.REJECTED, Status.SKIPPED, Status.EXPIRED, Status.HANDOFF}


def assert_nothing_lost() -> None:
    """Invariant 3: every row is settled, dead-lettered, or visibly on its way."""
    for tweet in QueuedTweet.objects.all():
        if tweet.status in SETTLED:
            continue
        if tweet.status == Status.FAILED:
            assert FailedTweet.objects.filter(queued_tweet=tweet).exists(), tweet
        elif tweet.status == Status.PUBLISHING:
            assert tweet.lease_until is not None, tweet
        elif tweet.status == Status.APPROVED:
            assert tweet.scheduled_at or tweet.next_attempt_at, tweet
        else:  # new, pending and unknown are picked up by a stage on every pass
            assert tweet.status in {Status.NEW, Status.PENDING, Status.UNKNOWN}, tweet


def test_invariant_3_nothing_is_lost_and_nothing_doubled_under_random_failures(pipeline):
    authors = [f"chaos{n}" for n in range(12)]
    posts = [summon(pipeline, f"question {n}?", author) for n, author in enumerate(authors)]
    posts.append(pipeline.x.publish("alice", "an ordinary post, not a summons"))
    pipeline.x.faults.add("*", "error", status=503, rate=0.25)
    pipeline.x.faults.add("create_tweet", "cut_after", rate=0.25)
    pipeline.openai.faults.add("chat_completions", "error", status=500, rate=0.3)

    when = timezone.now()
    for step in range(30):
        with time_machine.travel(when):
            run_pipeline()
            for n, tweet in enumerate(QueuedTweet.objects.filter(status=Status.PENDING)):
                if (n + step) % 7 == 3:
                    reply_reject(tweet, actor="owner", channel=Channel.TELEGRAM)
                else:
                    reply_approve(
                        tweet, actor="owner", channel=Channel.TELEGRAM, version=tweet.draft_version
                    )
            assert_nothing_lost()
        when += timedelta(minutes=3)
    pipeline.x.faults.clear()
    pipeline.openai.faults.clear()
    done = SETTLED | {Status.FAILED}
    for _ in range(40):  # bounded: each pass is 10 minutes of a working world
        if not QueuedTweet.objects.exclude(status__in=done).exists():
            break
        when += timedelta(minutes=10)
        with time_machine.travel(when):
            run_pipeline()
            for tweet in QueuedTweet.objects.filter(status=Status.PENDING):
                reply_approve(
                    tweet, actor="owner", channel=Channel.TELEGRAM, version=tweet.draft_version
                )

    assert_nothing_lost()
    rows = QueuedTweet.objects.filter(target_tweet_id__in=posts)
    assert rows.count() == len(posts), "every post was discovered"
    unsettled = [(r.status, r.last_error) for r in rows if r.status not in done]
    assert not unsettled, "once the services are back, everything settles"
    assert all(len(pipeline.x.replies_to(post_id)) <= 1 for post_id in posts)
    for row in rows.filter(status=Status.POSTED):
        assert [r.id for r in pipeline.x.replies_to(row.target_tweet_id)] == [row.reply_tweet_id]
        # Invariant 1: whatever happened on the way, a human approved this very text.
        approval = row.decisions.filter(action__in=["approve", "edit"]).last()
        assert approval is not None
        assert approval.text_after == pipeline.x.replies_to(row.target_tweet_id)[0].text
    assert rows.filter(status=Status.POSTED).exists()
    assert rows.filter(status=Status.HANDOFF).exists()  # the ordinary post


def test_duplicate_text_refused_by_x_comes_back_as_a_new_draft_for_approval(pipeline):
    same = "Great question: a fake clock and a recorded sleep make retries testable."
    pipeline.openai.scripted_replies = [same, same]
    first, second = (summon(pipeline, "retries?", author) for author in ("bob", "carol"))
    run_pipeline()
    approved(first)
    approved(second)
    run_pipeline()
    assert discovered(first).status == Status.POSTED
    assert discovered(second).status == Status.UNKNOWN  # X said "duplicate content"

    with time_machine.travel(timezone.now() + timedelta(minutes=LEASE_PASSED)):
        run_pipeline()
    tweet = discovered(second)
    assert tweet.status == Status.FAILED
    assert FailedTweet.objects.get(queued_tweet=tweet).stage == "draft"

    with time_machine.travel(timezone.now() + timedelta(minutes=LEASE_PASSED + 6)):
        run_pipeline()  # the dead-letter retry (5 minutes on) sends it back for a draft
    tweet.refresh_from_db()
    assert tweet.status == Status.PENDING, "a new draft waits for a new approval"
    assert tweet.draft != same
    assert tweet.approved_at is None
    assert pipeline.x.replies_to(second) == []


def test_x_refusing_only_writes_opens_the_breaker_and_dead_letters_nothing(pipeline):
    """Reads work, every write dies without an answer: a service outage, not the items'."""
    posts = [summon(pipeline, "tips?", author) for author in ("bob", "carol", "dave")]
    run_pipeline()
    for post_id in posts:
        approved(post_id)
    pipeline.x.faults.add("create_tweet", "html", status=502)

    when = timezone.now()
    for _ in range(12):
        when += timedelta(minutes=LEASE_PASSED)
        with time_machine.travel(when):
            run_pipeline()
    assert FailedTweet.objects.count() == 0
    rows = QueuedTweet.objects.filter(target_tweet_id__in=posts)
    assert Status.FAILED not in {row.status for row in rows}
    # Each lost write counts against the breaker (successful reads in between reset the
    # consecutive count, so it need not open); none spends an item's attempts.
    assert get_breaker("twitter_api").get_status()["total_failures"] >= 3
    assert {row.attempts for row in rows} == {0}

    pipeline.x.faults.clear()
    for _ in range(4):
        when += timedelta(minutes=LEASE_PASSED)
        with time_machine.travel(when):
            run_pipeline()
    assert {row.status for row in rows.all()} == {Status.POSTED}
    assert [len(pipeline.x.replies_to(post_id)) for post_id in posts] == [1, 1, 1]


def test_discovery_reads_every_answerable_post_beyond_one_page(pipeline):
    posts = [pipeline.x.publish("alice", f"post number {n}") for n in range(150)]
    run_pipeline()
    assert QueuedTweet.objects.filter(target_tweet_id__in=posts).count() == 150


def test_a_target_that_does_not_exist_is_switched_off_and_reported(pipeline):
    TargetAccount.objects.create(username="nobody_here")
    post_id = pipeline.x.publish("alice", "still read")
    run_pipeline()
    run_pipeline()
    assert discovered(post_id).status == Status.PENDING, "the other sources were read"
    assert not TargetAccount.objects.get(username="nobody_here").enabled
    assert AlertEvent.objects.filter(kind="target_not_found").count() == 1


def test_our_account_is_asked_for_once_not_every_pass(pipeline):
    for _ in range(3):
        run_pipeline()
    assert requests_to(pipeline.x, "me") == 1


def test_a_post_being_drafted_by_one_worker_is_not_drafted_by_another(pipeline):
    post_id = summon(pipeline)
    discover_all(configured_x("test"))
    tweet = discovered(post_id)
    QueuedTweet.objects.filter(id=tweet.id).update(
        lease_until=timezone.now() + timedelta(minutes=1)
    )
    assert draft_new(configured_llm("test"))["drafted"] == 0
    assert pipeline.openai.completions == []
    with time_machine.travel(timezone.now() + timedelta(minutes=2)):
        assert draft_new(configured_llm("test"))["drafted"] == 1


def test_quoting_our_reply_summons_us(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    run_pipeline()
    our_reply = discovered(post_id).reply_tweet_id
    quote = pipeline.x.publish("alice", "this is wrong, and here is why", quote_of=our_reply)
    plain_quote = pipeline.x.publish("alice", "look at this", quote_of=post_id)
    run_pipeline()
    assert discovered(quote).summoned, "X lets us answer: the author quoted our reply"
    assert not discovered(plain_quote).summoned


@pytest.mark.parametrize(
    ("fault", "waits_at_least"),
    [
        ({"status": 429, "reset_in": 900}, timedelta(minutes=14)),  # until X's reset
        ({"status": 429, "usage_cap": True}, None),  # until the cap's month ends
        ({"status": 401}, timedelta(minutes=1)),  # our credentials: the owner must act
        ({"status": 500}, timedelta(minutes=1)),
    ],
)
# The usage cap lifts when the month ends: at a fixed instant near its end, not whenever
# the suite happens to run, so the expected wait is always the same 20 minutes.
@time_machine.travel(MONTH_END, tick=True)
def test_service_level_refusals_at_publish_make_the_reply_wait_with_its_attempts(
    pipeline, fault, waits_at_least
):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("create_tweet", "error", **fault)
    before = timezone.now()
    run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.attempts, tweet.last_error_kind) == (
        Status.APPROVED,
        0,
        "transient",
    )
    if waits_at_least is None:
        first_of_next_month = (before.replace(day=28) + timedelta(days=4)).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0
        )
        assert tweet.next_attempt_at >= first_of_next_month
    else:
        assert tweet.next_attempt_at >= before + waits_at_least
    assert FailedTweet.objects.count() == 0
    assert pipeline.x.replies_to(post_id) == []
