"""Holds: "do not call this until then", shared by every process through the Django cache.

A client that is told to come back later (a rate-limit reset) holds the thing it called
under a key of its choosing; any process that asks ``held_until`` before then is told
to wait, so nobody spends a request to learn what another process already learned.
Knows nothing about any service: keys and times are the caller's.

The cache is shared in this project (Redis, or a database table). A cache that fails
is logged and treated as holding nothing: a hold saves requests, it never stops work.
"""

from __future__ import annotations

import logging
import math
import time

from django.core.cache import cache

__all__ = ["held_until", "hold"]

log = logging.getLogger(__name__)

# Kept a little past the hold so a process whose clock runs behind still sees it; the
# time stored, not the cache's expiry, decides whether a key is held.
EXPIRY_MARGIN = 60


def hold(key: str, until: float, *, now: float | None = None) -> None:
    """Hold ``key`` until ``until`` (Unix seconds); an existing later hold is kept."""
    now = time.time() if now is None else now
    if until <= now:
        return  # nothing to hold
    try:
        existing = _stored(key)
        if existing is not None and existing >= until:
            return
        # get-then-set is not atomic: two processes holding one key at once may leave
        # the earlier time. They learned the same reset from X, so the times barely differ.
        cache.set(key, float(until), timeout=math.ceil(until - now) + EXPIRY_MARGIN)
    except Exception as exc:  # any backend's failure: Redis, database, pickling
        log.warning("could not record hold %s until %.0f: %s", key, until, exc)


def held_until(key: str, now: float | None = None) -> float | None:
    """When the hold on ``key`` ends, or None when it is not held (or the cache failed)."""
    now = time.time() if now is None else now
    try:
        until = _stored(key)
    except Exception as exc:  # any backend's failure: treat as not held
        log.warning("could not read hold %s: %s", key, exc)
        return None
    return until if until is not None and until > now else None


def _stored(key: str) -> float | None:
    value = cache.get(key)
    # Anything but a number under our key is not a hold we wrote.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
