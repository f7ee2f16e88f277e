"""The holes a hostile review found, each tried the way a new user's bad day brings it,
against the sandbox over real HTTP: never twice, this exact text, configuration errors
as the service's business, one bad value never stopping a stage, cost guards."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.utils import timezone

from bot.clients.errors import ClientError, ErrorKind
from bot.models import (
    Channel,
    Cursor,
    Decision,
    FailedTweet,
    OptedOutAuthor,
    OurReply,
    QueuedTweet,
    Status,
)
from bot.services import publishing, reconciling
from bot.services.publishing import Answer, claim_next, reply_record, reply_send
from bot.services.review import ReviewError, reply_approve, reply_regenerate
from bot.tasks import configured_x
from resilience import get_breaker
from resilience.models import AlertEvent
from sandbox.x_api import OUR_USERNAME
from tests.helpers import approved, discovered, run_pipeline, summon
from tests.test_settings import PRODUCTION, manage

pytestmark = pytest.mark.django_db

LEASE_PASSED = 7  # minutes: a claim's lease (5) and X's timeline lag (1) are over


def later(minutes: float) -> time_machine.travel:
    return time_machine.travel(timezone.now() + timedelta(minutes=minutes), tick=False)


def break_on(monkeypatch, module, name: str, bad) -> None:
    """Make ``module.name`` raise for the argument ``bad`` picks: a bug on one row."""
    original = getattr(module, name)

    def broken(arg):
        if bad(arg):
            raise RuntimeError(f"a bad value in {name}")
        return original(arg)

    monkeypatch.setattr(module, name, broken)


def assert_one_attempt_spent(row: QueuedTweet) -> None:
    assert (row.status, row.attempts, row.last_error_reason) == (
        Status.APPROVED,
        1,
        "unexpected",
    )


# --- 1. never twice -------------------------------------------------------------------------


def test_a_reply_behind_more_than_a_page_of_our_posts_is_found_not_sent_twice(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("create_tweet", "cut_after", times=1)
    run_pipeline()
    assert discovered(post_id).status == Status.UNKNOWN
    first = pipeline.x.replies_to(post_id)
    assert len(first) == 1
    # An active owner posts 150 times before anyone reconciles: more than a page of 100.
    for n in range(150):
        pipeline.x.publish(OUR_USERNAME, f"thinking out loud, part {n}")
    with later(LEASE_PASSED):
        run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.reply_tweet_id) == (Status.POSTED, first[0].id)
    assert len(pipeline.x.replies_to(post_id)) == 1
    newest = pipeline.x.posts_by(OUR_USERNAME)[0].id
    assert Cursor.objects.get(source=reconciling.OUR_REPLIES).since_id == newest


def test_a_timeline_read_cut_short_resumes_below_what_it_read_and_never_skips(pipeline):
    for n in range(250):
        pipeline.x.publish(OUR_USERNAME, f"note {n}")
    x = configured_x("test")
    assert reconciling.our_replies_refresh(x)  # the first read sets the cursor
    target = pipeline.x.publish("bob", "@replyguy hello?")
    ours = pipeline.x.publish(OUR_USERNAME, "hello to you", reply_to=target)
    for n in range(250):
        pipeline.x.publish(OUR_USERNAME, f"later note {n}")
    # Page 1 (100 posts) is read, then X fails on page 2.
    read_before = pipeline.x.posts_returned.get("user_tweets", 0)

    def fail_on_second_page(original=x.our_posts):
        calls = {"n": 0}

        def our_posts(**kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise ClientError("X failed on page 2", kind=ErrorKind.TRANSIENT, service="x")
            return original(**kwargs)

        return our_posts

    x.our_posts = fail_on_second_page()
    assert not reconciling.our_replies_refresh(x)
    cursor = Cursor.objects.get(source=reconciling.OUR_REPLIES)
    assert cursor.until_id, "the read under way is remembered"
    assert cursor.top_id
    assert not OurReply.objects.filter(reply_id=ours).exists()  # not read yet

    del x.our_posts
    assert reconciling.our_replies_refresh(x)
    assert OurReply.objects.filter(reply_id=ours, in_reply_to_id=target).exists()
    # 251 new posts, each read exactly once although the read was cut in two.
    assert pipeline.x.posts_returned["user_tweets"] - read_before == 251
    assert Cursor.objects.get(source=reconciling.OUR_REPLIES).since_id == (
        pipeline.x.posts_by(OUR_USERNAME)[0].id
    )


def test_a_post_the_owner_answered_by_hand_is_settled_not_answered_again(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    by_hand = pipeline.x.publish(OUR_USERNAME, "answered from my phone", reply_to=post_id)
    run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.reply_tweet_id) == (Status.POSTED, by_hand)
    assert [r.id for r in pipeline.x.replies_to(post_id)] == [by_hand]
    decision = Decision.objects.get(queued_tweet=tweet, action=Decision.Action.MARK_POSTED)
    assert "already answered on X" in decision.actor


def test_a_stalled_workers_late_answers_never_move_another_workers_claim(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    stalled = claim_next(now=timezone.now())
    assert stalled is not None
    with later(LEASE_PASSED):
        reconciling.recover_stale()
        reconciling.reconcile(configured_x("test"))  # not on our timeline: requeued
        assert discovered(post_id).status == Status.APPROVED
    with later(LEASE_PASSED + 3):
        second = claim_next(now=timezone.now())
        assert second is not None
        assert second.publish_request_id != stalled.publish_request_id
        # The stalled worker's 503, its refusal and its cut connection arrive now.
        for kind, status in [
            (ErrorKind.TRANSIENT, 503),
            (ErrorKind.PERMANENT, 400),
            (ErrorKind.AMBIGUOUS, None),
            (ErrorKind.NOT_PERMITTED, 403),
        ]:
            late = ClientError("late", kind=kind, service="x", status=status)
            reply_record(stalled, Answer(error=late), configured_x("test"))
            row = discovered(post_id)
            assert (row.status, row.publish_request_id) == (
                Status.PUBLISHING,
                second.publish_request_id,
            ), kind
        # And a stalled worker never sends once its claim is gone.
        assert reply_send(stalled, configured_x("test")) == Answer()
        assert pipeline.x.replies_to(post_id) == []
        publishing.reply_publish(second, configured_x("test"))
    assert len(pipeline.x.replies_to(post_id)) == 1


def test_reconcile_requeues_only_the_attempt_it_judged(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("create_tweet", "cut_before", times=1)
    run_pipeline()
    judged = discovered(post_id)  # what reconcile read before its timeline call
    assert judged.status == Status.UNKNOWN
    # Meanwhile the row was requeued, claimed again and is unknown again, lease running.
    QueuedTweet.objects.filter(id=judged.id).update(
        publish_request_id=None, status=Status.UNKNOWN, lease_until=timezone.now()
    )
    assert reconciling._not_sent(judged, timezone.now()) is None
    assert discovered(post_id).status == Status.UNKNOWN


def test_a_late_answer_after_a_requeue_still_counts_against_the_hourly_cap(pipeline, settings):
    settings.MAX_POSTS_PER_HOUR = 1
    first_id, second_id = summon(pipeline, "one?", "bob"), summon(pipeline, "two?", "carol")
    run_pipeline()
    approved(first_id)
    stalled = claim_next(now=timezone.now())
    assert stalled.target_tweet_id == first_id
    with later(LEASE_PASSED):
        reconciling.recover_stale()
        reconciling.reconcile(configured_x("test"))
        assert discovered(first_id).status == Status.APPROVED  # requeued, unclaimed
        # X took the request late, after reconcile looked: the answer arrives now.
        late = pipeline.x.publish(OUR_USERNAME, stalled.draft, reply_to=first_id)
        assert reply_record(stalled, Answer(reply_id=late), None) == Status.POSTED
        assert discovered(first_id).claimed_at == stalled.claimed_at
        approved(second_id)
        run_pipeline()
        assert discovered(second_id).status == Status.APPROVED, "the cap counted the late one"
        assert pipeline.x.replies_to(second_id) == []


def test_a_reply_rejected_after_a_503_that_x_posted_is_found_and_reported(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    tweet = approved(post_id)
    pipeline.x.faults.add("create_tweet", "error", status=503, times=1)
    run_pipeline()
    assert discovered(post_id).status == Status.APPROVED
    # X posted it anyway while answering 503; the owner then changes their mind.
    live = pipeline.x.publish(OUR_USERNAME, tweet.draft, reply_to=post_id)
    reply_reject = __import__("bot.services.review", fromlist=["reply_reject"]).reply_reject
    reply_reject(discovered(post_id), actor="owner", channel=Channel.ADMIN)
    with later(2):
        run_pipeline()
    row = discovered(post_id)
    assert (row.status, row.reply_tweet_id) == (Status.REJECTED, live)
    assert Decision.objects.filter(queued_tweet=row, action=Decision.Action.FOUND_LIVE).exists()
    alert = AlertEvent.objects.get(kind="unwanted_reply_live")
    assert live in alert.message
    with later(4):
        run_pipeline()
    assert AlertEvent.objects.filter(kind="unwanted_reply_live").count() == 1


def test_an_ambiguous_answer_the_worker_received_is_judged_after_the_lag_not_the_lease(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("create_tweet", "cut_after", times=1)
    run_pipeline()
    assert discovered(post_id).status == Status.UNKNOWN
    with later(2):  # the lease (5 min) has not run out; X's lag (1 min) has
        run_pipeline()
    assert discovered(post_id).status == Status.POSTED


def test_an_author_who_opted_out_after_the_approval_is_not_answered(pipeline):
    post_id = summon(pipeline, author="dave")
    run_pipeline()
    approved(post_id)
    OptedOutAuthor.objects.create(username="dave", reason="asked us to stop")
    run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.skip_reason) == (Status.SKIPPED, "the author opted out")
    assert pipeline.x.replies_to(post_id) == []
    assert Decision.objects.filter(queued_tweet=tweet, action=Decision.Action.SKIP).exists()


def test_the_admin_cannot_delete_what_we_found_decided_or_failed(pipeline, admin_client):
    post_id = summon(pipeline)
    run_pipeline()
    tweet = discovered(post_id)
    failure = FailedTweet.objects.create(
        queued_tweet=tweet, target_tweet_id=post_id, stage="draft", error="x", error_kind="x"
    )
    for url in (
        f"/admin/bot/queuedtweet/{tweet.id}/delete/",
        f"/admin/bot/failedtweet/{failure.id}/delete/",
    ):
        assert admin_client.post(url, {"post": "yes"}).status_code == 403
    listing = admin_client.get("/admin/bot/queuedtweet/").content.decode()
    assert "delete_selected" not in listing
    assert QueuedTweet.objects.filter(id=tweet.id).exists()
    assert FailedTweet.objects.filter(id=failure.id).exists()


# --- 2. an approval means this exact text ---------------------------------------------------


def test_bulk_approval_approves_only_the_drafts_the_page_showed(pipeline, admin_client):
    shown_id, unseen_id = summon(pipeline, "one?", "bob"), summon(pipeline, "two?", "carol")
    run_pipeline()
    shown = discovered(shown_id)
    page_version = shown.draft_version
    # The draft is rewritten after the page was loaded.
    reply_regenerate(shown, actor="owner", channel=Channel.ADMIN)
    run_pipeline()
    assert discovered(shown_id).draft_version == page_version + 1
    response = admin_client.post(
        "/admin/bot/queuedtweet/",
        {
            "action": "approve_selected",
            "_selected_action": [shown.id, discovered(unseen_id).id],
            f"shown_version_{shown.id}": str(page_version),
            "select_across": "0",
            "index": "0",
        },
        follow=True,
    )
    text = response.content.decode()
    assert "changed since it was shown to you" in text
    assert "was not on the page you approved from" in text
    assert {t.status for t in QueuedTweet.objects.all()} == {Status.PENDING}

    fresh = discovered(shown_id)
    admin_client.post(
        "/admin/bot/queuedtweet/",
        {
            "action": "approve_selected",
            "_selected_action": [fresh.id],
            f"shown_version_{fresh.id}": str(fresh.draft_version),
            "index": "0",
        },
    )
    assert discovered(shown_id).status == Status.APPROVED
    assert discovered(unseen_id).status == Status.PENDING


def test_a_changed_draft_cannot_be_approved_with_the_old_version(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    tweet = discovered(post_id)
    with pytest.raises(ReviewError, match="changed since it was shown"):
        reply_approve(
            tweet, actor="owner", channel=Channel.TELEGRAM, version=tweet.draft_version - 1
        )
    assert discovered(post_id).status == Status.PENDING


def test_the_owners_edit_is_posted_exactly_as_typed(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    typed = 'Answer: no, "fast" is relative. See the docs at example.com'
    approved(post_id, text=typed)
    run_pipeline()
    assert [r.text for r in pipeline.x.replies_to(post_id)] == [typed]
    decision = Decision.objects.get(queued_tweet=discovered(post_id))
    assert (decision.action, decision.text_after) == ("edit", typed)


# --- 3. configuration errors are the service's business -----------------------------------


@pytest.mark.parametrize(
    ("switch", "value", "fix"),
    [
        ("read_only", True, "Read and write"),
        ("account_state", "suspended", "suspended"),
        ("account_state", "locked", "locked"),
    ],
)
def test_x_refusing_our_setup_opens_the_breaker_and_the_queue_waits(pipeline, switch, value, fix):
    posts = [summon(pipeline, "any tips?", author) for author in ("bob", "carol", "dave")]
    run_pipeline()
    for post_id in posts:
        approved(post_id)
    setattr(pipeline.x, switch, value)
    for step in range(4):
        with later(step * 3):
            run_pipeline()
    rows = QueuedTweet.objects.filter(target_tweet_id__in=posts)
    assert {(t.status, t.attempts) for t in rows} == {(Status.APPROVED, 0)}
    assert FailedTweet.objects.count() == 0
    assert get_breaker("twitter_api").state == "open"
    alerts = AlertEvent.objects.filter(kind="configuration_refused")
    assert alerts.exists()
    assert fix.lower() in alerts.first().message.lower()

    setattr(pipeline.x, switch, False if value is True else "active")
    with later(15):
        run_pipeline()
    assert [len(pipeline.x.replies_to(post_id)) for post_id in posts] == [1, 1, 1]


@pytest.mark.parametrize("style", ["openai", "openrouter"])
def test_a_wrong_model_name_keeps_posts_waiting_and_says_what_to_fix(pipeline, settings, style):
    settings.AI_MODEL = "gpt-9"
    pipeline.openai.unknown_model_style = style
    posts = [summon(pipeline, "any tips?", author) for author in ("bob", "carol", "dave")]
    for step in range(4):
        with later(step * 2):
            run_pipeline()
    rows = QueuedTweet.objects.filter(target_tweet_id__in=posts)
    assert {(t.status, t.draft_attempts) for t in rows} == {(Status.NEW, 0)}
    assert FailedTweet.objects.count() == 0
    assert get_breaker("ai_service").state == "open"
    assert "AI_MODEL" in AlertEvent.objects.filter(kind="configuration_refused").first().message


def test_the_same_refusal_on_several_replies_in_a_row_is_taken_as_our_setup(pipeline):
    posts = [summon(pipeline, "any tips?", author) for author in ("bob", "carol", "dave", "erin")]
    run_pipeline()
    for post_id in posts:
        approved(post_id)
    # A refusal nobody listed, the same for every reply: a proxy's policy, say.
    pipeline.x.faults.add("create_tweet", "error", status=400)
    run_pipeline()
    rows = QueuedTweet.objects.filter(target_tweet_id__in=posts).order_by("id")
    assert FailedTweet.objects.count() == 0
    assert sorted(t.attempts for t in rows) == [0, 0, 1, 1], "two spent, then it is ours"
    assert get_breaker("twitter_api").state == "open"
    assert AlertEvent.objects.filter(kind="multiple_failures").count() == 1
    assert not AlertEvent.objects.filter(kind="configuration_refused").exists()


def test_a_rate_limit_on_search_holds_search_only_and_publishing_goes_on(pipeline):
    from bot.models import SearchQuery

    SearchQuery.objects.create(query="django")
    post_id = summon(pipeline)
    pipeline.x.faults.add("search_recent", "error", status=429, reset_in=900)
    run_pipeline()
    approved(post_id)
    run_pipeline()
    assert discovered(post_id).status == Status.POSTED
    assert get_breaker("twitter_api").state == "closed"


def test_a_404_on_the_write_fails_the_item_only_if_the_target_is_really_gone(pipeline):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    # X's own 404 on the write, although the post is there (a misrouted path, say).
    pipeline.x.faults.add("create_tweet", "error", status=404, times=1)
    run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.APPROVED, "not failed: the lookup finds the post"
    assert FailedTweet.objects.count() == 0
    # A proxy's bare 404 page is our configuration.
    pipeline.x.faults.add("create_tweet", "html", status=404, times=1)
    with later(10):
        run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.last_error_reason) == (Status.APPROVED, "configuration")
    with later(30):
        run_pipeline()
    assert discovered(post_id).status == Status.POSTED


def test_an_approved_reply_whose_post_grew_too_old_is_not_sent(pipeline, settings):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("*", "error", status=503)  # a long outage
    run_pipeline()
    pipeline.x.faults.clear()
    with later(60 * (settings.MAX_REPLY_AGE_HOURS + 1)):
        run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.EXPIRED
    assert "hours old when its turn came" in tweet.skip_reason
    assert pipeline.x.replies_to(post_id) == []
    assert Decision.objects.filter(queued_tweet=tweet, action=Decision.Action.EXPIRE).exists()


def test_no_secret_reaches_the_logs_the_alerts_or_the_stored_errors(pipeline, settings, caplog):
    """Invariant 6, under the failures most likely to echo a credential."""
    import logging

    caplog.set_level(logging.DEBUG)
    secrets = [
        settings.X_API_KEY,
        settings.X_API_SECRET,
        settings.X_ACCESS_TOKEN,
        settings.X_ACCESS_TOKEN_SECRET,
        settings.X_BEARER_TOKEN,
        settings.OPENAI_API_KEY,
        settings.TELEGRAM_BOT_TOKEN,
    ]
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    # X and the model refuse our credentials; the model server quotes the key back.
    pipeline.x.credentials = {key: f"rotated-{key}" for key in pipeline.x.credentials}
    pipeline.openai.api_key = "sk-a-different-key"
    summon(pipeline, "another one?", "bob")
    for step in range(3):
        with later(step * 11):
            run_pipeline()
    stored = [
        caplog.text,
        *AlertEvent.objects.values_list("message", flat=True),
        *QueuedTweet.objects.values_list("last_error", flat=True),
        *FailedTweet.objects.values_list("error", flat=True),
    ]
    assert AlertEvent.objects.filter(kind="configuration_refused").exists()
    for secret in secrets:
        assert secret
        assert not any(secret in text for text in stored), f"{secret[:6]}... leaked"


# --- 4. one bad value never stops a stage -------------------------------------------------


def test_a_nul_and_a_lone_surrogate_in_posts_are_cleaned_not_fatal(pipeline):
    nul = summon(pipeline, "is this\x00 fine?", "bob")
    odd = summon(pipeline, "and this \ud83d one?", "carol")
    normal = summon(pipeline, "and a normal one?", "dave")
    run_pipeline()
    assert discovered(nul).text.endswith("is this fine?")
    assert "\ufffd" in discovered(odd).text
    assert {discovered(p).status for p in (nul, odd, normal)} == {Status.PENDING}


def test_a_username_longer_than_x_allows_today_is_kept_as_data(pipeline):
    uid = pipeline.x.add_user("legacy")
    long_name = "an_old_account_" + "x" * 25  # 40 characters: X's limit is 15 today
    pipeline.x.users[uid].username = long_name
    post_id = pipeline.x.publish(long_name, "@replyguy does this still work?")
    normal = summon(pipeline, "and this?", "bob")
    run_pipeline()
    assert discovered(post_id).author_username == long_name
    assert {discovered(post_id).status, discovered(normal).status} == {Status.PENDING}


@pytest.mark.parametrize("mode", ["lone_surrogate", "nul"])
def test_a_bad_character_from_the_model_is_cleaned_and_paid_for_once(pipeline, mode):
    pipeline.openai.output_mode = mode
    post_id = summon(pipeline)
    run_pipeline()
    run_pipeline()
    tweet = discovered(post_id)
    assert tweet.status == Status.PENDING
    assert "\ud83d" not in tweet.draft
    assert "\x00" not in tweet.draft
    assert len(pipeline.openai.completions) == 1


def test_an_unexpected_error_on_one_post_marks_it_and_the_pass_goes_on(pipeline, monkeypatch):
    from bot.clients.llm import LLMClient

    bad = summon(pipeline, "this one breaks the drafting code", "bob")
    good = summon(pipeline, "this one is fine", "carol")
    original = LLMClient.draft_replies

    def draft_replies(self, **kwargs):
        if "breaks" in kwargs["post_text"]:
            raise RuntimeError("a bug in our code")
        return original(self, **kwargs)

    monkeypatch.setattr(LLMClient, "draft_replies", draft_replies)
    run_pipeline()
    assert discovered(good).status == Status.PENDING
    broken = discovered(bad)
    assert (broken.status, broken.draft_attempts, broken.last_error_reason) == (
        Status.NEW,
        1,
        "unexpected",
    )
    assert "a bug in our code" in broken.last_error
    assert broken.next_attempt_at > timezone.now()
    run_pipeline()  # not asked again before its next attempt
    assert discovered(bad).draft_attempts == 1
    for minutes in (10, 30):
        with later(minutes):
            run_pipeline()
    broken = discovered(bad)
    assert broken.status == Status.FAILED
    assert FailedTweet.objects.get(queued_tweet=broken).stage == "draft"


def test_an_unexpected_error_on_one_reply_spends_its_attempt_and_the_others_go_out(
    pipeline, monkeypatch
):
    from bot.services import publishing as publishing_module

    bad, good = summon(pipeline, "one?", "bob"), summon(pipeline, "two?", "carol")
    run_pipeline()
    approved(bad)
    approved(good)
    break_on(monkeypatch, publishing_module, "author_cap", lambda t: t.author_username == "bob")
    run_pipeline()
    assert discovered(good).status == Status.POSTED
    broken = discovered(bad)
    assert_one_attempt_spent(broken)
    assert broken.next_attempt_at > timezone.now()
    assert pipeline.x.replies_to(bad) == []


def test_a_bug_around_the_x_call_is_judged_ambiguous_and_never_loops(pipeline, monkeypatch):
    from bot.clients.x import XClient

    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)

    def create_reply(self, **kwargs):
        raise RuntimeError("a bug in our request building")

    monkeypatch.setattr(XClient, "create_reply", create_reply)
    minutes = 0
    for _ in range(12):
        with later(minutes):
            run_pipeline()
        minutes += 20
    tweet = discovered(post_id)
    assert tweet.status == Status.FAILED, "three attempts, then the dead-letter queue"
    assert tweet.attempts == 3
    assert "a bug in our request building" in FailedTweet.objects.get(queued_tweet=tweet).error
    assert pipeline.x.replies_to(post_id) == []


def test_a_crash_after_the_claim_but_before_the_send_spends_the_attempt(pipeline, monkeypatch):
    from bot.services import publishing as publishing_module

    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)

    def reply_send(tweet, x):
        raise RuntimeError("the database refused a value")

    monkeypatch.setattr(publishing_module, "reply_send", reply_send)
    run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.attempts, tweet.sent_at) == (Status.APPROVED, 1, None)
    assert tweet.publish_request_id is None, "the claim is given up"
    assert "the database refused a value" in tweet.last_error
    monkeypatch.undo()
    with later(5):
        run_pipeline()
    assert discovered(post_id).status == Status.POSTED


def test_run_pipeline_runs_every_stage_when_one_fails_and_exits_non_zero(pipeline, monkeypatch):
    from bot import tasks

    def broken() -> dict[str, int]:
        raise RuntimeError("discover is broken")

    stages = [(name, broken if name == "discover" else fn) for name, fn in tasks.STAGES]
    monkeypatch.setattr(tasks, "STAGES", stages)
    monkeypatch.setattr("bot.management.commands.run_pipeline.STAGES", stages)
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 of 7 stages failed: discover"):
        call_command("run_pipeline", "--once", stdout=out)
    printed = out.getvalue()
    assert "discover: error RuntimeError: discover is broken" in printed
    for name in ("draft", "schedule", "publish", "reconcile"):
        assert f"{name}:" in printed


def test_settings_that_cannot_work_are_refused_at_start():
    result = manage("check", env={**PRODUCTION, "RELEVANCE_THRESHOLD": "0.5"})
    assert result.returncode != 0
    assert "RELEVANCE_THRESHOLD needs TOPIC_KEYWORDS" in result.stderr
    result = manage("check", env={**PRODUCTION, "MAX_REPLY_AGE_HOURS": "2"})
    assert "MAX_REPLY_AGE_HOURS must be at least MAX_POST_AGE_HOURS" in result.stderr


# --- 5. cost and spam guards --------------------------------------------------------------


def test_each_of_our_posts_is_read_once_while_a_handoff_waits(pipeline):
    post_id = pipeline.x.publish("alice", "Django 5.2 composite keys are lovely")
    for n in range(30):
        pipeline.x.publish(OUR_USERNAME, f"a thought of mine, number {n}")
    run_pipeline()
    approved(post_id)
    run_pipeline()
    assert discovered(post_id).status == Status.HANDOFF
    reads = []
    for step in range(1, 6):
        with later(step * 3):
            before = pipeline.x.posts_returned.get("user_tweets", 0)
            run_pipeline()
            reads.append(pipeline.x.posts_returned.get("user_tweets", 0) - before)
    assert reads == [0, 0, 0, 0, 0], "no post of ours read twice"


def test_a_drafting_pass_that_started_long_ago_still_holds_its_claims(pipeline):
    from bot.services.drafting import draft_new
    from bot.tasks import configured_llm

    summon(pipeline)
    from bot.services.discovery import discover_all

    discover_all(configured_x("test"))
    llm = configured_llm("test")
    original = llm.draft_replies
    second_worker: list[dict[str, int]] = []

    def draft_replies(**kwargs):
        # Another cluster's pass starts while this model call runs.
        second_worker.append(draft_new(configured_llm("test")))
        return original(**kwargs)

    llm.draft_replies = draft_replies
    # This pass began ten minutes ago (a slow model on earlier posts, say).
    counts = draft_new(llm, now=timezone.now() - timedelta(minutes=10))
    assert counts["drafted"] == 1
    assert second_worker == [dict.fromkeys(counts, 0)], "the other pass found nothing to claim"
    assert len(pipeline.openai.completions) == 1


def test_a_draft_nearly_identical_to_a_recent_reply_of_ours_is_rewritten(pipeline):
    said = "Inject a clock and a sleep function, then assert on the waits: never sleep in tests."
    OurReply.objects.create(reply_id="1", in_reply_to_id="2", text=said)
    pipeline.openai.scripted_replies = [said.replace("tests.", "your tests."), "Use time_machine."]
    post_id = summon(pipeline)
    run_pipeline()
    assert discovered(post_id).status == Status.NEW, "81% the same words: asked again"
    run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.draft) == (Status.PENDING, "Use time_machine.")
    second_ask = pipeline.openai.completions[-1]["messages"][-1]["content"]
    assert "too close to a reply we already posted" in second_ask


def test_model_drafts_with_links_are_refused_unless_allowed(pipeline, settings):
    pipeline.openai.scripted_replies = ["Read https://example.com/docs first", "Read the docs."]
    post_id = summon(pipeline, author="bob")
    run_pipeline()
    run_pipeline()
    assert discovered(post_id).draft == "Read the docs."
    settings.ALLOW_LINKS_IN_REPLIES = True
    pipeline.openai.scripted_replies = ["Read https://example.com/docs first"]
    other = summon(pipeline, author="carol")
    run_pipeline()
    assert discovered(other).draft == "Read https://example.com/docs first"


# --- 6. one home for each rule ----------------------------------------------------------------


def test_importing_the_services_does_not_load_the_client_libraries():
    code = (
        "import django, sys; django.setup();"
        "import bot.services.publishing, bot.services.reconciling, bot.services.drafting,"
        " bot.services.discovery, bot.services.review, bot.tasks, bot.admin;"
        "print(sorted(m for m in ('tweepy', 'openai', 'telegram') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**PRODUCTION, "DJANGO_SETTINGS_MODULE": "replyguy.settings"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- found by the hostile review ------------------------------------------------------------


def test_targets_sharing_the_timeline_window_are_read_in_turn_and_leave_room_for_ours(
    pipeline, settings
):
    from bot.models import TargetAccount

    settings.X_BEARER_TOKEN = ""  # target reads share our user-context window
    pipeline.x.add_user("alice")
    for name in ("bob", "carol", "dave"):
        pipeline.x.add_user(name)
        TargetAccount.objects.create(username=name)
    from bot.services.discovery import OUR_TIMELINE_RESERVE

    # Room for two target reads a window once the reserve for our timeline is kept.
    pipeline.x.set_limit("user_tweets", OUR_TIMELINE_RESERVE + 2)
    read: set[str] = set()
    for window in range(3):
        with later(window * 16):
            run_pipeline()
            targets = Cursor.objects.filter(source__startswith="target:")
            read |= set(targets.values_list("source", flat=True))
            x = configured_x("test")
            x.our_posts()  # what publishing needs before it re-sends anything
            left = x.rate_limits["user_tweets"].remaining
            assert left >= OUR_TIMELINE_RESERVE - 1, "targets kept the reserve for our timeline"
    assert len(read) == 4, f"every target read in turn: {sorted(read)}"


def test_one_bad_handoff_row_never_stops_publishing(pipeline, monkeypatch):
    from bot.services import publishing as publishing_module

    handoff_id = pipeline.x.publish("alice", "Django 5.2 composite keys are lovely")
    summoned_id = summon(pipeline, "api reply please", "carol")
    run_pipeline()
    approved(handoff_id)
    approved(summoned_id)
    break_on(monkeypatch, publishing_module, "opted_out", lambda names: "alice" in names)
    run_pipeline()
    assert discovered(summoned_id).status == Status.POSTED
    assert_one_attempt_spent(discovered(handoff_id))


def test_a_crash_while_recording_x_answer_is_judged_and_never_loops(pipeline, monkeypatch):
    from bot.services import publishing as publishing_module

    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("create_tweet", "error", status=400)

    def item_failure(*args, **kwargs):
        raise RuntimeError("a bug while recording the refusal")

    monkeypatch.setattr(publishing_module, "_item_failure", item_failure)
    run_pipeline()
    assert discovered(post_id).status == Status.UNKNOWN
    for step in range(1, 60):
        with later(step * 10):
            run_pipeline()
    tweet = discovered(post_id)
    sends = [path for name, path in pipeline.x.requests if name == "create_tweet"]
    assert tweet.status == Status.FAILED
    assert FailedTweet.objects.get(queued_tweet=tweet).status == "exhausted"
    # Three attempts, then three for each of the five dead-letter retries: bounded.
    assert len(sends) == 3 * (1 + 5)
    assert pipeline.x.replies_to(post_id) == []


def test_discovery_keeps_the_pages_it_read_when_a_later_one_fails(pipeline):
    from bot.services.discovery import discover_all

    for n in range(150):
        summon(pipeline, f"question number {n}?", f"user{n}")
    x = configured_x("test")
    original = x.mentions
    calls = {"n": 0}

    def mentions(user_id, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ClientError("X failed on page 2", kind=ErrorKind.TRANSIENT, service="x")
        return original(user_id, **kwargs)

    x.mentions = mentions
    discover_all(x)
    assert QueuedTweet.objects.count() == 100, "page 1 is kept"
    x.mentions = original
    discover_all(x)
    assert QueuedTweet.objects.count() == 150
    assert pipeline.x.posts_returned["user_mentions"] == 150, "no page paid for twice"


def test_a_target_that_disappears_after_it_was_found_is_switched_off_and_reported(pipeline):
    from bot.models import TargetAccount

    pipeline.x.publish("alice", "hello world")
    run_pipeline()  # alice is looked up and read
    alice = TargetAccount.objects.get(username="alice")
    assert alice.x_user_id
    del pipeline.x.users[alice.x_user_id]  # deactivated
    with later(3):
        run_pipeline()
    alice.refresh_from_db()
    assert not alice.enabled
    assert AlertEvent.objects.filter(kind="target_not_found", subject="@alice").count() == 1
    requests = len(pipeline.x.requests)
    with later(6):
        run_pipeline()
    assert not [p for n, p in pipeline.x.requests[requests:] if alice.x_user_id in p]


def test_a_slow_draft_keeps_its_post_for_as_long_as_it_may_take(pipeline, settings):
    from bot.services.drafting import draft_new
    from bot.tasks import configured_llm

    settings.DRAFT_VARIANTS = 3
    summon(pipeline)
    from bot.services.discovery import discover_all

    discover_all(configured_x("test"))
    llm = configured_llm("test")
    original = llm.draft_replies
    others: list[dict[str, int]] = []

    def slow_draft_replies(**kwargs):
        # Three variants from a server without structured output: minutes, not seconds.
        with later(3):
            others.append(draft_new(configured_llm("test")))
        return original(**kwargs)

    llm.draft_replies = slow_draft_replies
    assert draft_new(llm)["drafted"] == 1
    assert others == [dict.fromkeys(others[0], 0)], "nobody else paid for the same draft"


def test_pausing_after_a_claim_stops_that_reply_too(pipeline):
    from bot.models import PipelineControl

    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    tweet = claim_next(now=timezone.now())
    PipelineControl.objects.filter(pk=1).update(publishing_paused=True)
    assert reply_send(tweet, configured_x("test")) == Answer()
    row = discovered(post_id)
    assert (row.status, row.publish_request_id, row.sent_at) == (Status.APPROVED, None, None)
    assert pipeline.x.replies_to(post_id) == []


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 429, "reset_in": 75 * 60}])
def test_while_our_timeline_cannot_be_read_nothing_is_sent_and_the_owner_is_told(pipeline, fault):
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("user_tweets", "error", **fault)
    by_hand = pipeline.x.publish(OUR_USERNAME, "answered from my phone", reply_to=post_id)
    for minutes in (0, 30, 70):
        with later(minutes):
            run_pipeline()
    assert [r.id for r in pipeline.x.replies_to(post_id)] == [by_hand], "nothing sent blind"
    assert discovered(post_id).status == Status.APPROVED
    assert AlertEvent.objects.filter(kind="timeline_unreadable").count() == 1
    pipeline.x.faults.clear()
    with later(80):
        run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.reply_tweet_id) == (Status.POSTED, by_hand)


def test_a_reply_behind_a_page_of_retweets_is_found_not_sent_twice(pipeline):
    """X thins a page after cutting it: 100 retweets of ours come back as an empty page
    with a token. Only the token's absence ends a read."""
    post_id = summon(pipeline)
    run_pipeline()
    approved(post_id)
    pipeline.x.faults.add("create_tweet", "cut_after", times=1)
    run_pipeline()
    first = pipeline.x.replies_to(post_id)
    assert len(first) == 1
    someone = pipeline.x.publish("bob", "worth sharing")
    for _ in range(150):
        pipeline.x.publish(OUR_USERNAME, "", retweet_of=someone)
    with later(LEASE_PASSED):
        run_pipeline()
    tweet = discovered(post_id)
    assert (tweet.status, tweet.reply_tweet_id) == (Status.POSTED, first[0].id)
    with later(LEASE_PASSED + 10):
        run_pipeline()
    assert len(pipeline.x.replies_to(post_id)) == 1


