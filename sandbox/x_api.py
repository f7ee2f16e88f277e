"""A stand-in for the X API v2 that tweepy 4.17's ``Client`` cannot tell from the real one.

Routes (relative to the server root) and their names, which are also the endpoint
names for ``app.faults`` and ``app.set_limit``:

============================  ================================  ===========================
route name                    request                           auth
============================  ================================  ===========================
``user_by_username``          GET /2/users/by/username/{name}   bearer or OAuth 1.0a
``users_by``                  GET /2/users/by?usernames=a,b     bearer or OAuth 1.0a
``me``                        GET /2/users/me                   OAuth 1.0a only
``user_tweets``               GET /2/users/{id}/tweets          bearer or OAuth 1.0a
``user_mentions``             GET /2/users/{id}/mentions        bearer or OAuth 1.0a
``search_recent``             GET /2/tweets/search/recent       bearer or OAuth 1.0a
``tweet_lookup``              GET /2/tweets/{id}                bearer or OAuth 1.0a
``create_tweet``              POST /2/tweets                    OAuth 1.0a only
``delete_tweet``              DELETE /2/tweets/{id}             OAuth 1.0a only
============================  ================================  ===========================

What it holds to, as X does in 2026:

- Auth: ``Authorization: Bearer <token>`` or OAuth 1.0a (consumer key, token and the
  HMAC-SHA1 signature are checked; tweepy signs ``https://api.twitter.com/...`` and the
  client rewrites the host afterwards, so that URL is accepted as well as the sandbox's
  own). Anything else is a 401 problem. App-only auth on a user-context route is X's
  403 ``unsupported-authentication`` problem.
- Rate limits: fixed 15-minute windows per endpoint and token (``x-rate-limit-limit``,
  ``-remaining``, ``-reset`` on every authenticated answer), X's 429 body when spent,
  plus ``POST /2/tweets``'s 24-hour app cap (``x-app-limit-24hour-*``). ``app.clock``
  (default ``time.time``) drives windows, post times, ids and scheduled posts, so tests
  move time instead of sleeping.
- Timelines and search: newest first, ``since_id``/``until_id`` exclusive,
  ``max_results`` bounds (5..100; search 10..100), ``exclude``, ``tweet.fields`` (only
  requested fields beyond ``id``/``text``; ``edit_history_tweet_ids`` always),
  ``expansions``, opaque ``next_token``s, and ``{"meta": {"result_count": 0}}`` when
  nothing matches. Recent search covers 7 days and understands plain terms (AND-ed),
  "quoted phrases", ``from:``, ``to:``, ``@user``, ``#tag``, ``is:retweet``, ``is:reply``,
  ``is:quote``, ``conversation_id:``, ``-`` negation, ``OR`` and parentheses.
- Post lookup: ``{"data": ...}`` for a post that exists; X's 200 with only a
  ``resource-not-found`` error for a deleted or unknown one.
- Posting: the 2026 reply rule (a reply needs the target to @mention our account or
  quote one of our posts, unless ``app.exempt``), X's 403 wording for rule refusals,
  deleted targets and duplicate content, and a 400 past 280 weighted characters.

Switches for refused setups, each answered with X's own body (all reset by ``reset()``,
shown by ``snapshot()`` and settable through ``seed_state()``, i.e. ``/_sandbox/seed``):

- ``app.read_only = True``: the app has Read permission only, so writes (``POST`` and
  ``DELETE /2/tweets``) in user context answer the 403 ``oauth1-permissions`` problem;
- ``app.account_state = "suspended" | "locked"`` (default ``"active"``): every
  user-context call answers X's v1-style 403 for it (code 64 or 326); bearer calls,
  which act as no account, go on working;
- ``app.enrolled = False``: the app is not attached to a Project, so every call answers
  the 403 ``client-forbidden`` problem;
- ``app.user_context_only = {"search_recent", ...}``: routes that, as X sometimes
  decides, refuse app-only (bearer) auth with the 403 ``unsupported-authentication``
  problem, like ``me`` and the writes always do.

Eventual consistency: ``app.timeline_lag = 5.0`` (seconds, default 0) makes timelines
and search (``user_tweets``, ``user_mentions``, ``search_recent``) trail writes as X's
do: a post shows there only once ``timeline_lag`` seconds of ``app.clock`` have passed
since it was created. Every post trails by the same time, so posts still appear in id
order. ``POST /2/tweets`` answers at once and a lookup by id (``tweet_lookup``) finds
the post at once, as on X.

Read accounting: ``app.posts_returned`` counts the posts each route put in ``data``
(``{"search_recent": 120, ...}``), for a benchmark's posts-read-per-pass figure; it is
in ``snapshot()`` and zeroed by ``reset()`` (never seeded).

Like X's composer, ``publish()`` starts a reply from another account with ``@author``
when the text does not already mention them, so the author sees it in their mentions.
Posts created through ``POST /2/tweets`` are stored exactly as sent.

Ids are snowflake-like: numeric strings that grow with ``app.clock``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote

from twitter_text import parse_tweet

from sandbox.faults import Fault
from sandbox.http import App, Request, Response, json_response

__all__ = [
    "ACCOUNT_STATES",
    "DEFAULT_LIMITS",
    "OUR_USERNAME",
    "OUR_USER_ID",
    "SANDBOX_CREDENTIALS",
    "XApp",
    "XPost",
    "XUser",
]

OUR_USER_ID = "1790000000000000001"
OUR_USERNAME = "replyguy"

# Sandbox-only values. tweepy reads the user id from the access token's prefix.
SANDBOX_CREDENTIALS: dict[str, str] = {
    "bearer_token": "sandbox-bearer-token",
    "consumer_key": "sandbox-consumer-key",
    "consumer_secret": "sandbox-consumer-secret",
    "access_token": f"{OUR_USER_ID}-sandboxAccessToken",
    "access_token_secret": "sandbox-access-token-secret",
}

WINDOW = 15 * 60
DAY = 24 * 60 * 60
SEARCH_DAYS = 7
MAX_WEIGHTED_LENGTH = 280
TWEPOCH_MS = 1288834974657  # X's snowflake epoch

# Requests per 15-minute window, per endpoint, for user-context (OAuth 1.0a) and
# app-only (bearer) callers: the reference's figures; /2/users/me and DELETE from X's table.
DEFAULT_LIMITS: dict[str, dict[str, int]] = {
    "user_by_username": {"user": 900, "app": 900},
    "users_by": {"user": 900, "app": 900},
    "me": {"user": 75},
    "user_tweets": {"user": 900, "app": 900},
    "user_mentions": {"user": 300, "app": 300},
    "search_recent": {"user": 300, "app": 450},
    "tweet_lookup": {"user": 900, "app": 450},
    "create_tweet": {"user": 100},
    "delete_tweet": {"user": 50},
}
CREATE_TWEET_APP_PER_DAY = 10_000

PROBLEMS = "https://api.twitter.com/2/problems/"
PROBLEM_JSON = "application/problem+json"
JSON = "application/json; charset=utf-8"

REPLY_NOT_ALLOWED = (
    "Reply to this conversation is not allowed because you have not been mentioned or "
    "otherwise engaged by the author of the post you are replying to."
)
REPLY_TARGET_GONE = "You attempted to reply to a Tweet that is deleted or not visible to you."
QUOTE_TARGET_GONE = "You attempted to quote a Tweet that is deleted or not visible to you."
DUPLICATE = "You are not allowed to create a Tweet with duplicate content."

ACCOUNT_STATES = ("active", "suspended", "locked")
# X's v1-style answers to a call made as a refused account.
ACCOUNT_REFUSALS: dict[str, dict[str, Any]] = {
    "suspended": {
        "code": 64,
        "message": "Your account is suspended and is not permitted to access this feature",
    },
    "locked": {
        "code": 326,
        "message": "To protect our users from spam and other malicious activity, this account "
        "is temporarily locked. Please log in to https://twitter.com to unlock your account.",
    },
}
READ_ONLY = (
    "Your client app is not configured with the appropriate oauth1 app permissions for "
    "this endpoint."
)
NOT_ENROLLED = (
    "When authenticating requests to the Twitter API v2 endpoints, you must use keys and "
    "tokens from a Twitter developer App that is attached to a Project. You can create a "
    "project via the developer portal."
)
SANDBOX_CLIENT_ID = "29000001"

TWEET_FIELDS = {
    "attachments",
    "author_id",
    "context_annotations",
    "conversation_id",
    "created_at",
    "edit_controls",
    "edit_history_tweet_ids",
    "entities",
    "id",
    "in_reply_to_user_id",
    "lang",
    "note_tweet",
    "possibly_sensitive",
    "public_metrics",
    "referenced_tweets",
    "reply_settings",
    "source",
    "text",
    "withheld",
}
USER_FIELDS = {
    "created_at",
    "description",
    "id",
    "location",
    "name",
    "pinned_tweet_id",
    "profile_image_url",
    "protected",
    "public_metrics",
    "url",
    "username",
    "verified",
}
TWEET_EXPANSIONS = {
    "author_id",
    "referenced_tweets.id",
    "referenced_tweets.id.author_id",
    "in_reply_to_user_id",
    "entities.mentions.username",
}
USER_EXPANSIONS = {"pinned_tweet_id"}

USERNAME = re.compile(r"^\w{1,15}$", re.ASCII)
MENTION = re.compile(r"(?<![\w@])@(\w{1,15})", re.ASCII)
HASHTAG = re.compile(r"(?<![\w#])#(\w+)")


@dataclass
class XUser:
    id: str
    username: str
    name: str
    created_at: float
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class XPost:
    id: str
    author_id: str
    text: str
    created_at: float
    conversation_id: str
    reply_to: str | None = None
    reply_to_user_id: str | None = None
    quote_of: str | None = None
    retweet_of: str | None = None
    mentions: list[dict[str, Any]] = field(default_factory=list)  # entities.mentions
    hashtags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mentioned(self) -> set[str]:
        return {m["username"].lower() for m in self.mentions}

    def references(self) -> list[dict[str, str]]:
        refs = []
        if self.retweet_of:
            refs.append({"type": "retweeted", "id": self.retweet_of})
        if self.quote_of:
            refs.append({"type": "quoted", "id": self.quote_of})
        if self.reply_to:
            refs.append({"type": "replied_to", "id": self.reply_to})
        return refs

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = _iso(self.created_at)
        return data


@dataclass
class _Caller:
    kind: str  # "user" (OAuth 1.0a) or "app" (bearer)
    token: str  # whose window a request spends
    user_id: str | None = None


@dataclass
class _Window:
    reset: float
    used: int = 0


@dataclass
class _Schedule:
    username: str
    texts: list[str]
    every: float
    start: float
    published: int = 0


class _Refusal(Exception):
    """Stop handling a request and answer with ``response``."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


