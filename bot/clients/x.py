"""The X API v2 client: the only module that imports tweepy.

Every call goes through the ``twitter_api`` circuit breaker and ends in a value or a
``ClientError`` whose kind says whose business the failure is:

- ``transient`` (the breaker counts it): X could not be reached, a read got no or a
  malformed answer, 5xx, 429 (``retry_at`` = the rate-limit reset, or the end of the
  usage cap's period), 401 and credential-level 403s (the owner must act);
- ``permanent``: 400, 404 and other 403s (deleted target, not allowed) belong to the item;
- ``ambiguous``: a write went out and no usable answer came back (read timeout, dropped
  connection, HTML or truncated body), or X's 403 duplicate content: the post may exist,
  reconcile with ``our_recent_replies()`` before anything is retried;
- ``not_permitted``: X's 2026 reply rule refused the reply: hand off to the owner.

tweepy hard-codes ``https://api.twitter.com`` and sets no timeout, so an adapter on its
session rewrites that prefix to ``base_url`` and applies ``timeout`` to every request.
It retries nothing: ``wait_on_rate_limit`` stays off and the pipeline reschedules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
import tweepy
from django.conf import settings
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from bot.clients.errors import ClientError, ErrorKind
from resilience import CircuitBreaker, get_breaker

__all__ = ["X_HOST", "Page", "Post", "RateLimit", "User", "XClient"]

X_HOST = "https://api.twitter.com"
BREAKER = "twitter_api"
SERVICE = "x"

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
# ClientError.reason values the pipeline acts on.
DUPLICATE = "duplicate"
TARGET_GONE = "target_gone"
DUPLICATE_CODE = 187  # the v1-style body's code for a duplicate
# 403 problem types that mean our credentials or app setup, not the item, are wrong.
CREDENTIAL_PROBLEMS = ("unsupported-authentication", "client-forbidden")

T = TypeVar("T")
Timeout = float | tuple[float, float]


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
    ) -> None:
        """``me``: our account if already known (it costs a paid user read to ask)."""
        self.base_url = base_url.rstrip("/")
        self._breaker = breaker if breaker is not None else get_breaker(BREAKER)
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

    @classmethod
    def from_settings(
        cls, *, breaker: CircuitBreaker | None = None, me: User | None = None
    ) -> XClient:
        return cls(
            base_url=settings.X_API_BASE_URL,
            bearer_token=settings.X_BEARER_TOKEN,
            consumer_key=settings.X_API_KEY,
            consumer_secret=settings.X_API_SECRET,
            access_token=settings.X_ACCESS_TOKEN,
            access_token_secret=settings.X_ACCESS_TOKEN_SECRET,
            breaker=breaker,
            me=me,
        )

    def close(self) -> None:
        self._tweepy.session.close()

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
            )
        return self._me

    def lookup_users(self, usernames: Iterable[str]) -> dict[str, User]:
        """Accounts by username (lower-cased keys); unknown ones are simply absent."""
        names = sorted({name.lstrip("@").lower() for name in usernames if name.strip("@ ")})
        found: dict[str, User] = {}
        for start in range(0, len(names), 100):  # X takes at most 100 per request
            chunk = names[start : start + 100]
            found.update(
                self._call(
                    "users_by",
                    lambda chunk=chunk: self._tweepy.get_users(
                        usernames=chunk, user_fields=USER_FIELDS, user_auth=not self._app_auth
                    ),
                    _users_by_name,
                )
            )
        return found

    def user_posts(
        self,
        user_id: str,
        *,
        since_id: str | None = None,
        max_results: int = 100,
        pagination_token: str | None = None,
        exclude: Iterable[str] = ("retweets", "replies"),
    ) -> Page:
        return self._timeline(
            user_id,
            owned=False,
            since_id=since_id,
            max_results=max_results,
            pagination_token=pagination_token,
            exclude=exclude,
        )

    def mentions(
        self,
        user_id: str,
        *,
        since_id: str | None = None,
        max_results: int = 100,
        pagination_token: str | None = None,
    ) -> Page:
        # Mentions of our account are an owned read: user context, X's cheaper price.
        return self._call(
            "user_mentions",
            lambda: self._tweepy.get_users_mentions(
                user_id,
                since_id=since_id,
                max_results=max_results,
                pagination_token=pagination_token,
                tweet_fields=TWEET_FIELDS,
                expansions=EXPANSIONS,
                user_fields=USER_FIELDS,
                user_auth=True,
            ),
            _page,
        )

    def search_recent(
        self,
        query: str,
        *,
        since_id: str | None = None,
        max_results: int = 100,
        next_token: str | None = None,
    ) -> Page:
        return self._call(
            "search_recent",
            lambda: self._tweepy.search_recent_tweets(
                query,
                since_id=since_id,
                max_results=max_results,
                next_token=next_token,
                tweet_fields=TWEET_FIELDS,
                expansions=EXPANSIONS,
                user_fields=USER_FIELDS,
                user_auth=not self._app_auth,
            ),
            _page,
        )

    def our_recent_replies(
        self, *, since_id: str | None = None, max_results: int = 100
    ) -> list[Post]:
        """Our latest replies, newest first, for reconciling an ambiguous publish: look
        for one whose ``replied_to_id`` is the target."""
        page = self._timeline(
            self.me().id,
            owned=True,
            since_id=since_id,
            max_results=max_results,
            pagination_token=None,
            exclude=("retweets",),
        )
        return [post for post in page.posts if post.is_reply]

    def _timeline(
        self,
        user_id: str,
        *,
        owned: bool,
        since_id: str | None,
        max_results: int,
        pagination_token: str | None,
        exclude: Iterable[str],
    ) -> Page:
        excluded = list(exclude) or None  # an empty "exclude=" is a 400 on X
        return self._call(
            "user_tweets",
            lambda: self._tweepy.get_users_tweets(
                user_id,
                since_id=since_id,
                max_results=max_results,
                pagination_token=pagination_token,
                exclude=excluded,
                tweet_fields=TWEET_FIELDS,
                expansions=EXPANSIONS,
                user_fields=USER_FIELDS,
                user_auth=owned or not self._app_auth,
            ),
            _page,
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
            write=True,
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
            write=True,
        )

    # --- the one path every call takes ---------------------------------------------------

    def _call(
        self,
        endpoint: str,
        send: Callable[[], requests.Response],
        parse: Callable[[dict[str, Any]], T],
        *,
        write: bool = False,
    ) -> T:
        # The mapping runs inside the breaker call so the breaker judges ClientErrors.
        return self._breaker.call(self._attempt, endpoint, send, parse, write)

    def _attempt(
        self,
        endpoint: str,
        send: Callable[[], requests.Response],
        parse: Callable[[dict[str, Any]], T],
        write: bool,
    ) -> T:
        try:
            response = send()
        except tweepy.HTTPException as exc:
            self._record_limits(endpoint, exc.response)
            raise _http_error(exc.response, write=write) from exc
        except requests.RequestException as exc:
            raise _network_error(exc, write=write) from exc
        except tweepy.TweepyException as exc:  # refused before anything was sent
            raise ClientError(str(exc), kind=ErrorKind.PERMANENT, service=SERVICE) from exc
        self._record_limits(endpoint, response)
        try:
            body = response.json()
            if not isinstance(body, dict):
                raise TypeError(f"expected a JSON object, got {type(body).__name__}")
            return parse(body)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _malformed(response.status_code, exc, write=write) from exc

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


def _http_error(response: requests.Response, *, write: bool) -> ClientError:
    status = response.status_code
    body = _json_or_none(response)
    detail = _detail(body) or f"HTTP {status} {response.reason}"

    def error(
        kind: ErrorKind, message: str = detail, retry_at: float | None = None, reason: str = ""
    ) -> ClientError:
        return ClientError(
            message, kind=kind, service=SERVICE, status=status, retry_at=retry_at, reason=reason
        )

    if status == 429:
        cap_end = _usage_cap_end(body)
        if cap_end is not None:
            return error(ErrorKind.TRANSIENT, f"usage cap reached: {detail}", cap_end)
        return error(ErrorKind.TRANSIENT, f"rate limited: {detail}", _reset_at(response.headers))
    if status >= 500:
        if write and body is None:
            # A proxy's error page: the request may have reached X and posted.
            return error(ErrorKind.AMBIGUOUS, f"no usable answer to a write: {detail}")
        return error(ErrorKind.TRANSIENT)
    if status == 401:
        return error(ErrorKind.TRANSIENT, f"X refused our credentials: {detail}")
    if status == 403:
        return _forbidden(body, detail, error)
    return error(ErrorKind.PERMANENT)


def _forbidden(
    body: dict[str, Any] | None, detail: str, error: Callable[..., ClientError]
) -> ClientError:
    lowered = " ".join(_messages(body)).lower() or detail.lower()
    codes = [e.get("code") for e in (body or {}).get("errors", []) if isinstance(e, dict)]
    if any(marker in lowered for marker in DUPLICATE_MARKERS) or DUPLICATE_CODE in codes:
        # X says we already posted this text: perhaps this very reply. Reconcile.
        return error(ErrorKind.AMBIGUOUS, f"duplicate content: {detail}", reason=DUPLICATE)
    if any(marker in lowered for marker in REPLY_RULE_MARKERS):
        return error(ErrorKind.NOT_PERMITTED, f"reply not allowed by X: {detail}")
    if any(marker in lowered for marker in TARGET_GONE_MARKERS):
        return error(ErrorKind.PERMANENT, reason=TARGET_GONE)
    problem = str((body or {}).get("type", ""))
    if problem.endswith(CREDENTIAL_PROBLEMS):
        return error(ErrorKind.TRANSIENT, f"X refused our app or credentials: {detail}")
    return error(ErrorKind.PERMANENT)


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


def _usage_cap_end(body: dict[str, Any] | None) -> float | None:
    """When X's usage-cap 429 lifts: the start of the next period (UTC)."""
    if not body:
        return None
    if (
        not str(body.get("type", "")).endswith("usage-capped")
        and body.get("title") != "UsageCapExceeded"
    ):
        return None
    now = datetime.now(UTC)
    if str(body.get("period", "Monthly")).lower() == "daily":
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return day.timestamp() + 24 * 60 * 60
    if now.month == 12:
        return datetime(now.year + 1, 1, 1, tzinfo=UTC).timestamp()
    return datetime(now.year, now.month + 1, 1, tzinfo=UTC).timestamp()


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


def _user(data: dict[str, Any]) -> User:
    return User(id=str(data["id"]), username=data["username"], name=data.get("name", ""))


def _users_by_name(body: dict[str, Any]) -> dict[str, User]:
    users = [_user(item) for item in body.get("data") or []]
    return {user.username.lower(): user for user in users}


def _page(body: dict[str, Any]) -> Page:
    _raise_for_missing_resource(body)
    usernames = {
        str(user["id"]): user["username"] for user in (body.get("includes") or {}).get("users", [])
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
        text=data["text"],
        author_id=author_id,
        author_username=usernames.get(author_id),
        created_at=datetime.fromisoformat(data["created_at"]),
        conversation_id=data.get("conversation_id"),
        in_reply_to_user_id=data.get("in_reply_to_user_id"),
        referenced=tuple(
            (ref["type"], str(ref["id"])) for ref in data.get("referenced_tweets") or []
        ),
        mentions=tuple(m["username"] for m in entities.get("mentions") or []),
    )