def test_a_finished_gap_still_reads_what_came_above_it(db):
    """The cursor unit: a read cut short, then newer posts, then the gap filled."""
    from bot.clients.x import Page
    from bot.services.cursors import read_to_cursor
    from tests.test_publish_protocol import ModelX

    x = ModelX()
    with time_machine.travel(timezone.now(), tick=False) as clock:
        old = [x._add(str(n), f"old {n}") for n in range(5)]
        clock.shift(60)
        seen: list[str] = []
        calls = {"n": 0}

        def fetch(since, until, token) -> Page:
            calls["n"] += 1
            if calls["n"] == 2:
                raise ClientError("cut", kind=ErrorKind.TRANSIENT, service="x")
            return x.our_posts(since_id=since, until_id=until, pagination_token=token)

        def keep(posts):
            seen.extend(p.id for p in posts)

        with pytest.raises(ClientError):
            read_to_cursor("unit", fetch, keep)
        newer = [x._add(str(n), f"new {n}") for n in range(3)]
        clock.shift(60)
        # One read fills the gap, then goes on above the old top for the newer posts.
        assert read_to_cursor("unit", fetch, keep)
        assert sorted(seen) == sorted(old + newer), "every post read, none twice"
        assert read_to_cursor("unit", fetch, keep)
    assert sorted(seen) == sorted(old + newer)


