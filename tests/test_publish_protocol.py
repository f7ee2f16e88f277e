"""Hypothesis drives the publish protocol against a model of X, step by step.

The pipeline's own services run on the real database; only X is a model, at the
client seam (the object the services call), so that each publish can be cut into its
three steps and two workers interleaved at will:

- the model X trails its timeline behind writes, pages it two posts at a time, answers
  a create ok / cut after creating / 503 (sometimes having posted anyway) / timed out
  (posted or not), and refuses a text we already posted as a duplicate;
- two workers claim, send and record in any order, and either may die at any step;
- time jumps, so leases run out; recover_stale, reconcile and the dead-letter retry run
  at any moment;
- the owner approves (as shown, or edited), rejects, asks for a new draft, or answers a
  post by hand on X.

After every step: at most one reply per post, every reply the bot made carries a text
the owner approved for that post, and nothing is lost (each row is settled, waiting for
its owner, or held by a lease, a schedule or a dead-letter row). At the end the world
calms down and every approved reply must be settled.

The owner's hand replies are made to posts nobody is sending to, and appear on the
timeline before the next step (X's lag passes): a reply typed by hand in the same
second the bot sends is a race no protocol can see.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import hypothesis.strategies as st
import pytest
import time_machine
from django.core.cache import cache
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bot.clients.errors import ClientError, ErrorKind, Reason
from bot.clients.x import Page, Post
from bot.models import (
    Cursor,
    Decision,
    FailedTweet,
    FailedTweetStatus,
    OurReply,
    PipelineControl,
    QueuedTweet,
    Source,
    Status,
)
from bot.policy import PUBLISH_LEASE
from bot.services.dead_letters import dead_letter_retry_due
from bot.services.publishing import claim_next, reply_record, reply_send
from bot.services.reconciling import our_replies_refresh, reconcile, recover_stale
from bot.services.review import ReviewError, reply_approve, reply_regenerate, reply_reject
from bot.services.transitions import next_draft_version, transition

pytestmark = pytest.mark.django_db

OUR_ID = "1"
LAG = 5.0  # seconds X's timeline trails a write
PAGE = 2  # posts per timeline page
MAX_POSTS = 5  # posts in one world: few enough that each is fought over
START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MODES = ["ok", "cut_after", "cut_before", "503", "503_posted", "timeout_posted", "timeout_lost"]


class ModelX:
    """X as the protocol sees it: our posts, a lagging paged timeline, creates that fail."""

    def __init__(self) -> None:
        self.posts: dict[str, tuple[str, str, float, bool]] = {}  # id -> target, text, at, hand
        self.ids = itertools.count(1000)
        self.mode = "ok"
        self.timeline_down = False
        self.retweets: set[str] = set()  # our retweets: on the timeline, never returned

    def now(self) -> float:
        return timezone.now().timestamp()

    def _add(self, target: str, text: str, *, by_hand: bool = False) -> str:
        post_id = str(next(self.ids))
        self.posts[post_id] = (target, text, self.now(), by_hand)
        return post_id

    def replies_to(self, target: str) -> list[tuple[str, str, bool]]:
        return [(pid, text, hand) for pid, (t, text, _, hand) in self.posts.items() if t == target]

    # --- what the services call --------------------------------------------------------

    def our_posts(
        self,
        *,
        since_id: str | None = None,
        until_id: str | None = None,
        pagination_token: str | None = None,
        max_results: int = 100,
    ) -> Page:
        if self.timeline_down:
            raise _error("timeline unavailable", ErrorKind.TRANSIENT, 503)
        visible = sorted(
            (
                int(pid)
                for pid, (_, _, at, _) in self.posts.items()
                if at <= self.now() - LAG
                and (since_id is None or int(pid) > int(since_id))
                and (until_id is None or int(pid) < int(until_id))
                and (pagination_token is None or int(pid) < int(pagination_token))
            ),
            reverse=True,
        )
        cut = visible[:PAGE]
        # As X does, retweets are dropped after the page is cut: a page may come back
        # empty with a token for the rest.
        page = [self._post(str(pid)) for pid in cut if str(pid) not in self.retweets]
        token = str(cut[-1]) if len(visible) > PAGE else None
        return Page(posts=page, newest_id=page[0].id if page else None, next_token=token)

    def _post(self, post_id: str) -> Post:
        target, text, at, _ = self.posts[post_id]
        return Post(
            id=post_id,
            text=text,
            author_id=OUR_ID,
            author_username="replyguy",
            created_at=datetime.fromtimestamp(at, UTC),
            conversation_id=target,
            in_reply_to_user_id="2" if target else None,
            referenced=(("replied_to", target),) if target else (),
            mentions=(),
        )

    def create_reply(self, *, in_reply_to: str, text: str) -> str:
        mode = self.mode
        if mode == "cut_before":
            raise _error("could not reach X", ErrorKind.TRANSIENT)
        if mode == "503":
            raise _error("service unavailable", ErrorKind.TRANSIENT, 503)
        if mode == "timeout_lost":
            raise _error("read timed out", ErrorKind.AMBIGUOUS)
        if any(text == t for _, (_, t, _, _) in self.posts.items()):
            raise _error("duplicate content", ErrorKind.AMBIGUOUS, 403, Reason.DUPLICATE)
        post_id = self._add(in_reply_to, text)
        if mode == "cut_after" or mode == "timeout_posted":
            raise _error("connection cut after sending", ErrorKind.AMBIGUOUS)
        if mode == "503_posted":
            raise _error("service unavailable", ErrorKind.TRANSIENT, 503)
        return post_id

    def post_visible(self, post_id: str) -> bool:
        return True


def _error(
    message: str, kind: ErrorKind, status: int | None = None, reason: str = ""
) -> ClientError:
    return ClientError(message, kind=kind, service="x", status=status, reason=reason)


class Worker:
    def __init__(self) -> None:
        self.tweet: QueuedTweet | None = None
        self.answer = None


class PublishProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.x = ModelX()
        self.workers = [Worker(), Worker()]
        self.targets = itertools.count(1)
        self.texts = itertools.count(1)

    @initialize()
    def fresh_world(self) -> None:
        for model in (Decision, FailedTweet, OurReply, Cursor, QueuedTweet, PipelineControl):
            model.objects.all().delete()
        cache.clear()
        self.traveller = time_machine.travel(START, tick=False)
        self.clock = self.traveller.start()

    def teardown(self) -> None:
        try:
            self.calm_down()
        finally:
            self.traveller.stop()

    # --- helpers ---------------------------------------------------------------------

    def rows(self, *statuses: Status) -> list[QueuedTweet]:
        rows = QueuedTweet.objects.order_by("id")
        return list(rows.filter(status__in=statuses) if statuses else rows)

    def has(self, status: Status) -> bool:
        return QueuedTweet.objects.filter(status=status).exists()

    def pick(self, rows: list[QueuedTweet], index: int) -> QueuedTweet | None:
        return rows[index % len(rows)] if rows else None

    # --- the world ---------------------------------------------------------------------

    @precondition(lambda self: QueuedTweet.objects.count() < MAX_POSTS)
    @rule()
    def a_post_is_drafted(self) -> None:
        target = str(next(self.targets))
        QueuedTweet.objects.create(
            target_tweet_id=target,
            author_id=f"a{target}",
            author_username=f"author{target}",
            text="@replyguy what do you think?",
            tweet_created_at=timezone.now(),
            source=Source.MENTION,
            summoned=True,
            status=Status.PENDING,
            draft=f"draft {next(self.texts)}",
            draft_version=1,
        )

    @precondition(lambda self: self.has(Status.PENDING))
    @rule(index=st.integers(0, 50), edit=st.booleans())
    def owner_approves(self, index: int, edit: bool) -> None:
        tweet = self.pick(self.rows(Status.PENDING), index)
        if tweet is None:
            return
        text = f"edited {next(self.texts)}" if edit else None
        reply_approve(
            tweet, actor="owner", channel="telegram", version=tweet.draft_version, text=text
        )

    @rule(
        index=st.integers(0, 50),
        choice=st.sampled_from(["stale_press", "reject", "new_draft", "by_hand"]),
    )
    def owner_does_something_else(self, index: int, choice: str) -> None:
        if choice == "stale_press":
            # A press on a draft the owner saw before it was rewritten is refused.
            tweet = self.pick(self.rows(Status.PENDING), index)
            if tweet is not None and tweet.draft_version > 1:
                with pytest.raises(ReviewError):
                    reply_approve(
                        tweet, actor="owner", channel="telegram", version=tweet.draft_version - 1
                    )
        elif choice == "reject":
            tweet = self.pick(self.rows(Status.PENDING, Status.APPROVED), index)
            if tweet is not None:
                reply_reject(tweet, actor="owner", channel="telegram")
        elif choice == "new_draft":
            tweet = self.pick(self.rows(Status.PENDING), index)
            if tweet is not None:
                reply_regenerate(tweet, actor="owner", channel="telegram")
        else:
            self.owner_answers_by_hand(index)

    @precondition(lambda self: self.has(Status.NEW))
    @rule(index=st.integers(0, 50))
    def the_model_drafts(self, index: int) -> None:
        tweet = self.pick(self.rows(Status.NEW), index)
        if tweet is not None:
            transition(
                tweet.id,
                expected=Status.NEW,
                to=Status.PENDING,
                draft=f"draft {next(self.texts)}",
                draft_version=next_draft_version(),
            )

    def owner_answers_by_hand(self, index: int) -> None:
        busy = {w.tweet.id for w in self.workers if w.tweet is not None}
        candidates = [
            t
            for t in self.rows(Status.PENDING, Status.APPROVED)
            if t.id not in busy and t.sent_at is None and not self.x.replies_to(t.target_tweet_id)
        ]
        tweet = self.pick(candidates, index)
        if tweet is None:
            return
        self.x._add(tweet.target_tweet_id, f"by hand {next(self.texts)}", by_hand=True)
        self.clock.shift(LAG + 1)

    @rule(posts=st.integers(1, 5), retweets=st.booleans())
    def owner_posts_on_their_own(self, posts: int, retweets: bool) -> None:
        """An active owner: posts (or retweets) of ours that answer nothing push older
        ones down a page."""
        for _ in range(posts):
            post_id = self.x._add("", f"a thought {next(self.texts)}", by_hand=True)
            if retweets:
                self.x.retweets.add(post_id)

    @rule(down=st.booleans())
    def our_timeline_fails(self, down: bool) -> None:
        self.x.timeline_down = down

    @rule(seconds=st.sampled_from([1, 30, 61, 130, 301, 420, 900]))
    def time_passes(self, seconds: int) -> None:
        self.clock.shift(seconds)

    @rule(task=st.sampled_from(["recover_stale", "reconcile", "dead_letters"]))
    def a_scheduled_task_runs(self, task: str) -> None:
        if task == "recover_stale":
            recover_stale()
        elif task == "reconcile":
            reconcile(self.x)
        else:
            dead_letter_retry_due()

    # --- two workers -----------------------------------------------------------------

    @precondition(lambda self: self.has(Status.APPROVED))
    @rule(w=st.integers(0, 1))
    def worker_claims(self, w: int) -> None:
        worker = self.workers[w]
        # As publish_due does: no look at our timeline, no claim.
        if worker.tweet is None and our_replies_refresh(self.x):
            worker.tweet = claim_next(now=timezone.now())

    @precondition(lambda self: any(w.tweet is not None and w.answer is None for w in self.workers))
    @rule(w=st.integers(0, 1), mode=st.sampled_from(MODES))
    def worker_sends(self, w: int, mode: str) -> None:
        worker = self.workers[w]
        if worker.tweet is not None and worker.answer is None:
            self.x.mode = mode
            worker.answer = reply_send(worker.tweet, self.x)

    @precondition(lambda self: any(w.answer is not None for w in self.workers))
    @rule(w=st.integers(0, 1))
    def worker_records(self, w: int) -> None:
        worker = self.workers[w]
        if worker.tweet is not None and worker.answer is not None:
            reply_record(worker.tweet, worker.answer, self.x)
            self.workers[w] = Worker()

    @precondition(lambda self: self.has(Status.APPROVED))
    @rule(mode=st.sampled_from(MODES))
    def a_third_worker_publishes_in_one_go(self, mode: str) -> None:
        tweet = claim_next(now=timezone.now()) if our_replies_refresh(self.x) else None
        if tweet is not None:
            self.x.mode = mode
            reply_record(tweet, reply_send(tweet, self.x), self.x)

    @rule(w=st.integers(0, 1))
    def worker_dies(self, w: int) -> None:
        self.workers[w] = Worker()

    # --- what must always hold ---------------------------------------------------------

    @invariant()
    def at_most_one_reply_per_post(self) -> None:
        for target in {t for t, *_ in self.x.posts.values() if t}:
            replies = self.x.replies_to(target)
            assert len(replies) <= 1, f"post {target} has {len(replies)} replies: {replies}"

    @invariant()
    def every_reply_the_bot_made_was_approved_as_it_reads(self) -> None:
        for target, text, _, by_hand in self.x.posts.values():
            if by_hand or not target:
                continue
            tweet = QueuedTweet.objects.get(target_tweet_id=target)
            assert tweet.approved_at is not None, f"reply to {target} without an approval"
            approved = set(
                tweet.decisions.filter(action__in=["approve", "edit"]).values_list(
                    "text_after", flat=True
                )
            )
            assert text in approved, f"reply {text!r} to {target}; approved: {approved}"

    @invariant()
    def nothing_is_lost(self) -> None:
        now = timezone.now()
        for tweet in self.rows():
            if tweet.status == Status.APPROVED:
                assert tweet.scheduled_at is not None, tweet
            elif tweet.status == Status.PUBLISHING:
                assert tweet.publish_request_id, tweet
                assert tweet.lease_until is not None, tweet
                assert tweet.lease_until <= now + PUBLISH_LEASE
            elif tweet.status == Status.UNKNOWN:
                assert tweet.approved_at is not None, tweet
                assert tweet.publish_request_id, tweet
            elif tweet.status == Status.FAILED:
                assert FailedTweet.objects.filter(queued_tweet=tweet).exists(), tweet
            elif tweet.status == Status.POSTED:
                assert tweet.reply_tweet_id in self.x.posts, tweet

    # --- the end ----------------------------------------------------------------------

    def calm_down(self) -> None:
        """No more faults or owners: every approved reply must end settled, once."""
        self.x.mode = "ok"
        self.x.timeline_down = False
        for _ in range(12):
            self.clock.shift(600)
            recover_stale()
            reconcile(self.x)
            dead_letter_retry_due()
            while True:
                if not our_replies_refresh(self.x):
                    break
                tweet = claim_next(now=timezone.now())
                if tweet is None:
                    break
                reply_record(tweet, reply_send(tweet, self.x), self.x)
        left = self.rows(Status.APPROVED, Status.PUBLISHING, Status.UNKNOWN)
        assert not left, f"never settled: {[(t.target_tweet_id, t.status) for t in left]}"
        failed = FailedTweet.objects.exclude(
            status__in=[FailedTweetStatus.RESOLVED, FailedTweetStatus.DISCARDED]
        )
        for failure in failed.select_related("queued_tweet"):
            # Only a duplicate refusal sends a reply back for a new draft; it waits for the owner.
            assert failure.queued_tweet.status in (Status.FAILED, Status.NEW, Status.PENDING)
        self.at_most_one_reply_per_post()
        self.every_reply_the_bot_made_was_approved_as_it_reads()


@pytest.fixture
def paced(settings):
    settings.MIN_DELAY_MINUTES = settings.MAX_DELAY_MINUTES = 0
    settings.QUIET_HOURS_START = settings.QUIET_HOURS_END = 0
    settings.MAX_POSTS_PER_HOUR = 1000
    settings.MAX_POSTS_PER_DAY = 10000
    settings.MIN_SPACING_MINUTES = 0
    settings.MAX_REPLIES_PER_AUTHOR_PER_DAY = 5
    settings.REPLY_MODE = "auto"
    settings.PUBLISHING_PAUSED = False


def test_the_publish_protocol_never_posts_twice_or_unapproved_and_loses_nothing(paced):
    PublishProtocol.TestCase.settings = settings(
        max_examples=int(__import__("os").environ.get("PROTOCOL_EXAMPLES", "100")),
        stateful_step_count=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    PublishProtocol.TestCase().runTest()
