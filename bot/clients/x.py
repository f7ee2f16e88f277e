"""The X API v2 client: the only module that imports tweepy.

Every call ends in a value or a ``ClientError`` whose kind says whose business the
failure is, and whose ``reason`` (``bot.clients.errors.Reason``) names a cause to act on:

- ``transient``: X could not be reached, a read got no or a malformed answer, or 5xx:
  the ``twitter_api`` circuit breaker counts it. Two named causes besides:

  - ``RATE_LIMITED`` (429, or the usage cap): ``retry_at`` is the rate-limit reset (the
    period's end for the cap; now + 15 minutes when X gave neither). That endpoint alone
    is held until then in the shared cache (``resilience.holds``), so no process calls it
    again early: a held call raises the same error without sending anything or asking
    the breaker. The breaker does not count it; other endpoints carry on.
  - ``CONFIGURATION``: our setup is refused (401; a read-only app, an app outside a
    Project or the wrong kind of auth; our account suspended or locked; a 404 that is
    not X's, i.e. ``X_API_BASE_URL`` does not reach X). ``retry_at`` is now +
    ``CONFIGURATION_HOLD``, so the breaker opens at once and stays open that long; the
    message says what to fix and never quotes a credential.

- ``permanent``: 400, X's own 404 and other 403s (deleted target, not allowed) belong
  to the item;
- ``ambiguous``: a write went out and no usable answer came back (read timeout, dropped
  connection, HTML or truncated body), or X's 403 duplicate content: the post may exist.
  Reconcile by paging ``our_posts()`` (replies included) before anything is retried;
- ``not_permitted``: X's 2026 reply rule refused the reply: hand off to the owner.

Text from X (post text, usernames, names) is passed through ``clean_text`` on the way in.

tweepy hard-codes ``https://api.twitter.com`` and sets no timeout, so an adapter on its
session rewrites that prefix to ``base_url`` and applies ``timeout`` to every request.
It retries nothing: ``wait_on_rate_limit`` stays off and the pipeline reschedules.

Every request that reaches X is told to the ``meter`` (``bot.services.x_usage`` when
built ``from_settings``) with the endpoint, the units X returned (posts or users in
``data``; 0 for a failed call) and X's price per unit for that call: a failed call
still counts as a call. Held calls and calls the open breaker refuses send nothing and
count nothing; so does a connection that certainly never reached X.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import tweepy
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from bot.clients.errors import ClientError, ErrorKind, Reason
from bot.replies import links_in
from bot.text import clean_text
from resilience import CircuitBreaker, get_breaker, holds
from resilience.errors import CONFIGURATION_HOLD

__all__ = ["X_HOST", "Page", "Post", "RateLimit", "User", "XClient"]

X_HOST = "https://api.twitter.com"
BREAKER = "twitter_api"
SERVICE = "x"

# The settings X's user-context auth needs (the bearer token is optional: reads fall back
# to user context without it).
CREDENTIAL_SETTINGS = ("X_API_KEY", "X_API_SECRET", "X_ACCESS_TOKEN", "X_ACCESS_TOKEN_SECRET")
# How long a refused setup keeps the breaker open: the owner has to act, so asking X
# every few seconds would only spend requests (and look like abuse on a locked account).
# A 429 without a reset header: X's windows are 15 minutes.
RATE_LIMIT_FALLBACK = 900.0
HOLD_KEY = "replyguy:x:hold:{endpoint}:{scope}"

TWEET_FIELDS = [
    "id",
    "text",
    "author_id",
    "created_at",
    "conversation_id",
    "referenced_tweets",
    "in_reply_to_user_id",
    "entities",
]
EXPANSIONS = ["author_id"]
USER_FIELDS = ["id", "name", "username"]

# Markers of X's 403 answers, matched in ``detail``/messages (X's wording varies a little).
DUPLICATE_MARKERS = ("duplicate content", "status is a duplicate")
REPLY_RULE_MARKERS = ("reply to this conversation is not allowed",)
TARGET_GONE_MARKERS = ("deleted or not visible",)
# Our own account refused, in X's v1-style codes or its words. "User has been suspended"
# is about someone else's account (a 200 lookup error) and must not match.
SUSPENDED_CODE = 64
LOCKED_CODE = 326
SUSPENDED_MARKERS = ("account is suspended", "account has been suspended")
LOCKED_MARKERS = ("account is temporarily locked", "account is locked", "account has been locked")
DUPLICATE_CODE = 187  # the v1-style body's code for a duplicate
# X's "Sorry, that page does not exist": the route, not the item, is unknown.
NO_SUCH_PAGE_CODE = 34
# 403 problem types that mean our app setup, not the item, is wrong.
READ_ONLY_PROBLEM = "oauth1-permissions"
UNSUPPORTED_AUTH_PROBLEM = "unsupported-authentication"
NOT_ENROLLED_PROBLEM = "client-forbidden"

# X's pay-per-use prices in US dollars per unit (X's developer docs, 2026-08; the table is
# in docs/operations.md): a unit is a post or user returned, or a post made.
POST_READ = 0.005  # a post returned by a public read: a target's timeline, search, a lookup
USER_READ = 0.010  # a user returned: our account, a target's lookup
OWNED_READ = 0.001  # a post of our own timeline or of our mentions
POST_CREATE = 0.015  # an ordinary post; X lists no price for deleting one
POST_WITH_URL = 0.20  # a post holding a link, instead of the price of its kind
# A reply to a post whose author summoned us (mentioned or quoted us). Since 2026-02 it
# is the only reply X accepts through the API on self-serve plans, so every reply we
# make is priced so (POST_CREATE would apply only on an exempt Enterprise plan, which
# X does not bill per use); one holding a link costs POST_WITH_URL.
SUMMONED_REPLY = 0.010

T = TypeVar("T")
Timeout = float | tuple[float, float]
# (endpoint, units returned, USD per unit): told once per request that reached X.
Meter = Callable[[str, int, float], None]


@dataclass(frozen=True)
class User:
    id: str
    username: str
    name: str


@dataclass(frozen=True)
class Post:
    id: str
    text: str
    author_id: str
    author_username: str | None
    created_at: datetime
    conversation_id: str | None
    in_reply_to_user_id: str | None
    referenced: tuple[tuple[str, str], ...]  # (type, id): replied_to, quoted, retweeted
    mentions: tuple[str, ...]  # usernames @mentioned in the text

    def _referenced(self, kind: str) -> str | None:
        return next((ref_id for ref_kind, ref_id in self.referenced if ref_kind == kind), None)

    @property
    def is_retweet(self) -> bool:
        return self._referenced("retweeted") is not None

    @property
    def is_reply(self) -> bool:
        return self.replied_to_id is not None

    @property
    def is_quote(self) -> bool:
        return self.quoted_id is not None

    @property
    def quoted_id(self) -> str | None:
        return self._referenced("quoted")

    @property
    def replied_to_id(self) -> str | None:
        return self._referenced("replied_to")

    def mentions_user(self, username: str) -> bool:
        wanted = username.lstrip("@").lower()
        return any(name.lower() == wanted for name in self.mentions)


@dataclass(frozen=True)
class Page:
    posts: list[Post]  # newest first
    newest_id: str | None  # the next since_id cursor (None when nothing was new)
    next_token: str | None  # more results: pass as pagination_token / next_token


@dataclass(frozen=True)
class RateLimit:
    limit: int
    remaining: int
    reset_at: float  # Unix seconds


class XClient:
    def __init__(
        self,
        *,
        base_url: str,
        bearer_token: str,
        consumer_key: str,
        consumer_secret: str,
        access_token: str,
        access_token_secret: str,
        timeout: Timeout = (5.0, 30.0),
        breaker: CircuitBreaker | None = None,
        me: User | None = None,
        clock: Callable[[], float] = time.time,
        meter: Meter | None = None,
    ) -> None:
        """``me``: our account if already known (it costs a paid user read to ask).

        ``clock``: Unix seconds, the time base of X's resets and of holds (tests pass the
        sandbox's clock). ``meter``: told of every request that reached X (see above).
        """
        self.base_url = base_url.rstrip("/")
        self._breaker = breaker if breaker is not None else get_breaker(BREAKER)
        self._clock = clock
        # App-only (bearer) auth for public reads when we have a bearer token; OAuth 1.0a
        # user context for owned reads and writes.
        self._app_auth = bool(bearer_token)
        self._tweepy = tweepy.Client(
            bearer_token=bearer_token or None,
            consumer_key=consumer_key,
            consumer_secret=consumer_secret,
            access_token=access_token,
            access_token_secret=access_token_secret,
            return_type=requests.Response,  # we read the headers and parse the body ourselves
            wait_on_rate_limit=False,
        )
        self._tweepy.session.mount(X_HOST, _BaseUrlAdapter(self.base_url, timeout))
        self._limits: dict[str, RateLimit] = {}
        self._lock = threading.Lock()
        self._me: User | None = me
        self._meter = meter

    @classmethod
    def from_settings(
        cls, *, breaker: CircuitBreaker | None = None, me: User | None = None
    ) -> XClient:
        """The client Reply Guy's settings describe; ``ImproperlyConfigured`` naming every
        credential that is missing."""
        from bot.services import x_usage

        missing = [name for name in CREDENTIAL_SETTINGS if not getattr(settings, name, "")]
        if missing:
            raise ImproperlyConfigured(f"X is not configured: set {', '.join(missing)}")

        def count(endpoint: str, units: int, price: float) -> None:
            x_usage.record(endpoint, units=units, unit_price_usd=price)

        return cls(
            base_url=settings.X_API_BASE_URL,
            bearer_token=settings.X_BEARER_TOKEN,
            consumer_key=settings.X_API_KEY,
            consumer_secret=settings.X_API_SECRET,
            access_token=settings.X_ACCESS_TOKEN,
            access_token_secret=settings.X_ACCESS_TOKEN_SECRET,
            breaker=breaker,
            me=me,
            meter=count,
        )

    def close(self) -> None:
        self._tweepy.session.close()

    @property
    def reads_as_app(self) -> bool:
        """Public reads use the app's bearer token, so they do not share our user windows."""
        return self._app_auth

    @property
    def rate_limits(self) -> dict[str, RateLimit]:
        """The last rate-limit headers X sent, per endpoint (``create_tweet``, ...)."""
        with self._lock:
            return dict(self._limits)

    # --- reads -------------------------------------------------------------------------

    def me(self) -> User:
        """Our account (the access token's), asked once per client."""
        if self._me is None:
            self._me = self._call(
                "me",
                lambda: self._tweepy.get_me(user_auth=True, user_fields=USER_FIELDS),
                lambda body: _user(body["data"]),
                user_auth=True,
                price=USER_READ,
            )
        return self._me

    def lookup_users(self, usernames: Iterable[str]) -> dict[str, User]:
        """Accounts by username (lower-cased keys); unknown ones are simply absent."""
        names = sorted({name.lstrip("@").lower() for name in usernames if name.strip("@ ")})
        found: dict[str, User] = {}
        user = not self._app_auth
        for start in range(0, len(names), 100):  # X takes at most 100 per request
            chunk = names[start : start + 100]
            found.update(
                self._call(
                    "users_by",
                    lambda chunk=chunk: self._tweepy.get_users(
                        usernames=chunk, user_fields=USER_FIELDS, user_auth=user
                    ),
                    _users_by_name,
                    user_auth=user,
                    price=USER_READ,
                )
            )
        return found

    def post_visible(self, post_id: str) -> bool:
        """Whether X still has post ``post_id``: False only when X itself says it does not
        exist (deleted, or never was). Any other failure raises as usual."""
        user = not self._app_auth
        try:
            return self._call(
                "tweet_lookup",
                lambda: self._tweepy.get_tweet(post_id, user_auth=user),
                _visible,
                user_auth=user,
                price=POST_READ,
            )
        except ClientError as exc:
            # X's own 404 problem; a 404 that is not X's is CONFIGURATION and goes up.
            if exc.kind is ErrorKind.PERMANENT and exc.status == 404:
                return False
            raise

    def user_posts(
        self,
        user_id: str,
        *,
        since_id: str | None = None,
        until_id: str | None = None,
        max_results: int = 100,
        pagination_token: str | None = None,
        exclude: Iterable[str] = ("retweets", "replies"),
    ) -> Page:
        return self._timeline(
            user_id,
            owned=False,
            since_id=since_id,
            until_id=until_id,
            max_results=max_results,
            pagination_token=pagination_token,
            exclude=exclude,
        )

    def our_posts(
        self,
        *,
        since_id: str | None = None,
        until_id: str | None = None,
        pagination_token: str | None = None,
        max_results: int = 100,
    ) -> Page:
        """All our own posts, replies included and retweets excluded, newest first.

        An owned read (user context, X's cheaper price). For reconciling an ambiguous
        publish the caller pages (``next_token``) down to its own cursor, looking for a
        reply whose ``replied_to_id`` is the target; ``until_id`` bounds a page from above.
        """
        return self._timeline(
            self.me().id,
            owned=True,
            since_id=since_id,
            until_id=until_id,
            max_results=max_results,
            pagination_token=pagination_token,
            exclude=("retweets",),
        )

    def mentions(
        self,
        user_id: str,
        *,
        since_id: str | None = None,
        until_id: str | None = None,
        max_results: int = 100,
        pagination_token: str | None = None,
    ) -> Page:
        # Mentions of our account are an owned read: user context, X's cheaper price.
        return self._call(
            "user_mentions",
            lambda: self._tweepy.get_users_mentions(
                user_id,
                since_id=since_id,
                until_id=until_id,
                max_results=max_results,
                pagination_token=pagination_token,
                tweet_fields=TWEET_FIELDS,
                expansions=EXPANSIONS,
                user_fields=USER_FIELDS,
                user_auth=True,
            ),
            _page,
            user_auth=True,
            price=OWNED_READ,
        )

    def search_recent(
        self,
        query: str,
        *,
        since_id: str | None = None,
        until_id: str | None = None,
        max_results: int = 100,
        next_token: str | None = None,
    ) -> Page:
        user = not self._app_auth
        return self._call(
            "search_recent",
            lambda: self._tweepy.search_recent_tweets(
                query,
                since_id=since_id,
                until_id=until_id,
                max_results=max_results,
                next_token=next_token,
                tweet_fields=TWEET_FIELDS,
                expansions=EXPANSIONS,
                user_fields=USER_FIELDS,
                user_auth=user,
            ),
            _page,
            user_auth=user,
            price=POST_READ,
        )

    def _timeline(
        self,
        user_id: str,
        *,
        owned: bool,
        since_id: str | None,
        until_id: str | None,
        max_results: int,
        pagination_token: str | None,
        exclude: Iterable[str],
    ) -> Page:
        excluded = list(exclude) or None  # an empty "exclude=" is a 400 on X
        user = owned or not self._app_auth
        return self._call(
            "user_tweets",
            lambda: self._tweepy.get_users_tweets(
                user_id,
                since_id=since_id,
                until_id=until_id,
                max_results=max_results,
                pagination_token=pagination_token,
                exclude=excluded,
                tweet_fields=TWEET_FIELDS,
                expansions=EXPANSIONS,
                user_fields=USER_FIELDS,
                user_auth=user,
            ),
            _page,
            user_auth=user,
            price=OWNED_READ if owned else POST_READ,
        )

    # --- writes ------------------------------------------------------------------------

    def create_reply(self, *, in_reply_to: str, text: str) -> str:
        """Publish ``text`` as a reply to post ``in_reply_to``; the new post's id.

        X has no idempotency key: an ``ambiguous`` error means the reply may exist.
        """
        return self._call(
            "create_tweet",
            lambda: self._tweepy.create_tweet(
                text=text, in_reply_to_tweet_id=in_reply_to, user_auth=True
            ),
            lambda body: str(body["data"]["id"]),
            user_auth=True,
            write=True,
            price=POST_WITH_URL if links_in(text) else SUMMONED_REPLY,
        )

    def delete_post(self, post_id: str) -> None:
        def deleted(body: dict[str, Any]) -> None:
            if body["data"].get("deleted") is not True:
                raise ClientError(
                    f"X did not delete post {post_id}", kind=ErrorKind.PERMANENT, service=SERVICE
                )

        self._call(
            "delete_tweet",
            lambda: self._tweepy.delete_tweet(post_id, user_auth=True),
            deleted,
            user_auth=True,
            write=True,
            price=0.0,  # X lists no price for deleting a post
        )

    # --- the one path every call takes ---------------------------------------------------

    def _call(
        self,
        endpoint: str,
        send: Callable[[], requests.Response],
        parse: Callable[[dict[str, Any]], T],
        *,
        user_auth: bool,
        price: float,
        write: bool = False,
    ) -> T:
        """``price``: X's USD per unit returned by this call (``bot.services.x_usage``)."""
        # X limits each endpoint per token: our user token and the app's bearer token
        # have separate windows, so each is held on its own.
        key = HOLD_KEY.format(endpoint=endpoint, scope="user" if user_auth else "app")
        until = holds.held_until(key, self._clock())
        if until is not None:
            # Known to be refused: no request, and nothing for the breaker to judge.
            raise _held(endpoint, until)
        try:
            # The mapping runs inside the breaker call so the breaker judges ClientErrors.
            return self._breaker.call(self._attempt, endpoint, send, parse, write, price)
        except ClientError as exc:
            if exc.reason == Reason.RATE_LIMITED and exc.retry_at is not None:
                holds.hold(key, exc.retry_at, now=self._clock())
            raise

    def _attempt(
        self,
        endpoint: str,
        send: Callable[[], requests.Response],
        parse: Callable[[dict[str, Any]], T],
        write: bool,
        price: float,
    ) -> T:
        try:
            response = send()
        except tweepy.HTTPException as exc:
            self._count(endpoint, 0, price)
            self._record_limits(endpoint, exc.response)
            raise _http_error(exc.response, write=write, now=self._clock()) from exc
        except requests.RequestException as exc:
            if not _never_sent(exc):
                self._count(endpoint, 0, price)
            raise _network_error(exc, write=write) from exc
        except tweepy.TweepyException as exc:  # refused before anything was sent
            raise ClientError(str(exc), kind=ErrorKind.PERMANENT, service=SERVICE) from exc
        self._record_limits(endpoint, response)
        try:
            body = response.json()
            if not isinstance(body, dict):
                raise TypeError(f"expected a JSON object, got {type(body).__name__}")
        except (ValueError, TypeError) as exc:
            self._count(endpoint, 0, price)
            raise _malformed(response.status_code, exc, write=write) from exc
        self._count(endpoint, _units(body), price)
        try:
            return parse(body)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _malformed(response.status_code, exc, write=write) from exc

    def _count(self, endpoint: str, units: int, price: float) -> None:
        if self._meter is not None:
            self._meter(endpoint, units, price)

    def _record_limits(self, endpoint: str, response: requests.Response) -> None:
        limit = _rate_limit(response.headers)
        if limit is not None:
            with self._lock:
                self._limits[endpoint] = limit