def test_the_same_alert_is_recorded_once_an_hour(db):
    from resilience.alerts import raise_alert

    for _ in range(3):
        raise_alert(kind="configuration_refused", subject="x", message="read-only app")
    raise_alert(kind="configuration_refused", subject="llm", message="wrong model")
    assert AlertEvent.objects.count() == 2
    with later(61):
        raise_alert(kind="configuration_refused", subject="x", message="still read-only")
    assert AlertEvent.objects.filter(subject="x").count() == 2


def test_a_drafting_worker_that_outlived_its_lease_does_not_overwrite_its_successor(pipeline):
    from bot.services.discovery import discover_all
    from bot.services.drafting import _claim, reply_draft
    from bot.tasks import configured_llm

    summon(pipeline)
    discover_all(configured_x("test"))
    llm = configured_llm("test")
    stalled = QueuedTweet.objects.get(status=Status.NEW)
    assert _claim(stalled, llm)
    with later(30):  # its lease ran out; another worker took the post over
        successor = QueuedTweet.objects.get(id=stalled.id)
        assert _claim(successor, llm)
        assert reply_draft(stalled, llm) == "drafted"  # the model answered it, late
        row = QueuedTweet.objects.get(id=stalled.id)
        assert (row.status, row.draft, row.lease_until) == (
            Status.NEW,
            "",
            successor.lease_until,
        )
        reply_draft(successor, llm)
    assert discovered(stalled.target_tweet_id).status == Status.PENDING
    assert discovered(stalled.target_tweet_id).draft_version == 1


