"""The X client through tweepy over real HTTP against the sandbox: values, cursors, and
every failure reaching the caller as the right ``ClientError`` kind and reason."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import requests
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured

from bot.clients.errors import ClientError, ErrorKind, Reason
from bot.clients.x import CONFIGURATION_HOLD, Page, RateLimit, User, XClient
from resilience import CircuitBreaker, CircuitOpenError
from sandbox.x_api import OUR_USER_ID, SANDBOX_CREDENTIALS, XApp
from tests.helpers import breaker_from_settings, free_port, requests_to

CREDENTIALS = {
    "bearer_token": SANDBOX_CREDENTIALS["bearer_token"],
    "consumer_key": SANDBOX_CREDENTIALS["consumer_key"],
    "consumer_secret": SANDBOX_CREDENTIALS["consumer_secret"],
    "access_token": SANDBOX_CREDENTIALS["access_token"],
    "access_token_secret": SANDBOX_CREDENTIALS["access_token_secret"],
}


@pytest.fixture(autouse=True)
def _fresh_holds(settings):
    """Holds live in the shared cache: a private one per test, so none outlives it."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "test-client-x",
        }
    }
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def app(clock) -> XApp:
    return XApp(clock=clock)


@pytest.fixture
def breaker(clock) -> CircuitBreaker:
    # twitter_api's settings, its own memory and the test's clock.
    return breaker_from_settings("twitter_api", clock=clock)


def make_client(
    url: str, breaker: CircuitBreaker, *, timeout=(1.0, 2.0), clock=time.time, **changes
) -> XClient:
    return XClient(
        base_url=url, timeout=timeout, breaker=breaker, clock=clock, **{**CREDENTIALS, **changes}
    )


@pytest.fixture
def x(server, breaker, clock) -> XClient:
    client = make_client(server.url, breaker, clock=clock)
    yield client
    client.close()


@pytest.fixture
def impatient(server, breaker, clock) -> XClient:
    """A client whose reads time out after half a second."""
    client = make_client(server.url, breaker, timeout=(1.0, 0.5), clock=clock)
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
    assert requests_to(app, "me") == 1


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


def test_our_posts_are_all_of_ours_replies_included_retweets_not(app, x):
    alice = app.publish("alice", "@replyguy hello")
    original = app.publish("replyguy", "an original post")
    reply = app.publish("replyguy", "a reply", reply_to=alice)
    app.publish("replyguy", "", retweet_of=alice)
    app.publish("alice", "not ours")

    page = x.our_posts()
    assert [(p.id, p.is_reply) for p in page.posts] == [(reply, True), (original, False)]
    assert page.posts[0].replied_to_id == alice
    assert page.newest_id == reply


def test_our_posts_is_an_owned_read_in_user_context(app, x):
    app.publish("replyguy", "ours")
    app.set_limit("user_tweets", 0, scope="app")  # the bearer token's window is spent
    assert [p.text for p in x.our_posts().posts] == ["ours"]
    assert x.rate_limits["user_tweets"].limit == 900


def test_our_posts_pages_by_token_and_until_id(app, x):
    ids = [app.publish("replyguy", f"post {n}") for n in range(7)]

    first = x.our_posts(max_results=5)
    assert [p.id for p in first.posts] == ids[:1:-1]
    second = x.our_posts(max_results=5, pagination_token=first.next_token)
    assert ([p.id for p in second.posts], second.next_token) == ([ids[1], ids[0]], None)

    below = x.our_posts(until_id=ids[3], max_results=5)
    assert [p.id for p in below.posts] == [ids[2], ids[1], ids[0]]
    between = x.our_posts(since_id=ids[1], until_id=ids[4])
    assert [p.id for p in between.posts] == [ids[3], ids[2]]


def test_post_visible_until_the_post_is_deleted(app, x):
    post = app.publish("alice", "@replyguy still here?")
    assert x.post_visible(post) is True
    app.delete(post)
    assert x.post_visible(post) is False
    assert x.post_visible("12345") is False  # never existed
    assert x.rate_limits["tweet_lookup"].limit == 450  # a public read: the bearer token