class _BaseUrlAdapter(HTTPAdapter):
    """Sends tweepy's ``https://api.twitter.com`` requests to ``base_url`` with a timeout."""

    def __init__(self, base_url: str, timeout: Timeout) -> None:
        super().__init__(max_retries=0)
        self.base_url = base_url
        self.timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = request.url or ""
        if self.base_url != X_HOST and url.startswith(X_HOST):
            request.url = self.base_url + url[len(X_HOST) :]
            # Proxies were chosen for api.twitter.com; choose again for the real target.
            kwargs["proxies"] = get_environ_proxies(request.url)
        kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


# --- mapping failures to kinds ---------------------------------------------------------


def _network_error(exc: requests.RequestException, *, write: bool) -> ClientError:
    if _never_sent(exc):
        return ClientError(f"could not reach X: {exc}", kind=ErrorKind.TRANSIENT, service=SERVICE)
    if write:
        return ClientError(
            f"sent, but no answer came back (the post may exist): {exc}",
            kind=ErrorKind.AMBIGUOUS,
            service=SERVICE,
        )
    return ClientError(f"no answer from X: {exc}", kind=ErrorKind.TRANSIENT, service=SERVICE)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly never reached X (nothing can have been posted)."""
    if isinstance(
        exc, requests.ConnectTimeout | requests.exceptions.ProxyError | requests.exceptions.SSLError
    ):
        return True
    if isinstance(exc, requests.ReadTimeout | requests.exceptions.ChunkedEncodingError):
        return False
    if not isinstance(exc, requests.ConnectionError):
        return True  # a bad URL and the like: refused before any byte went out
    # Refused, DNS failure and connect timeout come wrapped in MaxRetryError; a connection
    # dropped after the request was written comes as a bare ProtocolError.
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


def _http_error(response: requests.Response, *, write: bool, now: float) -> ClientError:
    status = response.status_code
    body = _json_or_none(response)
    detail = _detail(body) or f"HTTP {status} {response.reason}"

    def error(
        kind: ErrorKind,
        message: str = detail,
        retry_at: float | None = None,
        reason: Reason = Reason.NONE,
    ) -> ClientError:
        return ClientError(
            message, kind=kind, service=SERVICE, status=status, retry_at=retry_at, reason=reason
        )

    def configuration(message: str) -> ClientError:
        # Every call would fail alike until the owner acts: service-level, held a while.
        return error(ErrorKind.TRANSIENT, message, now + CONFIGURATION_HOLD, Reason.CONFIGURATION)

    if status == 429:
        cap_end = _usage_cap_end(body, now)
        if cap_end is not None:
            return error(
                ErrorKind.TRANSIENT, f"usage cap reached: {detail}", cap_end, Reason.RATE_LIMITED
            )
        reset = _reset_at(response.headers)
        retry_at = reset if reset is not None else now + RATE_LIMIT_FALLBACK
        return error(ErrorKind.TRANSIENT, f"rate limited: {detail}", retry_at, Reason.RATE_LIMITED)
    if status >= 500:
        if write and body is None:
            # A proxy's error page: the request may have reached X and posted.
            return error(ErrorKind.AMBIGUOUS, f"no usable answer to a write: {detail}")
        return error(ErrorKind.TRANSIENT)
    account = _account_refused(body) if status in (401, 403) else None
    if account is not None:
        return configuration(account)
    if status == 401:
        return configuration(
            f"X refused our credentials ({detail}): check {_credentials_used(response)}"
        )
    if status == 404 and not _x_knows_the_route(body):
        # Nothing reached X's API (a wrong base URL, a proxy's page): even a write is
        # certainly not posted, and every call would fail alike.
        return configuration(
            f"{_where(response)} answered 404 without X's error body: "
            "check X_API_BASE_URL points at the X API"
        )
    if status == 403:
        return _forbidden(body, detail, error, configuration)
    return error(ErrorKind.PERMANENT)


def _forbidden(
    body: dict[str, Any] | None,
    detail: str,
    error: Callable[..., ClientError],
    configuration: Callable[[str], ClientError],
) -> ClientError:
    lowered = " ".join(_messages(body)).lower() or detail.lower()
    if any(marker in lowered for marker in DUPLICATE_MARKERS) or DUPLICATE_CODE in _codes(body):
        # X says we already posted this text: perhaps this very reply. Reconcile.
        return error(ErrorKind.AMBIGUOUS, f"duplicate content: {detail}", reason=Reason.DUPLICATE)
    if any(marker in lowered for marker in REPLY_RULE_MARKERS):
        return error(ErrorKind.NOT_PERMITTED, f"reply not allowed by X: {detail}")
    if any(marker in lowered for marker in TARGET_GONE_MARKERS):
        return error(ErrorKind.PERMANENT, reason=Reason.TARGET_GONE)
    problem = str((body or {}).get("type", ""))
    if problem.endswith(READ_ONLY_PROBLEM):
        return configuration(
            f"X refused a write: the app may only read ({detail}). Set the app's permissions "
            "to Read and write in the X developer portal, then regenerate the access token "
            "and secret and update X_ACCESS_TOKEN and X_ACCESS_TOKEN_SECRET"
        )
    if problem.endswith(NOT_ENROLLED_PROBLEM):
        return configuration(
            f"X refused our app ({detail}): attach the app to a Project in the X developer "
            "portal; X_API_KEY and X_API_SECRET must be that app's"
        )
    if problem.endswith(UNSUPPORTED_AUTH_PROBLEM):
        return configuration(
            f"X refused the kind of authentication used ({detail}): user-context calls "
            "need X_API_KEY, X_API_SECRET, X_ACCESS_TOKEN and X_ACCESS_TOKEN_SECRET"
        )
    return error(ErrorKind.PERMANENT)


def _account_refused(body: dict[str, Any] | None) -> str | None:
    """What to do when X refuses our account itself (suspended, locked); else None."""
    lowered = " ".join(_messages(body)).lower()
    codes = _codes(body)
    if SUSPENDED_CODE in codes or any(marker in lowered for marker in SUSPENDED_MARKERS):
        return (
            "X says our account is suspended: nothing can be read or posted as it until "
            "X lifts the suspension (appeal at help.x.com)"
        )
    if LOCKED_CODE in codes or any(marker in lowered for marker in LOCKED_MARKERS):
        return (
            "X says our account is locked: log in to x.com as it and follow X's steps to unlock it"
        )
    return None


def _credentials_used(response: requests.Response) -> str:
    """The settings behind the refused request's auth (names only, never values)."""
    request = response.request
    header = str(request.headers.get("Authorization", "")) if request is not None else ""
    if header.startswith("Bearer "):
        return "X_BEARER_TOKEN"
    return "X_API_KEY, X_API_SECRET, X_ACCESS_TOKEN and X_ACCESS_TOKEN_SECRET"