Handler = Callable[..., Response]


class XApp(App):
    name = "x"

    def __init__(self, *, seed: int = 0, clock: Callable[[], float] = time.time) -> None:
        super().__init__(seed=seed)
        self.clock = clock
        self.credentials = dict(SANDBOX_CREDENTIALS)
        self.exempt = False  # Enterprise: the 2026 reply rule does not apply
        self.read_only = False  # the app's permissions: Read only refuses writes
        self.enrolled = True  # the app is attached to a Project
        self.user_context_only: set[str] = set()  # routes refusing bearer auth besides
        self.timeline_lag = 0.0  # seconds a new post is missing from timelines and search
        self._account_state = "active"
        self.posts_returned: dict[str, int] = {}  # posts put in ``data``, per route
        self.users: dict[str, XUser] = {}
        self.posts: dict[str, XPost] = {}
        self.deleted: dict[str, XPost] = {}
        self.limits: dict[str, dict[str, tuple[int, float]]] = {}
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._schedules: list[_Schedule] = []
        self._last_id = 0
        self._start()
        self._routes_x()

    # --- Python API for tests and demos ------------------------------------------------

    @property
    def account_state(self) -> str:
        """Our account as X sees it: ``active``, ``suspended`` or ``locked``."""
        return self._account_state

    @account_state.setter
    def account_state(self, state: str) -> None:
        if state not in ACCOUNT_STATES:
            raise ValueError(f"unknown account state {state!r}: one of {', '.join(ACCOUNT_STATES)}")
        self._account_state = state

    def reset(self) -> None:
        """Back to just our account, default limits, no faults, the rule enforced, the
        account active, the app read-write and enrolled, no posts counted as read, and
        timelines that show a post as soon as it is created."""
        super().reset()
        with self.lock:
            self.credentials = dict(SANDBOX_CREDENTIALS)
            self._start()

    def add_user(
        self, username: str, name: str | None = None, *, user_id: str | None = None
    ) -> str:
        """Create an account (or return the id of the one with that username)."""
        with self.lock:
            existing = self._user_named(username)
            if existing is not None:
                return existing.id
            if not USERNAME.match(username):
                raise ValueError(f"{username!r} is not a valid X username")
            uid = user_id or self._new_id(self.clock())
            self.users[uid] = XUser(uid, username, name or username, self.clock())
            return uid

    def publish(
        self,
        username: str,
        text: str,
        *,
        reply_to: str | None = None,
        quote_of: str | None = None,
        retweet_of: str | None = None,
        created_at: datetime | float | None = None,
    ) -> str:
        """Post as ``username`` (created if unknown), without any API rule; returns the id."""
        with self.lock:
            self._materialize()  # scheduled posts due by now come first, as their ids say
            return self._publish(username, text, reply_to, quote_of, retweet_of, created_at)

    def _publish(
        self,
        username: str,
        text: str,
        reply_to: str | None,
        quote_of: str | None,
        retweet_of: str | None,
        created_at: datetime | float | None,
    ) -> str:
        with self.lock:
            author = self.users[self.add_user(username)]
            when = self.clock() if created_at is None else _timestamp(created_at)
            if retweet_of is not None:
                original = self._post(retweet_of)
                text = f"RT @{self.users[original.author_id].username}: {original.text}"
            elif reply_to is not None and author.id != OUR_USER_ID:
                target_author = self.users[self._post(reply_to).author_id]
                if target_author.username.lower() not in _mentioned(text):
                    text = f"@{target_author.username} {text}"
            return self._store(author.id, text, when, reply_to, quote_of, retweet_of).id

    def delete(self, post_id: str) -> None:
        with self.lock:
            self.deleted[post_id] = self.posts.pop(post_id)

    def replies_to(self, post_id: str) -> list[XPost]:
        """Our posts that reply to ``post_id``, newest first."""
        with self.lock:
            self._materialize()
            return [
                p
                for p in self._newest_first(self.posts.values())
                if p.reply_to == post_id and p.author_id == OUR_USER_ID
            ]

    def posts_by(self, username: str) -> list[XPost]:
        with self.lock:
            self._materialize()
            user = self._user_named(username)
            if user is None:
                return []
            return [p for p in self._newest_first(self.posts.values()) if p.author_id == user.id]

    def schedule_posts(self, username: str, texts: Iterable[str], every_seconds: float) -> None:
        """Have ``username`` post ``texts`` one every ``every_seconds`` from now.

        Posts appear lazily: whenever anything reads, every post due by ``app.clock``
        is published with its scheduled time. No threads.
        """
        if every_seconds <= 0:
            raise ValueError("every_seconds must be positive")
        with self.lock:
            self.add_user(username)
            self._schedules.append(_Schedule(username, list(texts), every_seconds, self.clock()))

    def set_limit(
        self, endpoint: str, limit: int, *, window: float = WINDOW, scope: str | None = None
    ) -> None:
        """Change an endpoint's per-window limit (both scopes unless ``scope`` names one)."""
        if endpoint not in DEFAULT_LIMITS:
            raise KeyError(f"unknown endpoint {endpoint!r}: one of {', '.join(DEFAULT_LIMITS)}")
        with self.lock:
            scopes = [scope] if scope else list(self.limits[endpoint])
            for name in scopes:
                self.limits[endpoint][name] = (limit, window)
            self._windows = {k: w for k, w in self._windows.items() if k[0] != endpoint}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            self._materialize()
            return {
                "our_user_id": OUR_USER_ID,
                "our_username": self.users[OUR_USER_ID].username,
                "exempt": self.exempt,
                "read_only": self.read_only,
                "account_state": self.account_state,
                "enrolled": self.enrolled,
                "user_context_only": sorted(self.user_context_only),
                "timeline_lag": self.timeline_lag,
                "now": _iso(self.clock()),
                "users": [u.to_dict() for u in self.users.values()],
                "posts": [p.to_dict() for p in self._newest_first(self.posts.values())],
                "deleted": [p.to_dict() for p in self._newest_first(self.deleted.values())],
                "schedules": [asdict(s) for s in self._schedules],
                "limits": {name: dict(scopes) for name, scopes in self.limits.items()},
                "posts_returned": dict(self.posts_returned),
            }

    def seed_state(self, data: dict[str, Any]) -> None:
        """Add users and posts; ``seed_state(snapshot())`` rebuilds the same world (its
        read counters stay as they are).

        ``{"users": [{"username", "name"?, "id"?}], "posts": [{"author" or "author_id",
        "text", "id"?, "reply_to"?, "quote_of"?, "retweet_of"?, "created_at"? (ISO or
        Unix seconds)}], "deleted"?: [posts], "exempt"?: bool, "read_only"?: bool,
        "account_state"?: "active" | "suspended" | "locked", "enrolled"?: bool,
        "user_context_only"?: [route], "timeline_lag"?: seconds, "schedules"?:
        [{"username", "texts", "every_seconds"}], "limits"?: {endpoint: limit}}``
        """
        with self.lock:
            for user in data.get("users", []):
                uid = self.add_user(user["username"], user.get("name"), user_id=user.get("id"))
                if user.get("created_at") is not None:
                    self.users[uid].created_at = _timestamp(user["created_at"])
                self.users[uid].description = user.get("description", "")
            gone = {str(p.get("id")) for p in data.get("deleted", [])}
            posts = [*data.get("posts", []), *data.get("deleted", [])]
            for post in _parents_first(posts):
                stored = self._seed_post(post)
                if stored is not None and stored.id in gone:
                    self.deleted[stored.id] = self.posts.pop(stored.id)
            if "exempt" in data:
                self.exempt = bool(data["exempt"])
            if "read_only" in data:
                self.read_only = bool(data["read_only"])
            if "account_state" in data:
                self.account_state = str(data["account_state"])
            if "enrolled" in data:
                self.enrolled = bool(data["enrolled"])
            if "user_context_only" in data:
                self.user_context_only = set(data["user_context_only"])
            if "timeline_lag" in data:
                lag = float(data["timeline_lag"])
                if not 0 <= lag < math.inf:
                    raise ValueError("timeline_lag must be a number of seconds, 0 or more")
                self.timeline_lag = lag
            for plan in data.get("schedules", []):
                every = plan.get("every_seconds", plan.get("every"))
                self.schedule_posts(plan["username"], plan["texts"], every)
                schedule = self._schedules[-1]
                schedule.start = plan.get("start", schedule.start)
                schedule.published = plan.get("published", 0)
            for endpoint, limits in (data.get("limits") or {}).items():
                if isinstance(limits, int):
                    self.set_limit(endpoint, limits)
                    continue
                for scope, (limit, window) in limits.items():
                    self.set_limit(endpoint, limit, window=window, scope=scope)

    # --- errors in X's shape -------------------------------------------------------------

    def error_response(self, status: int, fault: Fault) -> Response:
        if status == 429 and fault.usage_cap:
            return _problem(
                429,
                "UsageCapExceeded",
                "Usage cap exceeded: Monthly product cap",
                PROBLEMS + "usage-capped",
                period="Monthly",
                scope="Product",
            )
        if status == 429:
            reset = math.ceil(self.clock() + fault.reset_in)
            limit = max((n for n, _ in self.limits.get(fault.endpoint, {}).values()), default=0)
            response = _too_many_requests()
            response.headers.update(_limit_headers("x-rate-limit", limit, 0, reset))
            return response
        if status == 404 and fault.endpoint == "*":
            # An unknown route on api.twitter.com still answers in the v1 shape.
            body = {"errors": [{"message": "Sorry, that page does not exist", "code": 34}]}
            return json_response(body, 404, content_type=JSON)
        if status == 400:
            return _invalid_request("Injected bad request")
        if status == 401:
            return _unauthorized()
        title = "Not Found Error" if status == 404 else _phrase(status)
        return _problem(status, title, title)

    # --- state ---------------------------------------------------------------------------

    def _start(self) -> None:
        self.exempt = False
        self.read_only = False
        self.enrolled = True
        self.user_context_only = set()
        self.timeline_lag = 0.0
        self._account_state = "active"
        self.posts_returned = {}
        self.users = {}
        self.posts = {}
        self.deleted = {}
        self._schedules = []
        self._windows = {}
        self.limits = {
            name: {scope: (limit, WINDOW) for scope, limit in scopes.items()}
            for name, scopes in DEFAULT_LIMITS.items()
        }
        self.users[OUR_USER_ID] = XUser(OUR_USER_ID, OUR_USERNAME, "Reply Guy", self.clock())

    def _new_id(self, when: float) -> str:
        """A snowflake-like id: time-ordered, unique, never smaller than the last one
        handed out for "now"."""
        base = (int(when * 1000) - TWEPOCH_MS) << 22
        if when >= self.clock() - 1:
            base = max(base, self._last_id + 1)
        while str(base) in self.posts or str(base) in self.deleted or str(base) in self.users:
            base += 1
        self._last_id = max(self._last_id, base)
        return str(base)

    def _store(
        self,
        author_id: str,
        text: str,
        when: float,
        reply_to: str | None = None,
        quote_of: str | None = None,
        retweet_of: str | None = None,
        post_id: str | None = None,
    ) -> XPost:
        pid = post_id or self._new_id(when)
        target = (self.posts.get(reply_to) or self.deleted.get(reply_to)) if reply_to else None
        post = XPost(
            id=pid,
            author_id=author_id,
            text=text,
            created_at=when,
            conversation_id=target.conversation_id if target else pid,
            reply_to=reply_to,
            reply_to_user_id=target.author_id if target else None,
            quote_of=quote_of,
            retweet_of=retweet_of,
            mentions=self._mention_entities(text),
            hashtags=[
                {"start": m.start(), "end": m.end(), "tag": m.group(1)}
                for m in HASHTAG.finditer(text)
            ],
        )
        self.posts[pid] = post
        return post

    def _seed_post(self, post: dict[str, Any]) -> XPost | None:
        author_id = post.get("author_id") or self.add_user(post["author"])
        if author_id not in self.users:
            self.users[author_id] = XUser(author_id, f"user{author_id[-6:]}", "", self.clock())
        when = _timestamp(post["created_at"]) if post.get("created_at") else self.clock()
        pid = post.get("id")
        if pid is not None and (pid in self.posts or pid in self.deleted):
            return None
        stored = self._store(
            author_id,
            post["text"],
            when,
            post.get("reply_to"),
            post.get("quote_of"),
            post.get("retweet_of"),
            post_id=pid,
        )
        if pid is not None:
            self._last_id = max(self._last_id, int(pid))
        return stored

    def _mention_entities(self, text: str) -> list[dict[str, Any]]:
        entities = []
        for match in MENTION.finditer(text):
            entity: dict[str, Any] = {
                "start": match.start(),
                "end": match.end(),
                "username": match.group(1),
            }
            user = self._user_named(match.group(1))
            if user is not None:
                entity["id"] = user.id
            entities.append(entity)
        return entities

    def _user_named(self, username: str) -> XUser | None:
        wanted = username.lstrip("@").lower()
        return next((u for u in self.users.values() if u.username.lower() == wanted), None)

    def _post(self, post_id: str) -> XPost:
        try:
            return self.posts[post_id]
        except KeyError:
            raise KeyError(f"no post {post_id}") from None

    def _materialize(self) -> None:
        """Publish every scheduled post due by now, oldest first across schedules."""
        now = self.clock()
        due: list[tuple[float, str, str]] = []
        for s in self._schedules:
            count = min(len(s.texts), int((now - s.start) // s.every))
            for n in range(s.published, count):
                due.append((s.start + (n + 1) * s.every, s.username, s.texts[n]))
            s.published = max(s.published, count)
        for when, username, text in sorted(due):
            self._publish(username, text, None, None, None, when)

    @staticmethod
    def _newest_first(posts: Iterable[XPost]) -> list[XPost]:
        return sorted(posts, key=lambda p: int(p.id), reverse=True)

    # --- auth and rate limits ------------------------------------------------------------

    def _authenticate(self, request: Request) -> _Caller:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip(), self.credentials["bearer_token"]
        ):
            return _Caller("app", value.strip())
        if scheme.lower() == "oauth" and self._oauth_ok(request, _oauth_params(value)):
            return _Caller("user", self.credentials["access_token"], OUR_USER_ID)
        raise _Refusal(_unauthorized())

    def _oauth_ok(self, request: Request, oauth: dict[str, str]) -> bool:
        creds = self.credentials
        if oauth.get("oauth_consumer_key") != creds["consumer_key"]:
            return False
        if oauth.get("oauth_token") != creds["access_token"]:
            return False
        if oauth.get("oauth_signature_method", "HMAC-SHA1") != "HMAC-SHA1":
            return False
        params = [(k, v) for k, v in oauth.items() if k not in ("oauth_signature", "realm")]
        params += [(k, v) for k, values in request.query.items() for v in values]
        if "application/x-www-form-urlencoded" in request.headers.get("Content-Type", ""):
            params += [(k, str(v)) for k, v in request.params().items()]
        host = request.headers.get("Host", "")
        bases = ["https://api.twitter.com", "https://api.x.com", f"http://{host}"]
        given = oauth.get("oauth_signature", "")
        return any(
            hmac.compare_digest(
                given,
                _hmac_sha1(
                    request.method,
                    base + request.path,
                    params,
                    creds["consumer_secret"],
                    creds["access_token_secret"],
                ),
            )
            for base in bases
        )

    def _check_setup(self, caller: _Caller, *, write: bool) -> None:
        """Refuse, as X does, an app or account the switches say is not set up to call."""
        if not self.enrolled:
            raise _Refusal(_client_forbidden())
        if caller.kind != "user":
            return  # app-only auth acts as no account: its state does not matter
        if self.account_state != "active":
            body = {"errors": [ACCOUNT_REFUSALS[self.account_state]]}
            raise _Refusal(json_response(body, 403, content_type=JSON))
        if write and self.read_only:
            raise _Refusal(_problem(403, "Forbidden", READ_ONLY, PROBLEMS + "oauth1-permissions"))

    def _spend(self, endpoint: str, caller: _Caller) -> dict[str, str]:
        """Count this request against its windows; the headers to send, or a 429."""
        now = self.clock()
        limit, seconds = self.limits[endpoint][caller.kind]
        buckets = [("x-rate-limit", (endpoint, caller.kind, caller.token), limit, seconds)]
        if endpoint == "create_tweet":
            app_key = ("create_tweet/24h", "app", self.credentials["consumer_key"])
            buckets.append(("x-app-limit-24hour", app_key, CREATE_TWEET_APP_PER_DAY, DAY))
        windows = []
        for _, key, _, length in buckets:
            window = self._windows.get(key)
            if window is None or now >= window.reset:
                # Windows start on a whole second so the advertised reset is exact.
                window = self._windows[key] = _Window(reset=math.floor(now) + length)
            windows.append(window)
        spent = any(w.used >= b[2] for w, b in zip(windows, buckets, strict=True))
        headers: dict[str, str] = {}
        for window, (prefix, _, size, _) in zip(windows, buckets, strict=True):
            if not spent:
                window.used += 1
            headers.update(_limit_headers(prefix, size, max(0, size - window.used), window.reset))
        if spent:
            response = _too_many_requests()
            response.headers.update(headers)
            raise _Refusal(response)
        return headers

    # --- routes --------------------------------------------------------------------------

    def _endpoint(
        self,
        method: str,
        pattern: str,
        name: str,
        *,
        user_context: bool = False,
        write: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Register a handler behind auth, rate limits and scheduled-post materializing."""

        def register(handler: Handler) -> Handler:
            def serve(request: Request, **params: str) -> Response:
                with self.lock:
                    headers: dict[str, str] = {}
                    try:
                        caller = self._authenticate(request)
                        needs_user = user_context or name in self.user_context_only
                        if needs_user and caller.kind != "user":
                            raise _Refusal(_unsupported_auth())
                        self._check_setup(caller, write=write)
                        headers = self._spend(name, caller)
                        self._materialize()
                        response = handler(request, caller, **params)
                    except _Refusal as refusal:
                        response = refusal.response
                    response.headers = {**headers, **response.headers}
                    return response

            self.route(method, pattern, name=name)(serve)
            return handler

        return register

    def _routes_x(self) -> None:
        @self._endpoint("GET", "/2/users/by/username/{username}", "user_by_username")
        def user_by_username(request: Request, caller: _Caller, username: str) -> Response:
            _check_fields(request, tweet=False)
            if not USERNAME.match(username):
                raise _Refusal(
                    _invalid_request(
                        f"The `username` query parameter value [{username}] does not match "
                        "^[A-Za-z0-9_]{1,15}$",
                        "username",
                        username,
                    )
                )
            user = self._user_named(username)
            if user is None:
                return _data(None, errors=[_user_not_found("username", username)])
            return _data(self._render_user(user, request))

        @self._endpoint("GET", "/2/users/by", "users_by")
        def users_by(request: Request, caller: _Caller) -> Response:
            _check_fields(request, tweet=False)
            names = [n for n in (request.arg("usernames") or "").split(",") if n]
            if not names or len(names) > 100:
                raise _Refusal(
                    _invalid_request(
                        "The `usernames` query parameter must name 1 to 100 usernames",
                        "usernames",
                        request.arg("usernames") or "",
                    )
                )
            found, errors = [], []
            for name in names:
                user = self._user_named(name) if USERNAME.match(name) else None
                if user is None:
                    errors.append(_user_not_found("username", name))
                else:
                    found.append(self._render_user(user, request))
            return _data(found or None, errors=errors)

        @self._endpoint("GET", "/2/users/me", "me", user_context=True)
        def me(request: Request, caller: _Caller) -> Response:
            _check_fields(request, tweet=False)
            return _data(self._render_user(self.users[OUR_USER_ID], request))

        @self._endpoint("GET", "/2/users/{user_id}/tweets", "user_tweets")
        def user_tweets(request: Request, caller: _Caller, user_id: str) -> Response:
            user = self._timeline_owner(user_id)
            if isinstance(user, Response):
                return user
            exclude = _csv(request, "exclude", {"retweets", "replies"})
            posts = [p for p in self.posts.values() if p.author_id == user.id]

            def excluded(p: XPost) -> bool:
                return ("retweets" in exclude and bool(p.retweet_of)) or (
                    "replies" in exclude and bool(p.reply_to)
                )

            # As X does, ``exclude`` thins a page after it is cut: a page of retweets
            # comes back empty, with a ``next_token`` when older posts remain.
            return self._timeline(request, posts, "user_tweets", min_results=5, drop=excluded)

        @self._endpoint("GET", "/2/users/{user_id}/mentions", "user_mentions")
        def user_mentions(request: Request, caller: _Caller, user_id: str) -> Response:
            user = self._timeline_owner(user_id)
            if isinstance(user, Response):
                return user
            wanted = user.username.lower()
            posts = [p for p in self.posts.values() if wanted in p.mentioned and not p.retweet_of]
            return self._timeline(request, posts, "user_mentions", min_results=5)

        @self._endpoint("GET", "/2/tweets/search/recent", "search_recent")
        def search_recent(request: Request, caller: _Caller) -> Response:
            query = request.arg("query")
            if not query:
                raise _Refusal(
                    _invalid_request("The `query` query parameter can not be empty", "query", "")
                )
            if len(query) > 512:
                raise _Refusal(
                    _invalid_request("The `query` query parameter is too long", "query", query)
                )
            try:
                matches = _parse_query(query)
            except ValueError as exc:
                raise _Refusal(_invalid_request(str(exc), "query", query)) from None
            oldest = self.clock() - SEARCH_DAYS * DAY
            posts = [
                p
                for p in self.posts.values()
                if p.created_at >= oldest and matches(p, self._facts(p))
            ]
            return self._timeline(
                request, posts, "search_recent", min_results=10, cursor="next_token"
            )

        @self._endpoint("GET", "/2/tweets/{post_id}", "tweet_lookup")
        def tweet_lookup(request: Request, caller: _Caller, post_id: str) -> Response:
            _check_id("id", post_id)
            tweet_fields, user_fields, expansions = _check_fields(request, tweet=True)
            post = self.posts.get(post_id)
            if post is None:  # deleted or never posted: X cannot tell us which
                return _data(None, errors=[_tweet_not_found(post_id)])
            self._count_returned("tweet_lookup", 1)
            body: dict[str, Any] = {"data": self._render_post(post, tweet_fields)}
            includes = self._includes([post], tweet_fields, user_fields, expansions)
            if includes:
                body["includes"] = includes
            return json_response(body, content_type=JSON)

        @self._endpoint("POST", "/2/tweets", "create_tweet", user_context=True, write=True)
        def create_tweet(request: Request, caller: _Caller) -> Response:
            return self._create(request)

        @self._endpoint(
            "DELETE", "/2/tweets/{post_id}", "delete_tweet", user_context=True, write=True
        )
        def delete_tweet(request: Request, caller: _Caller, post_id: str) -> Response:
            _check_id("id", post_id)
            post = self.posts.get(post_id)
            if post is None:
                return _problem(
                    404,
                    "Not Found Error",
                    f"Could not find tweet with id: [{post_id}].",
                    PROBLEMS + "resource-not-found",
                )
            if post.author_id != caller.user_id:
                return _problem(403, "Forbidden", "You are not allowed to delete this Tweet.")
            self.delete(post_id)
            return _data({"deleted": True})

    # --- reads ---------------------------------------------------------------------------

    def _timeline_owner(self, user_id: str) -> XUser | Response:
        _check_id("id", user_id)
        user = self.users.get(user_id)
        if user is None:
            return _data(None, errors=[_user_not_found("id", user_id)])
        return user

    def _count_returned(self, route: str, count: int) -> None:
        self.posts_returned[route] = self.posts_returned.get(route, 0) + count

    def _timeline(
        self,
        request: Request,
        posts: list[XPost],
        route: str,
        *,
        min_results: int,
        cursor: str = "pagination_token",
        drop: Callable[[XPost], bool] | None = None,
    ) -> Response:
        tweet_fields, user_fields, expansions = _check_fields(request, tweet=True)
        max_results = _int_arg(request, "max_results", 10, min_results, 100)
        since_id = request.arg("since_id")
        until_id = request.arg("until_id")
        if since_id is not None:
            _check_id("since_id", since_id)
        if until_id is not None:
            _check_id("until_id", until_id)
        below = _decode_token(request, cursor)
        start_time = _time_arg(request, "start_time")
        end_time = _time_arg(request, "end_time")
        # What the timeline shows by now: it trails writes by ``timeline_lag``.
        shown_by = self.clock() - self.timeline_lag

        chosen = [
            p
            for p in self._newest_first(posts)
            if p.created_at <= shown_by
            and (since_id is None or int(p.id) > int(since_id))
            and (until_id is None or int(p.id) < int(until_id))
            and (below is None or int(p.id) < below)
            and (start_time is None or p.created_at >= start_time)
            and (end_time is None or p.created_at < end_time)
        ]
        cut, rest = chosen[:max_results], chosen[max_results:]
        page = [p for p in cut if not (drop and drop(p))]
        self._count_returned(route, len(page))
        token = {"next_token": _encode_token(cut[-1].id)} if rest else {}
        if not page:
            return json_response({"meta": {"result_count": 0, **token}}, content_type=JSON)
        meta: dict[str, Any] = {
            "newest_id": page[0].id,
            "oldest_id": page[-1].id,
            "result_count": len(page),
            **token,
        }
        body: dict[str, Any] = {"data": [self._render_post(p, tweet_fields) for p in page]}
        includes = self._includes(page, tweet_fields, user_fields, expansions)
        if includes:
            body["includes"] = includes
        body["meta"] = meta
        return json_response(body, content_type=JSON)

    def _includes(
        self,
        page: list[XPost],
        tweet_fields: set[str],
        user_fields: set[str],
        expansions: set[str],
    ) -> dict[str, Any]:
        user_ids: list[str] = []
        tweets: list[XPost] = []
        if "referenced_tweets.id" in expansions or "referenced_tweets.id.author_id" in expansions:
            for post in page:
                for ref in post.references():
                    target = self.posts.get(ref["id"])
                    if target is not None and target not in tweets:
                        tweets.append(target)
        if "author_id" in expansions:
            user_ids += [p.author_id for p in page]
        if "referenced_tweets.id.author_id" in expansions:
            user_ids += [t.author_id for t in tweets]
        if "in_reply_to_user_id" in expansions:
            user_ids += [p.reply_to_user_id for p in page if p.reply_to_user_id]
        if "entities.mentions.username" in expansions:
            user_ids += [m["id"] for p in page for m in p.mentions if "id" in m]
        includes: dict[str, Any] = {}
        unique = [uid for i, uid in enumerate(user_ids) if uid not in user_ids[:i]]
        if unique:
            includes["users"] = [
                _user_dict(self.users[uid], user_fields) for uid in unique if uid in self.users
            ]
        if tweets:
            includes["tweets"] = [self._render_post(t, tweet_fields) for t in tweets]
        return includes

    def _render_user(self, user: XUser, request: Request) -> dict[str, Any]:
        return _user_dict(user, _csv(request, "user.fields", USER_FIELDS))

    def _render_post(self, post: XPost, fields: set[str]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": post.id,
            "text": post.text,
            "edit_history_tweet_ids": [post.id],
        }
        if "author_id" in fields:
            data["author_id"] = post.author_id
        if "created_at" in fields:
            data["created_at"] = _iso(post.created_at)
        if "conversation_id" in fields:
            data["conversation_id"] = post.conversation_id
        if "referenced_tweets" in fields and post.references():
            data["referenced_tweets"] = post.references()
        if "in_reply_to_user_id" in fields and post.reply_to_user_id:
            data["in_reply_to_user_id"] = post.reply_to_user_id
        if "entities" in fields and (post.mentions or post.hashtags):
            entities: dict[str, Any] = {}
            if post.mentions:
                entities["mentions"] = post.mentions
            if post.hashtags:
                entities["hashtags"] = post.hashtags
            data["entities"] = entities
        if "lang" in fields:
            data["lang"] = "en"
        if "possibly_sensitive" in fields:
            data["possibly_sensitive"] = False
        if "reply_settings" in fields:
            data["reply_settings"] = "everyone"
        if "public_metrics" in fields:
            data["public_metrics"] = self._metrics(post)
        return data

    def _metrics(self, post: XPost) -> dict[str, int]:
        others = self.posts.values()
        return {
            "retweet_count": sum(p.retweet_of == post.id for p in others),
            "reply_count": sum(p.reply_to == post.id for p in others),
            "like_count": 0,
            "quote_count": sum(p.quote_of == post.id for p in others),
            "bookmark_count": 0,
            "impression_count": 0,
        }

    def _facts(self, post: XPost) -> dict[str, Any]:
        """What search operators look at."""
        author = self.users[post.author_id].username.lower()
        to = self.users.get(post.reply_to_user_id or "")
        return {
            "from": author,
            "to": to.username.lower() if to else None,
            "mentions": post.mentioned,
            "hashtags": {h["tag"].lower() for h in post.hashtags},
            "text": post.text.lower(),
            "post": post,
        }

    # --- writes --------------------------------------------------------------------------

    def _create(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            return _invalid_request("Request body is not valid JSON")
        if not isinstance(body, dict):
            return _invalid_request("Request body must be a JSON object")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return _invalid_request("$.text: must not be empty", "text", str(text))
        weighted = parse_tweet(text).weightedLength
        if weighted > MAX_WEIGHTED_LENGTH:
            return _invalid_request(
                f"Your Tweet text is too long: {weighted} weighted characters "
                f"(the limit is {MAX_WEIGHTED_LENGTH}).",
                "text",
                text,
            )
        reply = body.get("reply") or {}
        reply_to = reply.get("in_reply_to_tweet_id") if isinstance(reply, dict) else None
        quote_of = body.get("quote_tweet_id")
        for name, value in (("in_reply_to_tweet_id", reply_to), ("quote_tweet_id", quote_of)):
            if value is not None and not str(value).isdigit():
                return _invalid_request(f"`{name}` must be a numeric id", name, str(value))
        if reply_to is not None and reply_to not in self.posts:
            return _problem(403, "Forbidden", REPLY_TARGET_GONE)
        if quote_of is not None and quote_of not in self.posts:
            return _problem(403, "Forbidden", QUOTE_TARGET_GONE)
        if reply_to is not None and not self._may_reply_to(self.posts[reply_to]):
            return _problem(403, "Forbidden", REPLY_NOT_ALLOWED)
        if any(p.author_id == OUR_USER_ID and p.text == text for p in self.posts.values()):
            return _problem(403, "Forbidden", DUPLICATE)
        post = self._store(OUR_USER_ID, text, self.clock(), reply_to, quote_of)
        data = {"id": post.id, "text": post.text, "edit_history_tweet_ids": [post.id]}
        return json_response({"data": data}, 201, content_type=JSON)

    def _may_reply_to(self, target: XPost) -> bool:
        """X's 2026 rule: the author summoned us (mention or quote), or we are exempt."""
        if self.exempt or target.author_id == OUR_USER_ID:
            return True
        if self.users[OUR_USER_ID].username.lower() in target.mentioned:
            return True
        quoted = self.posts.get(target.quote_of or "") or self.deleted.get(target.quote_of or "")
        return quoted is not None and quoted.author_id == OUR_USER_ID


# --- answers ---------------------------------------------------------------------------


def _problem(
    status: int, title: str, detail: str, type_: str = "about:blank", **extra: Any
) -> Response:
    body = {"title": title, "detail": detail, "type": type_, "status": status, **extra}
    return json_response(body, status, content_type=PROBLEM_JSON)


def _unauthorized() -> Response:
    return _problem(401, "Unauthorized", "Unauthorized")


def _too_many_requests() -> Response:
    return _problem(429, "Too Many Requests", "Too Many Requests")


def _unsupported_auth() -> Response:
    return _problem(
        403,
        "Unsupported Authentication",
        "Authenticating with OAuth 2.0 Application-Only is forbidden for this endpoint.  "
        "Supported authentication types are [OAuth 1.0a User Context, OAuth 2.0 User Context].",
        PROBLEMS + "unsupported-authentication",
    )


def _client_forbidden() -> Response:
    body = {
        "client_id": SANDBOX_CLIENT_ID,
        "detail": NOT_ENROLLED,
        "registration_url": "https://developer.twitter.com/en/docs/projects/overview",
        "title": "Client Forbidden",
        "required_enrollment": "Appropriate Level of API Access",
        "reason": "client-not-enrolled",
        "type": PROBLEMS + "client-forbidden",
    }
    return json_response(body, 403, content_type=PROBLEM_JSON)


def _invalid_request(message: str, parameter: str | None = None, value: str = "") -> Response:
    error: dict[str, Any] = {"message": message}
    if parameter is not None:
        error["parameters"] = {parameter: [value]}
    body = {
        "errors": [error],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": PROBLEMS + "invalid-request",
    }
    return json_response(body, 400, content_type=JSON)


def _user_not_found(parameter: str, value: str) -> dict[str, str]:
    return {
        "value": value,
        "detail": f"Could not find user with {parameter}: [{value}].",
        "title": "Not Found Error",
        "resource_type": "user",
        "parameter": parameter,
        "resource_id": value,
        "type": PROBLEMS + "resource-not-found",
    }


def _tweet_not_found(post_id: str) -> dict[str, str]:
    return {
        "value": post_id,
        "detail": f"Could not find tweet with id: [{post_id}].",
        "title": "Not Found Error",
        "resource_type": "tweet",
        "parameter": "id",
        "resource_id": post_id,
        "type": PROBLEMS + "resource-not-found",
    }


def _data(data: Any, *, errors: list[dict[str, Any]] | None = None) -> Response:
    body: dict[str, Any] = {}
    if data is not None:
        body["data"] = data
    if errors:
        body["errors"] = errors
    return json_response(body, content_type=JSON)


def _limit_headers(prefix: str, limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {
        f"{prefix}-limit": str(limit),
        f"{prefix}-remaining": str(remaining),
        f"{prefix}-reset": str(int(reset)),
    }


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _user_dict(user: XUser, fields: set[str]) -> dict[str, Any]:
    data: dict[str, Any] = {"id": user.id, "name": user.name, "username": user.username}
    extra = {
        "created_at": _iso(user.created_at),
        "description": user.description,
        "location": "",
        "pinned_tweet_id": None,
        "profile_image_url": "https://pbs.twimg.com/profile_images/default_normal.png",
        "protected": False,
        "public_metrics": {
            "followers_count": 0,
            "following_count": 0,
            "tweet_count": 0,
            "listed_count": 0,
        },
        "url": "",
        "verified": False,
    }
    for name in sorted(fields - {"id", "name", "username"}):
        if extra.get(name) is not None:
            data[name] = extra[name]
    return data


# --- parameters ------------------------------------------------------------------------


def _csv(request: Request, name: str, allowed: set[str]) -> set[str]:
    raw = request.arg(name)
    if raw is None:
        return set()
    values = set(raw.split(","))
    unknown = sorted(values - allowed)
    if unknown:
        raise _Refusal(
            _invalid_request(
                f"The `{name}` query parameter value [{unknown[0]}] is not one of "
                f"[{','.join(sorted(allowed))}]",
                name,
                unknown[0],
            )
        )
    return values


def _check_fields(request: Request, *, tweet: bool) -> tuple[set[str], set[str], set[str]]:
    user_fields = _csv(request, "user.fields", USER_FIELDS)
    if not tweet:
        _csv(request, "expansions", USER_EXPANSIONS)
        _csv(request, "tweet.fields", TWEET_FIELDS)
        return set(), user_fields, set()
    return (
        _csv(request, "tweet.fields", TWEET_FIELDS),
        user_fields,
        _csv(request, "expansions", TWEET_EXPANSIONS),
    )


def _check_id(name: str, value: str) -> None:
    if not value.isdigit() or len(value) > 19:
        raise _Refusal(
            _invalid_request(
                f"The `{name}` query parameter value [{value}] does not match ^[0-9]{{1,19}}$",
                name,
                value,
            )
        )


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.arg(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise _Refusal(
            _invalid_request(
                f"The `{name}` query parameter value [{raw}] is not between {low} and {high}",
                name,
                raw,
            )
        )
    return int(raw)


def _time_arg(request: Request, name: str) -> float | None:
    raw = request.arg(name)
    if raw is None:
        return None
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        raise _Refusal(
            _invalid_request(
                f"The `{name}` query parameter value [{raw}] is not a valid time", name, raw
            )
        ) from None


def _encode_token(post_id: str) -> str:
    return base64.b32encode(f"below:{post_id}".encode()).decode().rstrip("=").lower()


def _decode_token(request: Request, name: str) -> int | None:
    raw = request.arg(name)
    if raw is None:
        return None
    try:
        padded = raw.upper() + "=" * (-len(raw) % 8)
        prefix, _, value = base64.b32decode(padded).decode().partition(":")
        if prefix == "below" and value.isdigit():
            return int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise _Refusal(
        _invalid_request(f"The `{name}` query parameter value [{raw}] is not valid", name, raw)
    )


# --- OAuth 1.0a --------------------------------------------------------------------------


def _oauth_params(value: str) -> dict[str, str]:
    return {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', value)}


def _enc(value: str) -> str:
    return quote(value, safe="~")  # RFC 3986 unreserved characters stay as they are


def _hmac_sha1(
    method: str,
    url: str,
    params: list[tuple[str, str]],
    consumer_secret: str,
    token_secret: str,
) -> str:
    pairs = sorted((_enc(k), _enc(v)) for k, v in params)
    normalized = "&".join(f"{k}={v}" for k, v in pairs)
    base = "&".join([method.upper(), _enc(url), _enc(normalized)])
    key = f"{_enc(consumer_secret)}&{_enc(token_secret)}"
    digest = hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


# --- search queries ----------------------------------------------------------------------

Matcher = Callable[[XPost, dict[str, Any]], bool]

_TOKEN = re.compile(r'-?"[^"]*"|\(|\)|[^\s()]+')


def _parse_query(query: str) -> Matcher:
    """Recent search's query language: AND binds tighter than OR, as on X."""
    tokens = _TOKEN.findall(query)
    matcher, rest = _parse_or(tokens)
    if rest:
        raise ValueError(f"There were errors processing your request: unexpected {rest[0]!r}")
    return matcher


def _parse_or(tokens: list[str]) -> tuple[Matcher, list[str]]:
    groups = []
    group, tokens = _parse_and(tokens)
    groups.append(group)
    while tokens and tokens[0] == "OR":
        group, tokens = _parse_and(tokens[1:])
        groups.append(group)
    return (lambda p, f: any(g(p, f) for g in groups)), tokens


def _parse_and(tokens: list[str]) -> tuple[Matcher, list[str]]:
    terms: list[Matcher] = []
    while tokens and tokens[0] not in ("OR", ")"):
        word, tokens = tokens[0], tokens[1:]
        negate = word.startswith("-")
        if negate and word == "-" and tokens[:1] == ["("]:
            word, tokens = "(", tokens[1:]  # -( ... ) negates a group
        elif negate:
            word = word[1:]
        if word == "(":
            term, tokens = _parse_or(tokens)
            if tokens[:1] != [")"]:
                raise ValueError("There were errors processing your request: missing ')'")
            tokens = tokens[1:]
        elif word:
            term = _term(word)
        else:
            raise ValueError("There were errors processing your request: a lone '-'")
        terms.append((lambda t: lambda p, f: not t(p, f))(term) if negate else term)
    if not terms:
        raise ValueError("There were errors processing your request: empty clause")
    return (lambda p, f: all(t(p, f) for t in terms)), tokens


def _term(token: str) -> Matcher:
    lowered = token.lower()
    if lowered.startswith('"'):
        return _words(lowered.strip('"'))
    if lowered.startswith("from:"):
        name = lowered[5:].lstrip("@")
        return lambda p, f: f["from"] == name
    if lowered.startswith("to:"):
        name = lowered[3:].lstrip("@")
        return lambda p, f: f["to"] == name
    if lowered.startswith("@") and len(lowered) > 1:
        name = lowered[1:]
        return lambda p, f: name in f["mentions"]
    if lowered.startswith("#") and len(lowered) > 1:
        tag = lowered[1:]
        return lambda p, f: tag in f["hashtags"]
    if lowered.startswith("conversation_id:"):
        cid = lowered.split(":", 1)[1]
        return lambda p, f: p.conversation_id == cid
    if lowered.startswith("is:"):
        kinds: dict[str, Matcher] = {
            "retweet": lambda p, f: p.retweet_of is not None,
            "reply": lambda p, f: p.reply_to is not None,
            "quote": lambda p, f: p.quote_of is not None,
        }
        kind = lowered[3:]
        if kind not in kinds:
            raise ValueError(f"There were errors processing your request: unknown 'is:{kind}'")
        return kinds[kind]
    return _words(lowered)


def _words(phrase: str) -> Matcher:
    pattern = re.compile(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)")
    return lambda p, f: bool(pattern.search(f["text"]))


# --- small helpers -----------------------------------------------------------------------


def _mentioned(text: str) -> set[str]:
    return {m.lower() for m in MENTION.findall(text)}


def _iso(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{int(ts * 1000) % 1000:03d}Z"
    )


def _timestamp(value: datetime | float | int | str) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if isinstance(value, str):
        return _timestamp(datetime.fromisoformat(value))
    return float(value)


def _parents_first(posts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A snapshot lists posts newest first; ids say which came first. Without ids, the
    # given order is the order of creation.
    if posts and all(p.get("id") for p in posts):
        return sorted(posts, key=lambda p: int(p["id"]))
    return posts
