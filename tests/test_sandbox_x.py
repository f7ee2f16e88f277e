"""The X sandbox speaks X API v2 as the reference describes it: shapes, headers, status codes.

Plain ``requests`` here (OAuth 1.0a signed with requests-oauthlib); tweepy drives the
same server in test_client_x.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests
from oauthlib.oauth1 import Client as OAuthSigner
from requests_oauthlib import OAuth1

from sandbox.http import Server
from sandbox.x_api import OUR_USER_ID, OUR_USERNAME, SANDBOX_CREDENTIALS, XApp

C = SANDBOX_CREDENTIALS
BEARER = {"Authorization": f"Bearer {C['bearer_token']}"}
TWEET_FIELDS = "author_id,created_at,conversation_id,referenced_tweets,in_reply_to_user_id,entities"

UNAUTHORIZED = {
    "title": "Unauthorized",
    "type": "about:blank",
    "status": 401,
    "detail": "Unauthorized",
}
TOO_MANY = {
    "title": "Too Many Requests",
    "detail": "Too Many Requests",
    "type": "about:blank",
    "status": 429,
}
DUPLICATE = {
    "detail": "You are not allowed to create a Tweet with duplicate content.",
    "type": "about:blank",
    "title": "Forbidden",
    "status": 403,
}
PROBLEMS = "https://api.twitter.com/2/problems/"
READ_ONLY = {
    "title": "Forbidden",
    "type": PROBLEMS + "oauth1-permissions",
    "status": 403,
    "detail": "Your client app is not configured with the appropriate oauth1 app "
    "permissions for this endpoint.",
}
SUSPENDED = {
    "errors": [
        {
            "code": 64,
            "message": "Your account is suspended and is not permitted to access this feature",
        }
    ]
}
LOCKED = {
    "errors": [
        {
            "code": 326,
            "message": "To protect our users from spam and other malicious activity, this "
            "account is temporarily locked. Please log in to https://twitter.com to unlock "
            "your account.",
        }
    ]
}
REPLY_RULE = (
    "Reply to this conversation is not allowed because you have not been mentioned or "
    "otherwise engaged by the author of the post you are replying to."
)


def oauth(consumer_key: str = C["consumer_key"], **changes: str) -> OAuth1:
    creds = {
        "client_secret": C["consumer_secret"],
        "resource_owner_key": C["access_token"],
        "resource_owner_secret": C["access_token_secret"],
        **changes,
    }
    return OAuth1(consumer_key, **creds)


@pytest.fixture
def app(clock) -> XApp:
    return XApp(clock=clock)


@pytest.fixture
def x(app):
    """Calls the sandbox: ``x.get(path, auth="app"|"user"|None, **params)``, ``x.post``..."""
    with Server(app) as server:
        yield Caller(server.url)


class Caller:
    def __init__(self, url: str) -> None:
        self.url = url

    def request(self, method: str, path: str, auth: str | None, **kwargs) -> requests.Response:
        if auth == "app":
            kwargs["headers"] = {**BEARER, **kwargs.get("headers", {})}
        elif auth == "user":
            kwargs["auth"] = oauth()
        return requests.request(method, self.url + path, timeout=5, **kwargs)

    def get(self, path: str, auth: str | None = "app", **params) -> requests.Response:
        return self.request("GET", path, auth, params=params)

    def post(self, body: dict, auth: str | None = "user") -> requests.Response:
        return self.request("POST", "/2/tweets", auth, json=body)

    def delete(self, post_id: str, auth: str | None = "user") -> requests.Response:
        return self.request("DELETE", f"/2/tweets/{post_id}", auth)


# --- users -------------------------------------------------------------------------------


def test_user_lookup_by_username_and_by_list(app, x):
    alice = app.add_user("alice", "Alice A.")
    answer = x.get("/2/users/by/username/ALICE")
    assert answer.status_code == 200
    assert answer.json() == {"data": {"id": alice, "name": "Alice A.", "username": "alice"}}

    missing = x.get("/2/users/by/username/nobody").json()
    assert "data" not in missing
    assert missing["errors"][0]["type"] == "https://api.twitter.com/2/problems/resource-not-found"

    both = x.get("/2/users/by", usernames="alice,nobody,replyguy").json()
    assert [u["username"] for u in both["data"]] == ["alice", "replyguy"]
    assert [e["value"] for e in both["errors"]] == ["nobody"]


def test_me_is_the_access_tokens_account_and_needs_user_context(x):
    me = x.get("/2/users/me", auth="user")
    assert me.json() == {"data": {"id": OUR_USER_ID, "name": "Reply Guy", "username": OUR_USERNAME}}
    assert C["access_token"].partition("-")[0] == OUR_USER_ID  # tweepy reads the id there

    app_only = x.get("/2/users/me", auth="app")
    assert app_only.status_code == 403
    assert (
        app_only.json()["type"] == "https://api.twitter.com/2/problems/unsupported-authentication"
    )


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"headers": {"Authorization": "Bearer wrong-token"}},
        {"headers": {"Authorization": "Basic dXNlcjpwYXNz"}},
        {"auth": oauth(consumer_key="wrong-key")},
        {"auth": oauth(resource_owner_key=f"{OUR_USER_ID}-stolen")},
        {"auth": oauth(client_secret="wrong-secret")},  # the signature does not verify
        {"auth": oauth(resource_owner_secret="wrong-secret")},
    ],
    ids=["none", "bad-bearer", "basic", "consumer-key", "token", "consumer-secret", "token-secret"],
)
def test_requests_without_valid_credentials_get_a_401_problem(x, auth):
    answer = requests.get(f"{x.url}/2/users/by/username/replyguy", timeout=5, **auth)
    assert answer.status_code == 401
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json() == UNAUTHORIZED


def test_oauth_signature_over_api_twitter_com_is_accepted_over_another_host_is_not(x):
    # tweepy signs https://api.twitter.com/... and the client rewrites the host afterwards.
    def signed_for(host: str) -> int:
        signer = OAuthSigner(
            C["consumer_key"],
            client_secret=C["consumer_secret"],
            resource_owner_key=C["access_token"],
            resource_owner_secret=C["access_token_secret"],
        )
        _, headers, _ = signer.sign(f"{host}/2/users/me?user.fields=id", http_method="GET")
        url = f"{x.url}/2/users/me?user.fields=id"
        return requests.get(url, headers=headers, timeout=5).status_code

    assert signed_for("https://api.twitter.com") == 200
    assert signed_for("https://evil.example") == 401


def test_unknown_route_answers_404(x):
    assert x.get("/2/nothing/here").status_code == 404


# --- timelines -------------------------------------------------------------------------------


def test_user_timeline_is_newest_first_with_meta_and_only_requested_fields(app, x, clock):
    alice = app.add_user("alice")
    first = app.publish("alice", "first @replyguy")
    clock.advance(60)
    second = app.publish("alice", "second")
    assert int(second) > int(first)

    bare = x.get(f"/2/users/{alice}/tweets").json()
    assert bare["data"] == [
        {"id": second, "text": "second", "edit_history_tweet_ids": [second]},
        {"id": first, "text": "first @replyguy", "edit_history_tweet_ids": [first]},
    ]
    assert bare["meta"] == {"newest_id": second, "oldest_id": first, "result_count": 2}

    full = x.get(f"/2/users/{alice}/tweets", **{"tweet.fields": TWEET_FIELDS}).json()
    post = full["data"][1]
    assert post["author_id"] == alice
    assert post["conversation_id"] == first
    assert post["created_at"] == datetime.fromtimestamp(clock.now - 60, UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )
    assert post["entities"]["mentions"] == [
        {"start": 6, "end": 15, "username": "replyguy", "id": OUR_USER_ID}
    ]
    assert "referenced_tweets" not in post
    assert "in_reply_to_user_id" not in post


def test_since_id_is_exclusive_and_no_new_posts_gives_only_a_zero_count(app, x):
    alice = app.add_user("alice")
    ids = [app.publish("alice", f"post {n}") for n in range(3)]
    newer = x.get(f"/2/users/{alice}/tweets", since_id=ids[0]).json()
    assert [p["id"] for p in newer["data"]] == [ids[2], ids[1]]
    assert x.get(f"/2/users/{alice}/tweets", since_id=ids[2]).json() == {
        "meta": {"result_count": 0}
    }
    assert [p["id"] for p in x.get(f"/2/users/{alice}/tweets", until_id=ids[2]).json()["data"]] == [
        ids[1],
        ids[0],
    ]


@pytest.mark.parametrize(
    ("path", "value", "status"),
    [
        ("/2/users/{alice}/tweets", 4, 400),
        ("/2/users/{alice}/tweets", 5, 200),
        ("/2/users/{alice}/tweets", 100, 200),
        ("/2/users/{alice}/tweets", 101, 400),
        ("/2/users/{alice}/mentions", 4, 400),
        ("/2/tweets/search/recent", 9, 400),
        ("/2/tweets/search/recent", 10, 200),
    ],
)
def test_max_results_bounds(app, x, path, value, status):
    alice = app.add_user("alice")
    answer = x.get(path.format(alice=alice), max_results=value, query="hello")
    assert answer.status_code == status
    if status == 400:
        body = answer.json()
        assert body["title"] == "Invalid Request"
        assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
        assert body["errors"][0]["parameters"] == {"max_results": [str(value)]}


@pytest.mark.parametrize(
    "params",
    [
        {"since_id": "abc"},
        {"exclude": "likes"},
        {"tweet.fields": "id,nonsense"},
        {"expansions": "everything"},
        {"pagination_token": "not-a-token"},
    ],
)
def test_invalid_timeline_parameters_are_400(app, x, params):
    alice = app.add_user("alice")
    assert x.get(f"/2/users/{alice}/tweets", **params).status_code == 400


def test_pagination_walks_every_post_once(app, x):
    alice = app.add_user("alice")
    ids = [app.publish("alice", f"post {n}") for n in range(12)]
    seen, token, pages = [], None, 0
    while True:
        params = {"max_results": 5, **({"pagination_token": token} if token else {})}
        body = x.get(f"/2/users/{alice}/tweets", **params).json()
        seen += [p["id"] for p in body["data"]]
        pages += 1
        token = body["meta"].get("next_token")
        if token is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))


def test_exclude_retweets_and_replies(app, x):
    alice = app.add_user("alice")
    app.add_user("bob")
    original = app.publish("alice", "original")
    bobs = app.publish("bob", "bob says")
    reply = app.publish("alice", "a reply", reply_to=bobs)
    retweet = app.publish("alice", "", retweet_of=bobs)
    quote = app.publish("alice", "look at this", quote_of=bobs)

    def ids(**params) -> list[str]:
        return [p["id"] for p in x.get(f"/2/users/{alice}/tweets", **params).json()["data"]]

    assert ids() == [quote, retweet, reply, original]
    assert ids(exclude="retweets") == [quote, reply, original]
    assert ids(exclude="replies") == [quote, retweet, original]
    assert ids(exclude="retweets,replies") == [quote, original]


def test_references_and_expansions(app, x):
    bob = app.add_user("bob", "Bob")
    alice = app.add_user("alice", "Alice")
    bobs = app.publish("bob", "bob says")
    reply = app.publish("alice", "indeed", reply_to=bobs)
    body = x.get(
        f"/2/users/{alice}/tweets",
        **{"tweet.fields": TWEET_FIELDS, "expansions": "author_id,referenced_tweets.id"},
    ).json()
    post = body["data"][0]
    assert post["id"] == reply
    assert post["text"] == "@bob indeed"  # X's composer starts a reply with its target
    assert post["referenced_tweets"] == [{"type": "replied_to", "id": bobs}]
    assert post["in_reply_to_user_id"] == bob
    assert post["conversation_id"] == bobs
    assert body["includes"]["users"] == [{"id": alice, "name": "Alice", "username": "alice"}]
    assert [t["id"] for t in body["includes"]["tweets"]] == [bobs]


def test_mentions_timeline(app, x):
    app.add_user("alice")
    mention = app.publish("alice", "hey @ReplyGuy what do you think?")
    app.publish("alice", "nothing to see")
    ours = app.publish("replyguy", "our post")
    reply = app.publish("alice", "answering you", reply_to=ours)
    body = x.get(f"/2/users/{OUR_USER_ID}/mentions", auth="user").json()
    assert [p["id"] for p in body["data"]] == [reply, mention]


def test_unknown_user_timeline_answers_200_with_not_found_error(x):
    body = x.get("/2/users/123/tweets")
    assert body.status_code == 200
    assert body.json()["errors"][0]["detail"] == "Could not find user with id: [123]."


# --- post lookup -----------------------------------------------------------------------------


def test_post_lookup_answers_the_post_with_the_fields_asked_for(app, x):
    alice = app.add_user("alice", "Alice")
    post = app.publish("alice", "hello @replyguy")
    answer = x.get(f"/2/tweets/{post}", **{"tweet.fields": "author_id", "expansions": "author_id"})
    assert answer.status_code == 200
    assert answer.json() == {
        "data": {
            "id": post,
            "text": "hello @replyguy",
            "edit_history_tweet_ids": [post],
            "author_id": alice,
        },
        "includes": {"users": [{"id": alice, "name": "Alice", "username": "alice"}]},
    }
    assert x.get(f"/2/tweets/{post}", auth="user").json()["data"]["id"] == post


def test_a_deleted_or_unknown_post_is_xs_200_with_a_not_found_error(app, x):
    post = app.publish("alice", "soon gone")
    app.delete(post)
    for post_id in (post, "12345"):
        answer = x.get(f"/2/tweets/{post_id}")
        assert answer.status_code == 200
        assert answer.json() == {
            "errors": [
                {
                    "value": post_id,
                    "detail": f"Could not find tweet with id: [{post_id}].",
                    "title": "Not Found Error",
                    "resource_type": "tweet",
                    "parameter": "id",
                    "resource_id": post_id,
                    "type": PROBLEMS + "resource-not-found",
                }
            ]
        }
    assert x.get("/2/tweets/not-an-id").status_code == 400


# --- search ------------------------------------------------------------------------------------


@pytest.fixture
def corpus(app) -> dict[str, str]:
    app.add_user("alice")
    app.add_user("bob")
    posts = {"ours": app.publish("replyguy", "a post of ours")}
    posts["cats"] = app.publish("alice", "I love cats and dogs")
    posts["cat"] = app.publish("bob", "my cat is asleep, category: pets")
    posts["phrase"] = app.publish("bob", "the quick brown fox")
    posts["mention"] = app.publish("alice", "@replyguy quick question about dogs")
    posts["reply"] = app.publish("bob", "quick reply", reply_to=posts["cats"])
    posts["retweet"] = app.publish("bob", "", retweet_of=posts["cats"])
    posts["quote"] = app.publish("alice", "quick look", quote_of=posts["ours"])
    return posts


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("cats", {"cats", "retweet"}),
        ("cat", {"cat"}),  # words, not substrings: "category" and "cats" do not match
        ("love dogs", {"cats", "retweet"}),
        ('"brown fox"', {"phrase"}),
        ('"fox brown"', set()),
        ("quick from:bob", {"phrase", "reply"}),
        ("quick -is:reply", {"phrase", "mention", "quote"}),
        ("dogs -is:retweet", {"cats", "mention"}),
        ("@replyguy", {"mention"}),
        ("is:quote", {"quote"}),
        ("is:retweet", {"retweet"}),
        ("to:alice", {"reply"}),
        ("fox OR asleep", {"phrase", "cat"}),
        ("from:alice (cats OR question) -is:retweet", {"cats", "mention"}),
        ("quick -(from:bob OR is:quote)", {"mention"}),
    ],
)
def test_search_operators(x, corpus, query, expected):
    body = x.get("/2/tweets/search/recent", query=query).json()
    found = {name for name, pid in corpus.items() if pid in {p["id"] for p in body.get("data", [])}}
    assert found == expected


def test_search_covers_the_last_seven_days_only(app, x, clock):
    app.publish("alice", "old news", created_at=clock.now - 8 * 86400)
    fresh = app.publish("alice", "fresh news")
    body = x.get("/2/tweets/search/recent", query="news").json()
    assert [p["id"] for p in body["data"]] == [fresh]


def test_search_needs_a_query(x):
    assert x.get("/2/tweets/search/recent").status_code == 400


# --- posting -------------------------------------------------------------------------------------


def test_create_tweet_answers_201_with_id_text_and_edit_history(app, x):
    answer = x.post({"text": "hello world"})
    assert answer.status_code == 201
    data = answer.json()["data"]
    assert data == {"id": data["id"], "text": "hello world", "edit_history_tweet_ids": [data["id"]]}
    assert data["id"].isdigit()
    assert [p.text for p in app.posts_by("replyguy")] == ["hello world"]


def test_writes_need_user_context(x):
    answer = x.post({"text": "hello"}, auth="app")
    assert answer.status_code == 403
    assert answer.json()["title"] == "Unsupported Authentication"


def test_reply_rule_refuses_a_reply_to_an_ordinary_post(app, x):
    target = app.publish("alice", "just thinking out loud")
    answer = x.post({"text": "my two cents", "reply": {"in_reply_to_tweet_id": target}})
    assert answer.status_code == 403
    assert answer.json() == {
        "title": "Forbidden",
        "detail": REPLY_RULE,
        "type": "about:blank",
        "status": 403,
    }
    assert app.replies_to(target) == []


@pytest.mark.parametrize("summons", ["mention", "quote", "reply_to_us", "exempt", "own_post"])
def test_reply_rule_allows_replies_where_we_were_summoned(app, x, summons):
    ours = app.publish("replyguy", "a post of ours")
    targets = {
        "mention": lambda: app.publish("alice", "what does @replyguy say?"),
        "quote": lambda: app.publish("alice", "look", quote_of=ours),
        "reply_to_us": lambda: app.publish("alice", "answering you", reply_to=ours),
        "exempt": lambda: app.publish("alice", "ordinary post"),
        "own_post": lambda: ours,
    }
    app.exempt = summons == "exempt"
    target = targets[summons]()
    answer = x.post({"text": "thanks!", "reply": {"in_reply_to_tweet_id": target}})
    assert answer.status_code == 201
    assert [p.id for p in app.replies_to(target)] == [answer.json()["data"]["id"]]


def test_reply_to_a_deleted_or_unknown_post_is_refused(app, x):
    target = app.publish("alice", "hi @replyguy")
    app.delete(target)
    for post_id in (target, "12345"):
        answer = x.post({"text": "hello", "reply": {"in_reply_to_tweet_id": post_id}})
        assert answer.status_code == 403
        assert answer.json()["detail"] == (
            "You attempted to reply to a Tweet that is deleted or not visible to you."
        )


def test_duplicate_content_is_refused_with_xs_body(x):
    assert x.post({"text": "same words"}).status_code == 201
    again = x.post({"text": "same words"})
    assert again.status_code == 403
    assert again.json() == DUPLICATE


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("a" * 280, 201),
        ("a" * 281, 400),
        ("日" * 140, 201),  # CJK weighs 2
        ("日" * 141, 400),
        ("see https://example.com/" + "x" * 300 + " " + "b" * 250, 201),  # a URL weighs 23
        ("", 400),
    ],
    ids=["280", "281", "cjk-140", "cjk-141", "url", "empty"],
)
def test_text_length_is_xs_weighted_count(x, text, status):
    assert x.post({"text": text}).status_code == status


def test_delete_tweet(app, x):
    ours = x.post({"text": "regrets"}).json()["data"]["id"]
    theirs = app.publish("alice", "not yours")
    answer = x.delete(ours)
    assert (answer.status_code, answer.json()) == (200, {"data": {"deleted": True}})
    assert app.posts_by("replyguy") == []
    assert x.delete(ours).status_code == 404
    assert x.delete(theirs).status_code == 403


# --- rate limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "auth", "limit"),
    [
        ("POST", "/2/tweets", "user", 100),
        ("GET", "/2/users/{alice}/tweets", "user", 900),
        ("GET", "/2/users/{alice}/mentions", "user", 300),
        ("GET", "/2/tweets/search/recent?query=hi", "user", 300),
        ("GET", "/2/tweets/search/recent?query=hi", "app", 450),
        ("GET", "/2/users/by/username/alice", "user", 900),
        ("GET", "/2/users/by?usernames=alice", "app", 900),
        ("GET", "/2/tweets/{post}", "user", 900),
        ("GET", "/2/tweets/{post}", "app", 450),
    ],
)
def test_every_answer_carries_the_references_rate_limits(app, x, clock, method, path, auth, limit):
    alice = app.add_user("alice")
    post = app.publish("alice", "a post")
    body = {"json": {"text": "hi"}} if method == "POST" else {}
    answer = x.request(method, path.format(alice=alice, post=post), auth, **body)
    assert answer.ok
    assert answer.headers["x-rate-limit-limit"] == str(limit)
    assert answer.headers["x-rate-limit-remaining"] == str(limit - 1)
    assert answer.headers["x-rate-limit-reset"] == str(int(clock.now) + 900)
    assert "retry-after" not in answer.headers  # X sends none


def test_create_tweet_also_reports_the_apps_24_hour_cap(x, clock):
    answer = x.post({"text": "hi"})
    assert answer.headers["x-app-limit-24hour-limit"] == "10000"
    assert answer.headers["x-app-limit-24hour-remaining"] == "9999"
    assert answer.headers["x-app-limit-24hour-reset"] == str(int(clock.now) + 86400)


def test_a_spent_window_answers_429_until_its_reset(app, x, clock):
    alice = app.add_user("alice")
    app.set_limit("user_tweets", 3)
    remaining = [
        x.get(f"/2/users/{alice}/tweets").headers["x-rate-limit-remaining"] for _ in range(3)
    ]
    assert remaining == ["2", "1", "0"]

    refused = x.get(f"/2/users/{alice}/tweets")
    assert refused.status_code == 429
    assert refused.json() == TOO_MANY
    reset = int(refused.headers["x-rate-limit-reset"])
    assert reset == int(clock.now) + 900
    assert refused.headers["x-rate-limit-remaining"] == "0"

    clock.advance(reset - clock.now - 1)
    assert x.get(f"/2/users/{alice}/tweets").status_code == 429
    clock.advance(1)
    again = x.get(f"/2/users/{alice}/tweets")
    assert again.status_code == 200
    assert again.headers["x-rate-limit-remaining"] == "2"


def test_windows_are_kept_per_token(app, x):
    app.set_limit("search_recent", 1)
    assert x.get("/2/tweets/search/recent", auth="app", query="a").status_code == 200
    assert x.get("/2/tweets/search/recent", auth="app", query="a").status_code == 429
    assert x.get("/2/tweets/search/recent", auth="user", query="a").status_code == 200


def test_injected_429_carries_the_reset(app, x, clock):
    app.faults.add("search_recent", "error", status=429, reset_in=120, times=1)
    answer = x.get("/2/tweets/search/recent", query="a")
    assert answer.status_code == 429
    assert answer.json() == TOO_MANY
    assert answer.headers["x-rate-limit-reset"] == str(int(clock.now) + 120)


def test_injected_usage_cap_is_xs_problem(app, x):
    app.faults.add("user_tweets", "error", status=429, usage_cap=True)
    answer = x.get(f"/2/users/{OUR_USER_ID}/tweets")
    assert answer.status_code == 429
    body = answer.json()
    assert body["type"] == "https://api.twitter.com/2/problems/usage-capped"
    assert body["title"] == "UsageCapExceeded"
    assert body["period"] == "Monthly"


@pytest.mark.parametrize(
    ("status", "title"), [(500, "Internal Server Error"), (503, "Service Unavailable")]
)
def test_injected_server_errors_are_problems(app, x, status, title):
    app.faults.add("create_tweet", "error", status=status)
    answer = x.post({"text": "hi"})
    assert answer.status_code == status
    assert answer.json() == {
        "title": title,
        "detail": title,
        "type": "about:blank",
        "status": status,
    }


def test_an_injected_html_404_carries_no_json(app, x):
    app.faults.add("create_tweet", "html", status=404)  # a proxy's page, not X's answer
    answer = x.post({"text": "hi"})
    assert answer.status_code == 404
    assert answer.headers["Content-Type"] == "text/html"
    with pytest.raises(requests.exceptions.JSONDecodeError):
        answer.json()


# --- refused setups ---------------------------------------------------------------------------


def test_a_read_only_app_may_read_but_not_write(app, x):
    ours = x.post({"text": "before"}).json()["data"]["id"]
    app.read_only = True
    for answer in (x.post({"text": "hello"}), x.delete(ours)):
        assert answer.status_code == 403
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json() == READ_ONLY
    assert [p.text for p in app.posts_by("replyguy")] == ["before"]
    assert x.get("/2/users/me", auth="user").status_code == 200


@pytest.mark.parametrize(("state", "body"), [("suspended", SUSPENDED), ("locked", LOCKED)])
def test_a_refused_account_gets_xs_answer_on_every_user_context_call(app, x, state, body):
    app.account_state = state
    for answer in (x.get("/2/users/me", auth="user"), x.post({"text": "hello"})):
        assert (answer.status_code, answer.json()) == (403, body)
    assert app.posts_by("replyguy") == []
    assert x.get("/2/users/by/username/replyguy", auth="app").status_code == 200  # no account


def test_an_unknown_account_state_is_refused(app):
    with pytest.raises(ValueError, match="unknown account state"):
        app.account_state = "banned"


def test_an_app_outside_a_project_is_client_forbidden(app, x):
    app.enrolled = False
    for auth in ("app", "user"):
        answer = x.get("/2/tweets/search/recent", auth=auth, query="hi")
        assert answer.status_code == 403
        body = answer.json()
        assert body["type"] == PROBLEMS + "client-forbidden"
        assert body["title"] == "Client Forbidden"
        assert body["reason"] == "client-not-enrolled"


def test_a_route_may_be_made_user_context_only(app, x):
    app.user_context_only = {"search_recent"}
    answer = x.get("/2/tweets/search/recent", auth="app", query="hi")
    assert answer.status_code == 403
    assert answer.json()["type"] == PROBLEMS + "unsupported-authentication"
    assert x.get("/2/tweets/search/recent", auth="user", query="hi").status_code == 200
    assert x.get("/2/users/by/username/replyguy", auth="app").status_code == 200


def test_switches_are_set_shown_and_reset_over_the_control_api(app, x):
    switches = {
        "read_only": True,
        "account_state": "locked",
        "enrolled": False,
        "user_context_only": ["search_recent"],
    }
    assert requests.post(f"{x.url}/_sandbox/seed", json=switches, timeout=5).ok
    state = requests.get(f"{x.url}/_sandbox/state", timeout=5).json()
    assert {name: state[name] for name in switches} == switches
    assert (app.read_only, app.account_state, app.enrolled) == (True, "locked", False)
    assert app.user_context_only == {"search_recent"}

    assert requests.post(f"{x.url}/_sandbox/reset", timeout=5).ok
    state = requests.get(f"{x.url}/_sandbox/state", timeout=5).json()
    assert {name: state[name] for name in switches} == {
        "read_only": False,
        "account_state": "active",
        "enrolled": True,
        "user_context_only": [],
    }


# --- read accounting ---------------------------------------------------------------------------


def test_posts_returned_are_counted_per_route(app, x):
    alice = app.add_user("alice")
    ids = [app.publish("alice", f"hello {n} @replyguy") for n in range(7)]
    app.set_limit("search_recent", 1)
    x.get(f"/2/users/{alice}/tweets", max_results=5)
    x.get(f"/2/users/{alice}/tweets", since_id=ids[-1])  # nothing new: nothing read
    x.get(f"/2/users/{OUR_USER_ID}/mentions", auth="user")
    x.get("/2/tweets/search/recent", query="hello", max_results=10)
    x.get(f"/2/tweets/{ids[0]}")
    x.get("/2/tweets/12345")  # not found: nothing read
    assert x.get("/2/tweets/search/recent", query="hello").status_code == 429

    expected = {"user_tweets": 5, "user_mentions": 7, "search_recent": 7, "tweet_lookup": 1}
    assert app.posts_returned == expected
    assert requests.get(f"{x.url}/_sandbox/state", timeout=5).json()["posts_returned"] == (expected)
    app.reset()
    assert app.posts_returned == {}


# --- state ---------------------------------------------------------------------------------------


def test_ids_are_snowflakes_growing_with_the_clock(app, clock):
    first = app.publish("alice", "one")
    clock.advance(3600)
    second = app.publish("alice", "two")
    epoch_ms = 1288834974657
    assert ((int(second) >> 22) + epoch_ms) / 1000 == pytest.approx(clock.now, abs=0.002)
    assert int(second) > int(first)
    assert len(second) == 19


def test_scheduled_posts_appear_as_time_passes(app, x, clock):
    alice = app.add_user("alice")
    app.schedule_posts("alice", ["one", "two", "three"], every_seconds=600)
    assert x.get(f"/2/users/{alice}/tweets").json() == {"meta": {"result_count": 0}}
    clock.advance(1250)
    assert [p["text"] for p in x.get(f"/2/users/{alice}/tweets").json()["data"]] == ["two", "one"]
    clock.advance(10_000)
    posts = app.posts_by("alice")
    assert [p.text for p in posts] == ["three", "two", "one"]
    assert posts[0].created_at == clock.now - 10_000 - 1250 + 1800


def test_snapshot_seeds_an_identical_world_and_reset_forgets_it(app, clock):
    app.exempt = True
    app.read_only = True
    app.account_state = "suspended"
    target = app.publish("alice", "hello @replyguy")
    app.publish("replyguy", "hi", reply_to=target)
    app.delete(app.publish("bob", "unrelated"))
    app.set_limit("create_tweet", 3)
    app.schedule_posts("carol", ["later", "much later"], every_seconds=60)
    clock.advance(90)
    state = app.snapshot()
    assert [p["text"] for p in state["posts"]] == ["later", "hi", "hello @replyguy"]

    other = XApp(clock=clock)
    other.seed_state(state)
    assert other.snapshot() == state

    app.reset()
    after = app.snapshot()
    assert [u["username"] for u in after["users"]] == [OUR_USERNAME]
    assert after["posts"] == []
    assert after["exempt"] is False
    assert (after["read_only"], after["account_state"]) == (False, "active")


def test_text_is_kept_as_posted_even_nul_and_lone_surrogates(app, x):
    alice = app.add_user("alice")
    app.publish("alice", "nul\x00 and \ud800")
    answer = x.get(f"/2/users/{alice}/tweets")
    assert '"nul\\u0000 and \\ud800"' in answer.text  # JSON escapes, as X sends them
    assert answer.json()["data"][0]["text"] == "nul\x00 and \ud800"


def test_control_api_seeds_and_reads_state(x):
    seed = {
        "users": [{"username": "carol", "name": "Carol"}],
        "posts": [{"author": "carol", "text": "seeded @replyguy"}],
    }
    assert requests.post(f"{x.url}/_sandbox/seed", json=seed, timeout=5).ok
    state = requests.get(f"{x.url}/_sandbox/state", timeout=5).json()
    assert [p["text"] for p in state["posts"]] == ["seeded @replyguy"]
    mentions = x.get(f"/2/users/{OUR_USER_ID}/mentions").json()
    assert mentions["data"][0]["text"] == "seeded @replyguy"


# --- eventual consistency ---------------------------------------------------------------------


def test_timelines_and_search_trail_writes_by_the_lag_a_lookup_does_not(app, x, clock):
    app.timeline_lag = 5.0
    app.add_user("alice")
    before = app.publish("alice", "early @replyguy chaos question")
    clock.advance(10)
    mention = app.publish("alice", "late @replyguy chaos question")
    created = x.post({"text": "our fresh post"}).json()["data"]["id"]

    def ids(path: str, auth: str = "user", **params) -> list[str]:
        return [p["id"] for p in x.get(path, auth=auth, **params).json().get("data", [])]

    # Created, answered, and found by id at once; not yet on a timeline or in search.
    assert x.get(f"/2/tweets/{created}").json()["data"]["id"] == created
    assert ids(f"/2/users/{OUR_USER_ID}/tweets") == []
    assert ids(f"/2/users/{OUR_USER_ID}/mentions") == [before]
    assert ids("/2/tweets/search/recent", auth="app", query="chaos") == [before]
    clock.advance(4.9)
    assert ids(f"/2/users/{OUR_USER_ID}/tweets") == []
    clock.advance(0.1)  # exactly the lag: shown
    assert ids(f"/2/users/{OUR_USER_ID}/tweets") == [created]
    assert ids(f"/2/users/{OUR_USER_ID}/mentions") == [mention, before]
    assert ids("/2/tweets/search/recent", auth="app", query="chaos") == [mention, before]


def test_timeline_lag_is_seeded_shown_and_reset(app, x):
    assert requests.post(f"{x.url}/_sandbox/seed", json={"timeline_lag": 3}, timeout=5).ok
    assert requests.get(f"{x.url}/_sandbox/state", timeout=5).json()["timeline_lag"] == 3.0
    with pytest.raises(ValueError, match="timeline_lag"):
        app.seed_state({"timeline_lag": -1})
    app.reset()
    assert app.timeline_lag == 0.0