def _x_knows_the_route(body: dict[str, Any] | None) -> bool:
    """A 404 body is X's answer about an item: a problem or an ``errors`` list, other
    than X's "page does not exist" (the route itself is unknown)."""
    if body is None or NO_SUCH_PAGE_CODE in _codes(body):
        return False
    return isinstance(body.get("errors"), list) or "type" in body or "title" in body


def _where(response: requests.Response) -> str:
    """Scheme, host, port and path of the answered URL: no query, no user info."""
    url = urlsplit(response.url or "")
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.hostname}{port}{url.path}"


def _held(endpoint: str, until: float) -> ClientError:
    when = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ClientError(
        f"{endpoint} rate limited: held until {when}",
        kind=ErrorKind.TRANSIENT,
        service=SERVICE,
        status=429,
        retry_at=until,
        reason=Reason.RATE_LIMITED,
    )


def _malformed(status: int, exc: Exception, *, write: bool) -> ClientError:
    kind = ErrorKind.AMBIGUOUS if write else ErrorKind.TRANSIENT
    what = "the post may exist" if write else "X sent a malformed answer"
    return ClientError(f"{what}: {exc}", kind=kind, service=SERVICE, status=status)


def _raise_for_missing_resource(body: dict[str, Any]) -> None:
    """X answers 200 with only ``errors`` when the user or post asked for does not exist."""
    if "data" in body or "meta" in body:
        return
    errors = [e for e in body.get("errors", []) if isinstance(e, dict)]
    if errors:
        raise ClientError(
            "; ".join(str(e.get("detail") or e.get("message") or e) for e in errors),
            kind=ErrorKind.PERMANENT,
            service=SERVICE,
            status=404 if any("not-found" in str(e.get("type")) for e in errors) else None,
        )