def test_the_room_kept_for_our_timeline_holds_across_discover_passes(pipeline, settings):
    from bot.models import TargetAccount
    from bot.services.discovery import OUR_TIMELINE_RESERVE
    from bot.tasks import discover

    settings.X_BEARER_TOKEN = ""
    for name in ("bob", "carol", "dave"):
        pipeline.x.add_user(name)
        TargetAccount.objects.create(username=name)
    pipeline.x.add_user("alice")
    pipeline.x.set_limit("user_tweets", OUR_TIMELINE_RESERVE + 2)
    for minutes in range(0, 14, 2):  # discover's schedule, within one 15-minute window
        with later(minutes):
            discover()
    with later(14):
        x = configured_x("test")
        x.our_posts()
        assert x.rate_limits["user_tweets"].remaining >= OUR_TIMELINE_RESERVE - 1


def test_a_read_of_nothing_but_thinned_pages_ends(db):
    """Newer posts that are all retweets: empty pages with tokens, then the end."""
    from bot.services.cursors import read_to_cursor
    from tests.test_publish_protocol import ModelX

    x = ModelX()
    with time_machine.travel(timezone.now(), tick=False) as clock:
        first = x._add("", "a post")
        clock.shift(60)

        def fetch(since, until, token):
            return x.our_posts(since_id=since, until_id=until, pagination_token=token)

        assert read_to_cursor("thin", fetch, lambda posts: None)
        for _ in range(7):
            x.retweets.add(x._add("", "a retweet"))
        clock.shift(60)
        assert read_to_cursor("thin", fetch, lambda posts: None), "the read ends"
    assert Cursor.objects.get(source="thin").since_id == first