def test_post_visible_without_a_bearer_token_uses_user_context(app, server, breaker):
    post = app.publish("alice", "hello")
    x = make_client(server.url, breaker, bearer_token="")
    assert x.post_visible(post) is True
    assert x.rate_limits["tweet_lookup"].limit == 900


def test_post_visible_is_false_on_xs_own_404_and_raises_on_anything_else(app, x):
    post = app.publish("alice", "hello")
    app.faults.add("tweet_lookup", "error", status=404, times=1)
    assert x.post_visible(post) is False
    app.faults.add("tweet_lookup", "error", status=503, times=1)
    assert kind_of(lambda: x.post_visible(post)).kind is ErrorKind.TRANSIENT
    assert x.post_visible(post) is True


def test_text_from_x_is_cleaned(app, x):
    mallory = app.add_user("mallory", "Mal\x00lory \ud800")
    app.publish("mallory", "nul\x00 and \udfff and cafe\u0301")
    [post] = x.user_posts(mallory).posts
    assert post.text == "nul and \ufffd and caf\u00e9"
    assert x.lookup_users(["mallory"])["mallory"].name == "Mallory \ufffd"


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
    return f"http://127.0.0.1:{free_port()}"


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
    found = [reply for reply in x.our_posts().posts if reply.replied_to_id == target]
    assert [(reply.id, reply.text) for reply in found] == [(posted.id, "this went through")]


def test_cut_before_create_is_ambiguous_and_reconciliation_finds_nothing(app, x):
    target = app.publish("alice", "@replyguy what now?")
    app.faults.add("create_tweet", "cut_before", times=1)
    assert kind_of(lambda: x.create_reply(in_reply_to=target, text="lost")).kind is (
        ErrorKind.AMBIGUOUS
    )
    assert [reply for reply in x.our_posts().posts if reply.replied_to_id == target] == []


@pytest.mark.parametrize(
    ("credential", "value", "named"),
    [
        ("bearer_token", "revoked", "X_BEARER_TOKEN"),  # lookups use the bearer token
        ("consumer_secret", "rotated", "X_API_SECRET"),  # replies use OAuth 1.0a
    ],
)
def test_wrong_credentials_are_configuration_and_open_the_breaker_at_once(
    server, breaker, app, clock, credential, value, named
):
    target = app.publish("alice", "@replyguy hi")
    x = make_client(server.url, breaker, clock=clock, **{credential: value})
    if credential == "bearer_token":
        error = kind_of(lambda: x.lookup_users(["alice"]))
    else:
        error = kind_of(lambda: x.create_reply(in_reply_to=target, text="hi"))
    assert (error.kind, error.status, error.reason) == (
        ErrorKind.TRANSIENT,
        401,
        Reason.CONFIGURATION,
    )
    assert error.retry_at == clock.now + CONFIGURATION_HOLD
    assert named in str(error)
    assert value not in str(error)
    assert app.replies_to(target) == []

    assert breaker.state == "open"  # one refusal is enough: every call would fail alike
    with pytest.raises(CircuitOpenError) as refused:
        x.me()
    assert refused.value.retry_after == CONFIGURATION_HOLD


def test_a_read_only_app_is_told_how_to_get_write_permission(app, x, breaker):
    target = app.publish("alice", "@replyguy hi")
    app.read_only = True
    error = kind_of(lambda: x.create_reply(in_reply_to=target, text="hello"))
    assert (error.kind, error.status, error.reason) == (
        ErrorKind.TRANSIENT,
        403,
        Reason.CONFIGURATION,
    )
    assert "Read and write" in str(error)
    assert "regenerate the access token and secret" in str(error)
    assert app.replies_to(target) == []
    assert breaker.state == "open"


@pytest.mark.parametrize(("state", "words"), [("suspended", "suspended"), ("locked", "unlock")])
def test_a_suspended_or_locked_account_is_configuration(app, x, breaker, clock, state, words):
    target = app.publish("alice", "@replyguy hi")
    app.account_state = state
    for call in (x.me, lambda: x.create_reply(in_reply_to=target, text="hello")):
        error = kind_of(call)
        assert (error.kind, error.status, error.reason) == (
            ErrorKind.TRANSIENT,
            403,
            Reason.CONFIGURATION,
        )
        assert error.retry_at == clock.now + CONFIGURATION_HOLD
        assert words in str(error)
        breaker.reset()  # the first refusal opened it; ask X again
    assert app.replies_to(target) == []