def _json_or_none(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _messages(body: dict[str, Any] | None) -> list[str]:
    if not body:
        return []
    messages = [str(body[key]) for key in ("detail", "title") if body.get(key)]
    for error in body.get("errors", []):
        if isinstance(error, dict):
            messages += [str(error[key]) for key in ("message", "detail") if error.get(key)]
        elif isinstance(error, str):
            messages.append(error)
    return messages


def _detail(body: dict[str, Any] | None) -> str:
    messages = _messages(body)
    return messages[0] if messages else ""


def _codes(body: dict[str, Any] | None) -> list[Any]:
    """The v1-style ``errors[].code`` values."""
    errors = (body or {}).get("errors")
    if not isinstance(errors, list):
        return []
    return [error.get("code") for error in errors if isinstance(error, dict)]


def _usage_cap_end(body: dict[str, Any] | None, now: float) -> float | None:
    """When X's usage-cap 429 lifts: the start of the next period (UTC) after ``now``."""
    if not body:
        return None
    if (
        not str(body.get("type", "")).endswith("usage-capped")
        and body.get("title") != "UsageCapExceeded"
    ):
        return None
    today = datetime.fromtimestamp(now, UTC)
    if str(body.get("period", "Monthly")).lower() == "daily":
        day = today.replace(hour=0, minute=0, second=0, microsecond=0)
        return day.timestamp() + 24 * 60 * 60
    if today.month == 12:
        return datetime(today.year + 1, 1, 1, tzinfo=UTC).timestamp()
    return datetime(today.year, today.month + 1, 1, tzinfo=UTC).timestamp()


def _reset_at(headers: Any) -> float | None:
    """``x-rate-limit-reset``, or a spent 24-hour cap's later reset."""
    resets = []
    if headers.get("x-rate-limit-reset", "").isdigit():
        resets.append(float(headers["x-rate-limit-reset"]))
    for prefix in ("x-app-limit-24hour", "x-user-limit-24hour"):
        if (
            headers.get(f"{prefix}-remaining") == "0"
            and headers.get(f"{prefix}-reset", "").isdigit()
        ):
            resets.append(float(headers[f"{prefix}-reset"]))
    return max(resets) if resets else None


def _rate_limit(headers: Any) -> RateLimit | None:
    values = [headers.get(f"x-rate-limit-{name}", "") for name in ("limit", "remaining", "reset")]
    if not all(value.isdigit() for value in values):
        return None
    limit, remaining, reset = (int(value) for value in values)
    return RateLimit(limit=limit, remaining=remaining, reset_at=float(reset))


# --- parsing answers -----------------------------------------------------------------------


def _units(body: dict[str, Any]) -> int:
    """What X bills in an answer: the posts or users in ``data`` (one object, or a list)."""
    data = body.get("data")
    if isinstance(data, list):
        return len(data)
    return 1 if isinstance(data, dict) and data else 0


def _user(data: dict[str, Any]) -> User:
    return User(
        id=str(data["id"]),
        username=clean_text(data["username"]),
        name=clean_text(data.get("name") or ""),
    )


def _users_by_name(body: dict[str, Any]) -> dict[str, User]:
    users = [_user(item) for item in body.get("data") or []]
    return {user.username.lower(): user for user in users}


def _visible(body: dict[str, Any]) -> bool:
    if body.get("data"):
        return True
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    if errors and all(str(e.get("type", "")).endswith("resource-not-found") for e in errors):
        return False  # X's 200 for a deleted or unknown post
    _raise_for_missing_resource(body)  # any other refusal, as X worded it
    raise KeyError("data")  # neither data nor errors: a malformed answer


def _page(body: dict[str, Any]) -> Page:
    _raise_for_missing_resource(body)
    usernames = {
        str(user["id"]): clean_text(user["username"])
        for user in (body.get("includes") or {}).get("users", [])
    }
    meta = body.get("meta") or {}
    return Page(
        posts=[_post(item, usernames) for item in body.get("data") or []],
        newest_id=meta.get("newest_id"),
        next_token=meta.get("next_token"),
    )


def _post(data: dict[str, Any], usernames: dict[str, str]) -> Post:
    author_id = str(data["author_id"])
    entities = data.get("entities") or {}
    return Post(
        id=str(data["id"]),
        text=clean_text(data["text"]),
        author_id=author_id,
        author_username=usernames.get(author_id),
        created_at=datetime.fromisoformat(data["created_at"]),
        conversation_id=data.get("conversation_id"),
        in_reply_to_user_id=data.get("in_reply_to_user_id"),
        referenced=tuple(
            (ref["type"], str(ref["id"])) for ref in data.get("referenced_tweets") or []
        ),
        mentions=tuple(clean_text(m["username"]) for m in entities.get("mentions") or []),
    )
