"""The X client through tweepy over real HTTP against the sandbox: values, cursors, and
every failure reaching the caller as the right ``ClientError`` kind."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest
import requests

from bot.clients.errors import ClientError, ErrorKind
from bot.clients.x import Page, RateLimit, User, XClient
from resilience import CircuitBreaker, CircuitOpenError
from resilience.errors import is_service_failure
from resilience.stores import MemoryStore
from sandbox.http import Server
from sandbox.x_api import OUR_USER_ID, SANDBOX_CREDENTIALS, XApp

CREDENTIALS = {
    "bearer_token": SANDBOX_CREDENTIALS["bearer_token"],
    "consumer_key": SANDBOX_CREDENTIALS["consumer_key"],
    "consumer_secret": SANDBOX_CREDENTIALS["consumer_secret"],
    "access_token": SANDBOX_CREDENTIALS["access_token"],
    "access_token_secret": SANDBOX_CREDENTIALS["access_token_secret"],
}


@pytest.fixture
def app(clock) -> XApp:
    return XApp(clock=clock)


@pytest.fixture
def server(app):
    with Server(app) as running:
        yield running


@pytest.fixture
def breaker(clock) -> CircuitBreaker:
    # twitter_api's settings, its own memory and the test's clock.
    return CircuitBreaker(
        "twitter_api",
        failure_on=is_service_failure,
        failure_threshold=5,
        recovery_timeout=120,
        half_open_max_calls=3,
        store=MemoryStore(),
        clock=clock,
    )


def make_client(url: str, breaker: CircuitBreaker, *, timeout=(1.0, 2.0), **changes) -> XClient:
    return XClient(base_url=url, timeout=timeout, breaker=breaker, **{**CREDENTIALS, **changes})


@pytest.fixture
def x(server, breaker) -> XClient:
    client = make_client(server.url, breaker)
    yield client
    client.close()


@pytest.fixture
def impatient(server, breaker) -> XClient:
    """A client whose reads time out after half a second."""
    client = make_client(server.url, breaker, timeout=(1.0, 0.5))
    yield client
    client.close()


def kind_of(call) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


# --- reads ---------------------------------------------------------------------------------


def test_me_is_asked_once(app, x):
    assert x.me() == User(id=OUR_USER_ID, username="replyguy", name="Reply Guy")
    x.me()
    assert [name for name, _ in app.requests].count("me") == 1


def test_lookup_users_by_lower_case_username(app, x):
    alice = app.add_user("Alice", "Alice A.")
    found = x.lookup_users(["ALICE", "@replyguy", "nobody"])
    assert found == {
        "alice": User(id=alice, username="Alice", name="Alice A."),
        "replyguy": User(id=OUR_USER_ID, username="replyguy", name="Reply Guy"),
    }
    assert x.lookup_users(["nobody"]) == {}
    assert x.lookup_users([]) == {}


def test_posts_carry_what_the_pipeline_needs(app, x, clock):
    alice = app.add_user("alice")
    ours = app.publish("replyguy", "our post")
    mention = app.publish("alice", "hey @ReplyGuy, thoughts?")
    quote = app.publish("alice", "so true", quote_of=ours)
    reply = app.publish("alice", "and another thing", reply_to=ours)

    page = x.user_posts(alice, exclude=())
    by_id = {post.id: post for post in page.posts}
    assert [post.id for post in page.posts] == [reply, quote, mention]

    first = by_id[mention]
    assert first.text == "hey @ReplyGuy, thoughts?"
    assert (first.author_id, first.author_username) == (alice, "alice")
    assert first.created_at == datetime.fromtimestamp(int(clock.now), UTC)
    assert first.conversation_id == mention
    assert first.mentions_user("replyguy")
    assert first.mentions_user("@REPLYGUY")
    assert (first.is_reply, first.is_quote, first.is_retweet) == (False, False, False)

    assert by_id[quote].is_quote
    assert by_id[quote].quoted_id == ours
    assert not by_id[quote].mentions_user("replyguy")

    answer = by_id[reply]
    assert answer.is_reply
    assert answer.replied_to_id == ours
    assert answer.in_reply_to_user_id == OUR_USER_ID
    assert answer.conversation_id == ours
    assert answer.mentions == ("replyguy",)  # the composer's @author prefix


def test_since_id_cursor_and_pagination(app, x):
    alice = app.add_user("alice")
    ids = [app.publish("alice", f"post {n}") for n in range(7)]

    first = x.user_posts(alice, max_results=5)
    assert [post.id for post in first.posts] == ids[:1:-1]
    assert first.newest_id == ids[-1]
    assert first.next_token is not None
    second = x.user_posts(alice, max_results=5, pagination_token=first.next_token)
    assert [post.id for post in second.posts] == [ids[1], ids[0]]
    assert second.next_token is None

    assert x.user_posts(alice, since_id=first.newest_id) == Page([], None, None)
    newer = app.publish("alice", "something new")
    page = x.user_posts(alice, since_id=first.newest_id)
    assert [post.id for post in page.posts] == [newer]
    assert page.newest_id == newer


def test_exclude_filters(app, x):
    alice = app.add_user("alice")
    bobs = app.publish("bob", "bob's post")
    original = app.publish("alice", "original")
    reply = app.publish("alice", "a reply", reply_to=bobs)
    retweet = app.publish("alice", "", retweet_of=bobs)

    assert [p.id for p in x.user_posts(alice).posts] == [original]
    assert [p.id for p in x.user_posts(alice, exclude=("retweets",)).posts] == [reply, original]
    everything = x.user_posts(alice, exclude=()).posts
    assert [p.id for p in everything] == [retweet, reply, original]
    assert everything[0].is_retweet


def test_mentions_of_our_account(app, x):
    mention = app.publish("alice", "@replyguy hello")
    app.publish("alice", "nothing for us")
    page = x.mentions(OUR_USER_ID)
    assert [post.id for post in page.posts] == [mention]
    assert page.posts[0].author_username == "alice"
    assert x.mentions(OUR_USER_ID, since_id=mention).posts == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("python -is:retweet -is:reply", ["question", "post"]),
        ('"love python"', ["retweet", "post"]),
        ('"love python" -is:retweet', ["post"]),
        ("python from:bob", ["question"]),
        ("@replyguy python", ["question"]),
        ("python is:reply", ["reply"]),
    ],
)
def test_search_recent_operators(app, x, query, expected):
    posts = {"post": app.publish("alice", "I love python")}
    posts["question"] = app.publish("bob", "@replyguy is python good?")
    posts["reply"] = app.publish("carol", "python rocks", reply_to=posts["post"])
    posts["retweet"] = app.publish("dave", "", retweet_of=posts["post"])
    names = {pid: name for name, pid in posts.items()}
    assert [names[post.id] for post in x.search_recent(query).posts] == expected


def test_unknown_user_timeline_is_permanent(x):
    error = kind_of(lambda: x.user_posts("123"))
    assert error.kind is ErrorKind.PERMANENT


# --- writes --------------------------------------------------------------------------------


def test_reply_to_a_mention_is_published(app, x):
    target = app.publish("alice", "@replyguy what do you think?")
    post_id = x.create_reply(in_reply_to=target, text="I think it is great")
    assert [(p.id, p.text) for p in app.replies_to(target)] == [(post_id, "I think it is great")]


def test_reply_rule_is_not_permitted_until_summoned_or_exempt(app, x):
    ordinary = app.publish("alice", "an ordinary post")
    error = kind_of(lambda: x.create_reply(in_reply_to=ordinary, text="hello"))
    assert (error.kind, error.status) == (ErrorKind.NOT_PERMITTED, 403)
    assert app.replies_to(ordinary) == []

    mention = app.publish("alice", "ok @replyguy, your turn")
    assert x.create_reply(in_reply_to=mention, text="hello")

    app.exempt = True
    assert x.create_reply(in_reply_to=ordinary, text="hello again")
    assert len(app.replies_to(ordinary)) == 1


def test_reply_to_a_deleted_post_is_permanent(app, x):
    target = app.publish("alice", "@replyguy soon gone")
    app.delete(target)
    error = kind_of(lambda: x.create_reply(in_reply_to=target, text="hello"))
    assert (error.kind, error.status, error.reason) == (ErrorKind.PERMANENT, 403, "target_gone")


def test_duplicate_content_is_ambiguous(app, x):
    first = app.publish("alice", "@replyguy one")
    second = app.publish("alice", "@replyguy two")
    x.create_reply(in_reply_to=first, text="same answer")
    error = kind_of(lambda: x.create_reply(in_reply_to=second, text="same answer"))
    assert (error.kind, error.status, error.reason) == (ErrorKind.AMBIGUOUS, 403, "duplicate")


def test_bad_requests_are_permanent(app, x):
    target = app.publish("alice", "@replyguy hi")
    too_long = kind_of(lambda: x.create_reply(in_reply_to=target, text="a" * 281))
    assert (too_long.kind, too_long.status) == (ErrorKind.PERMANENT, 400)
    bad_page = kind_of(lambda: x.user_posts(OUR_USER_ID, max_results=1))
    assert (bad_page.kind, bad_page.status) == (ErrorKind.PERMANENT, 400)


def test_delete_post(app, x):
    target = app.publish("alice", "@replyguy hi")
    post_id = x.create_reply(in_reply_to=target, text="oops")
    x.delete_post(post_id)
    assert app.replies_to(target) == []
    error = kind_of(lambda: x.delete_post(post_id))
    assert (error.kind, error.status) == (ErrorKind.PERMANENT, 404)


# --- failures of the service ---------------------------------------------------------------------


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("where", ["closed-port", "unknown-host"])
def test_unreachable_x_is_transient_even_for_writes(closed_port_url, breaker, where):
    # Nothing was sent, so nothing can have been posted: no reconciliation needed.
    url = closed_port_url if where == "closed-port" else "http://x-sandbox.invalid"
    x = make_client(url, breaker)
    for call in (x.me, lambda: x.create_reply(in_reply_to="1", text="hi")):
        error = kind_of(call)
        assert error.kind is ErrorKind.TRANSIENT
        assert error.status is None


def test_read_timeout_on_a_read_is_transient(app, impatient):
    app.faults.add("user_tweets", "hang", latency=3)
    error = kind_of(lambda: impatient.user_posts(OUR_USER_ID))
    assert error.kind is ErrorKind.TRANSIENT
    assert isinstance(error.__cause__, requests.ReadTimeout)  # our timeout ended it


def test_read_timeout_on_create_is_ambiguous(app, impatient):
    target = app.publish("alice", "@replyguy hi")
    app.faults.add("create_tweet", "hang", latency=3)
    error = kind_of(lambda: impatient.create_reply(in_reply_to=target, text="hello"))
    assert error.kind is ErrorKind.AMBIGUOUS
    assert isinstance(error.__cause__, requests.ReadTimeout)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(app, x, status):
    target = app.publish("alice", "@replyguy hi")
    app.faults.add("*", "error", status=status)
    assert kind_of(lambda: x.user_posts(OUR_USER_ID)).kind is ErrorKind.TRANSIENT
    error = kind_of(lambda: x.create_reply(in_reply_to=target, text="hello"))
    assert (error.kind, error.status) == (ErrorKind.TRANSIENT, status)


def test_an_html_error_page_is_transient_on_reads_and_ambiguous_on_create(app, x):
    target = app.publish("alice", "@replyguy hi")
    app.faults.add("*", "html", status=502)
    assert kind_of(lambda: x.search_recent("hi")).kind is ErrorKind.TRANSIENT
    error = kind_of(lambda: x.create_reply(in_reply_to=target, text="hello"))
    assert (error.kind, error.status) == (ErrorKind.AMBIGUOUS, 502)


def test_truncated_json_is_transient_on_reads_and_ambiguous_on_create(app, x):
    target = app.publish("alice", "@replyguy hi")
    app.faults.add("*", "truncated")
    assert kind_of(lambda: x.mentions(OUR_USER_ID)).kind is ErrorKind.TRANSIENT
    assert kind_of(x.me).kind is ErrorKind.TRANSIENT
    error = kind_of(lambda: x.create_reply(in_reply_to=target, text="hello"))
    assert error.kind is ErrorKind.AMBIGUOUS


def test_a_dropped_connection_on_a_read_is_transient(app, x):
    app.faults.add("user_tweets", "cut_before")
    assert kind_of(lambda: x.user_posts(OUR_USER_ID)).kind is ErrorKind.TRANSIENT


def test_cut_after_create_is_ambiguous_and_reconciliation_finds_the_reply(app, x):
    target = app.publish("alice", "@replyguy what now?")
    app.faults.add("create_tweet", "cut_after", times=1)
    error = kind_of(lambda: x.create_reply(in_reply_to=target, text="this went through"))
    assert error.kind is ErrorKind.AMBIGUOUS

    [posted] = app.replies_to(target)  # X has it, although we never heard back
    found = [reply for reply in x.our_recent_replies() if reply.replied_to_id == target]
    assert [(reply.id, reply.text) for reply in found] == [(posted.id, "this went through")]


def test_cut_before_create_is_ambiguous_and_reconciliation_finds_nothing(app, x):
    target = app.publish("alice", "@replyguy what now?")
    app.faults.add("create_tweet", "cut_before", times=1)
    assert kind_of(lambda: x.create_reply(in_reply_to=target, text="lost")).kind is (
        ErrorKind.AMBIGUOUS
    )
    assert [reply for reply in x.our_recent_replies() if reply.replied_to_id == target] == []


def test_wrong_credentials_are_transient_and_count_for_the_breaker(server, breaker, app):
    target = app.publish("alice", "@replyguy hi")
    wrong_bearer = make_client(server.url, breaker, bearer_token="revoked")
    error = kind_of(lambda: wrong_bearer.lookup_users(["alice"]))
    assert (error.kind, error.status) == (ErrorKind.TRANSIENT, 401)

    wrong_secret = make_client(server.url, breaker, consumer_secret="rotated")
    for _ in range(4):
        error = kind_of(lambda: wrong_secret.create_reply(in_reply_to=target, text="hi"))
        assert (error.kind, error.status) == (ErrorKind.TRANSIENT, 401)
    assert app.replies_to(target) == []
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        wrong_bearer.lookup_users(["alice"])


def test_item_level_errors_leave_the_breaker_closed(app, x, breaker):
    ordinary = app.publish("alice", "ordinary")
    for _ in range(10):
        kind_of(lambda: x.create_reply(in_reply_to=ordinary, text="hi"))
        kind_of(lambda: x.user_posts(OUR_USER_ID, max_results=1))
    assert breaker.state == "closed"


# --- rate limits ---------------------------------------------------------------------------------


def test_429_holds_the_breaker_open_until_the_reset(app, x, breaker, clock):
    app.faults.add("user_tweets", "error", status=429, reset_in=300, times=1)
    error = kind_of(lambda: x.user_posts(OUR_USER_ID))
    assert (error.kind, error.status) == (ErrorKind.TRANSIENT, 429)
    assert error.retry_at == x.rate_limits["user_tweets"].reset_at == int(clock.now) + 300

    assert breaker.state == "open"
    clock.advance(error.retry_at - clock.now - 1)
    with pytest.raises(CircuitOpenError):
        x.user_posts(OUR_USER_ID)
    clock.advance(1)
    assert x.user_posts(OUR_USER_ID) == Page([], None, None)


def test_usage_cap_waits_for_next_month(app, x):
    app.faults.add("search_recent", "error", status=429, usage_cap=True)
    before = datetime.now(UTC)
    error = kind_of(lambda: x.search_recent("hi"))
    after = datetime.now(UTC)
    assert (error.kind, error.status) == (ErrorKind.TRANSIENT, 429)
    starts = {_next_month(before), _next_month(after)}
    assert datetime.fromtimestamp(error.retry_at, UTC) in starts


def _next_month(now: datetime) -> datetime:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def test_rate_limit_window_limits_then_recovers(app, x, clock):
    alice = app.add_user("alice")
    app.set_limit("user_tweets", 2)
    x.user_posts(alice)
    x.user_posts(alice)
    assert x.rate_limits["user_tweets"] == RateLimit(2, 0, int(clock.now) + 900)

    error = kind_of(lambda: x.user_posts(alice))
    assert (error.kind, error.status, error.retry_at) == (
        ErrorKind.TRANSIENT,
        429,
        int(clock.now) + 900,
    )
    clock.advance(error.retry_at - clock.now)
    app.publish("alice", "back again")
    assert [post.text for post in x.user_posts(alice).posts] == ["back again"]
    assert x.rate_limits["user_tweets"].remaining == 1


def test_rate_limits_are_recorded_for_every_endpoint_on_success_and_error(app, x, clock):
    target = app.publish("alice", "ordinary")
    x.me()
    kind_of(lambda: x.create_reply(in_reply_to=target, text="hi"))  # 403 still counts
    assert x.rate_limits["me"] == RateLimit(75, 74, int(clock.now) + 900)
    assert x.rate_limits["create_tweet"] == RateLimit(100, 99, int(clock.now) + 900)


# --- wiring -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_default_breaker_is_the_shared_twitter_api_breaker(closed_port_url):
    from resilience import get_breaker

    x = XClient(base_url=closed_port_url, timeout=(0.5, 0.5), **CREDENTIALS)
    for _ in range(5):
        assert kind_of(x.me).kind is ErrorKind.TRANSIENT
    assert get_breaker("twitter_api").state == "open"
    with pytest.raises(CircuitOpenError):
        x.me()


@pytest.mark.django_db
def test_from_settings(server, settings):
    settings.X_API_BASE_URL = server.url
    settings.X_BEARER_TOKEN = CREDENTIALS["bearer_token"]
    settings.X_API_KEY = CREDENTIALS["consumer_key"]
    settings.X_API_SECRET = CREDENTIALS["consumer_secret"]
    settings.X_ACCESS_TOKEN = CREDENTIALS["access_token"]
    settings.X_ACCESS_TOKEN_SECRET = CREDENTIALS["access_token_secret"]
    x = XClient.from_settings()
    assert x.me().username == "replyguy"
    assert x.lookup_users(["replyguy"])["replyguy"].id == OUR_USER_ID


def test_without_a_bearer_token_reads_use_user_context(app, server, breaker):
    app.add_user("alice")
    x = make_client(server.url, breaker, bearer_token="")
    assert list(x.lookup_users(["alice"])) == ["alice"]
