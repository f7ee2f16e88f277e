"""Retry with exponential backoff and full jitter, built on tenacity.

``with_backoff`` keeps the seed's signature and adds what it lacked: an explicit
``retry_on`` (no default: say what is retryable), a total ``deadline``, honouring a
service's own "come back in N seconds" (``exc.retry_after``), and a testing switch
that never sleeps. A wait longer than ``max_delay`` is not slept inside a worker:
the call raises ``RetryLater(retry_at)`` so the caller can reschedule the work.

tenacity does the attempt loop, sync and async alike; this module only decides the
waits and when to stop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import tenacity

from resilience.errors import RetryLater

__all__ = ["RetryLater", "backoff_delay", "set_testing", "with_backoff"]

P = ParamSpec("P")
R = TypeVar("R")

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

_testing = False


def set_testing(on: bool) -> None:
    """In testing mode the retry loop runs all its attempts without sleeping."""
    global _testing
    _testing = on


def backoff_delay(
    attempt: int, *, base_delay: float, max_delay: float, exponential_base: float
) -> float:
    """Full jitter: uniform in [0, min(max_delay, base_delay * exponential_base**(attempt-1))]."""
    ceiling = min(max_delay, base_delay * exponential_base ** (attempt - 1))
    return random.uniform(0, ceiling)


def with_backoff(
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 10.0,
    exponential_base: float = 2.0,
    *,
    retry_on: RetryOn,
    deadline: float = 60.0,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Retry the decorated function up to ``max_retries`` times after its first try.

    Waits grow exponentially with full jitter, capped at ``max_delay``; no retry starts
    after ``deadline`` seconds from the first attempt. An exception's ``retry_after``
    (seconds) is a lower bound for the next wait; if it exceeds ``max_delay`` or the
    deadline, ``RetryLater`` is raised instead of sleeping.
    """
    if max_retries < 0 or base_delay < 0 or max_delay < 0 or deadline <= 0:
        raise ValueError("max_retries, base_delay and max_delay must be >= 0, deadline > 0")
    should_retry = _predicate(retry_on)

    def wait(state: tenacity.RetryCallState) -> float:
        delay = backoff_delay(
            state.attempt_number,
            base_delay=base_delay,
            max_delay=max_delay,
            exponential_base=exponential_base,
        )
        hint = _retry_after(state.outcome.exception())
        return delay if hint is None else max(delay, hint)

    def stop(state: tenacity.RetryCallState) -> bool:
        return (
            state.attempt_number > max_retries
            or state.upcoming_sleep > max_delay
            or (state.seconds_since_start or 0) + state.upcoming_sleep > deadline
        )

    def give_up(state: tenacity.RetryCallState) -> Any:
        exc = state.outcome.exception()
        hint = _retry_after(exc)
        # Only a real wait the service asked for becomes RetryLater; a reset that has
        # already passed (hint 0) leaves the original error to the caller.
        too_long = bool(hint) and (
            hint > max_delay or (state.seconds_since_start or 0) + hint > deadline
        )
        if too_long:
            raise RetryLater(time.time() + hint, exc) from exc
        raise exc

    options: dict[str, Any] = {
        "retry": tenacity.retry_if_exception(should_retry),
        "wait": wait,
        "stop": stop,
        "retry_error_callback": give_up,
    }

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                retrying = tenacity.AsyncRetrying(sleep=_async_sleep, **options)
                return await retrying(fn, *args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return tenacity.Retrying(sleep=_sleep, **options)(fn, *args, **kwargs)

        return wrapper

    return decorate


def _predicate(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if isinstance(retry_on, tuple):
        classes = retry_on
        return lambda exc: isinstance(exc, classes)
    return retry_on


def _retry_after(exc: BaseException | None) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None


def _sleep(seconds: float) -> None:
    if not _testing:
        time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    if not _testing:
        await asyncio.sleep(seconds)