@pytest.mark.parametrize(
    ("switch", "words"), [("enrolled", "Project"), ("user_context_only", "X_ACCESS_TOKEN")]
)
def test_an_app_x_refuses_is_configuration(app, x, switch, words):
    if switch == "enrolled":
        app.enrolled = False  # the app is outside a Project
    else:
        app.user_context_only = {"search_recent"}  # our bearer token is no longer enough
    error = kind_of(lambda: x.search_recent("hello"))
    assert (error.kind, error.status, error.reason) == (
        ErrorKind.TRANSIENT,
        403,
        Reason.CONFIGURATION,
    )
    assert words in str(error)


@pytest.mark.parametrize("call", ["user_posts", "create_reply"])
def test_a_404_that_is_not_xs_is_configuration_even_for_a_write(app, x, clock, call):
    target = app.publish("alice", "@replyguy hi")
    app.faults.add("*", "html", status=404)  # a proxy's page: nothing reached X
    calls = {
        "user_posts": lambda: x.user_posts(OUR_USER_ID),
        "create_reply": lambda: x.create_reply(in_reply_to=target, text="hello"),
    }
    error = kind_of(calls[call])
    assert (error.kind, error.status, error.reason) == (
        ErrorKind.TRANSIENT,
        404,
        Reason.CONFIGURATION,
    )
    assert error.retry_at == clock.now + CONFIGURATION_HOLD
    assert "X_API_BASE_URL" in str(error)


def test_a_misrouted_base_url_is_configuration(server, breaker, clock):
    x = make_client(server.url + "/api", breaker, clock=clock)  # X answers "no such page"
    error = kind_of(x.me)
    assert (error.kind, error.status, error.reason) == (
        ErrorKind.TRANSIENT,
        404,
        Reason.CONFIGURATION,
    )
    assert f"{server.url}/api/2/users/me" in str(error)
    assert "X_API_BASE_URL" in str(error)


def test_xs_own_404_stays_permanent(app, x):
    app.faults.add("user_tweets", "error", status=404, times=1)
    error = kind_of(lambda: x.user_posts(OUR_USER_ID))
    assert (error.kind, error.status, error.reason) == (ErrorKind.PERMANENT, 404, Reason.NONE)


def test_item_level_errors_leave_the_breaker_closed(app, x, breaker):
    ordinary = app.publish("alice", "ordinary")
    for _ in range(10):
        kind_of(lambda: x.create_reply(in_reply_to=ordinary, text="hi"))
        kind_of(lambda: x.user_posts(OUR_USER_ID, max_results=1))
    assert breaker.state == "closed"


# --- rate limits ---------------------------------------------------------------------------------


def test_429_holds_the_endpoint_until_the_reset_and_not_the_breaker(app, x, breaker, clock):
    app.faults.add("user_tweets", "error", status=429, reset_in=300, times=1)
    error = kind_of(lambda: x.user_posts(OUR_USER_ID))
    assert (error.kind, error.status, error.reason) == (
        ErrorKind.TRANSIENT,
        429,
        Reason.RATE_LIMITED,
    )
    assert error.retry_at == x.rate_limits["user_tweets"].reset_at == int(clock.now) + 300
    assert breaker.state == "closed"

    clock.advance(error.retry_at - clock.now - 1)
    held = kind_of(lambda: x.user_posts(OUR_USER_ID))
    assert (held.kind, held.reason, held.retry_at) == (
        ErrorKind.TRANSIENT,
        Reason.RATE_LIMITED,
        error.retry_at,
    )
    held_until = datetime.fromtimestamp(error.retry_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"held until {held_until}" in str(held)
    assert requests_to(app, "user_tweets") == 1  # the held call never went out

    clock.advance(1)
    assert x.user_posts(OUR_USER_ID) == Page([], None, None)
    assert requests_to(app, "user_tweets") == 2


def test_a_429_on_search_leaves_the_breaker_closed_and_publishing_going(app, x, breaker):
    target = app.publish("alice", "@replyguy hi")
    app.faults.add("search_recent", "error", status=429, times=1)
    assert kind_of(lambda: x.search_recent("hi")).reason == Reason.RATE_LIMITED
    assert breaker.state == "closed"

    assert x.create_reply(in_reply_to=target, text="hello")
    assert kind_of(lambda: x.search_recent("hi")).reason == Reason.RATE_LIMITED
    assert requests_to(app, "search_recent") == 1
    assert breaker.state == "closed"


def test_a_hold_is_seen_by_every_client_sharing_the_cache(app, server, breaker, clock):
    app.faults.add("user_mentions", "error", status=429, times=1)
    first = make_client(server.url, breaker, clock=clock)
    second = make_client(server.url, breaker, clock=clock)  # another worker, say
    kind_of(lambda: first.mentions(OUR_USER_ID))
    assert kind_of(lambda: second.mentions(OUR_USER_ID)).reason == Reason.RATE_LIMITED
    assert requests_to(app, "user_mentions") == 1


def test_holds_are_per_token_as_xs_windows_are(app, x):
    alice = app.add_user("alice")
    app.set_limit("user_tweets", 0, scope="user")  # our user token's window is spent
    assert kind_of(x.our_posts).reason == Reason.RATE_LIMITED
    assert x.user_posts(alice) == Page([], None, None)  # the bearer token's window is not
    assert kind_of(x.our_posts).reason == Reason.RATE_LIMITED
    assert requests_to(app, "user_tweets") == 2


def test_a_429_without_a_reset_waits_fifteen_minutes(app, x, clock):
    app.faults.add("search_recent", "html", status=429, times=1)  # a proxy's, no headers
    error = kind_of(lambda: x.search_recent("hi"))
    assert (error.reason, error.retry_at) == (Reason.RATE_LIMITED, clock.now + 900)
    clock.advance(899)
    kind_of(lambda: x.search_recent("hi"))
    clock.advance(1)
    assert x.search_recent("hi") == Page([], None, None)
    assert requests_to(app, "search_recent") == 2


def test_usage_cap_waits_for_next_month(app, x, clock):
    app.faults.add("search_recent", "error", status=429, usage_cap=True)
    error = kind_of(lambda: x.search_recent("hi"))
    assert (error.kind, error.status, error.reason) == (
        ErrorKind.TRANSIENT,
        429,
        Reason.RATE_LIMITED,
    )
    now = datetime.fromtimestamp(clock.now, UTC)
    assert datetime.fromtimestamp(error.retry_at, UTC) == _next_month(now)
    kind_of(lambda: x.search_recent("hi"))
    assert requests_to(app, "search_recent") == 1


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
    assert (error.kind, error.status, error.reason, error.retry_at) == (
        ErrorKind.TRANSIENT,
        429,
        Reason.RATE_LIMITED,
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


@pytest.mark.parametrize(
    ("unset", "message"),
    [
        (["X_API_KEY", "X_ACCESS_TOKEN"], "X is not configured: set X_API_KEY, X_ACCESS_TOKEN"),
        (
            ["X_ACCESS_TOKEN_SECRET", "X_API_SECRET"],
            "X is not configured: set X_API_SECRET, X_ACCESS_TOKEN_SECRET",
        ),
    ],
)
def test_from_settings_names_every_missing_credential(settings, unset, message):
    for name in ("X_API_KEY", "X_API_SECRET", "X_ACCESS_TOKEN", "X_ACCESS_TOKEN_SECRET"):
        setattr(settings, name, "" if name in unset else "set")
    with pytest.raises(ImproperlyConfigured) as caught:
        XClient.from_settings()
    assert str(caught.value) == message


def test_without_a_bearer_token_reads_use_user_context(app, server, breaker):
    app.add_user("alice")
    x = make_client(server.url, breaker, bearer_token="")
    assert list(x.lookup_users(["alice"])) == ["alice"]
