"""How long the pipeline waits, holds and tries: every delay, lease and limit in one place.

The stages import these names and the two functions below; no stage writes a delay
of its own, so changing one rule changes it everywhere it applies.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = [
    "DEAD_LETTER_FIRST_DELAY",
    "DEAD_LETTER_RETRIES",
    "ITEM_FIRST_DELAY",
    "MAX_DELAY",
    "MAX_DRAFT_ATTEMPTS",
    "MAX_PUBLISH_ATTEMPTS",
    "PUBLISH_LEASE",
    "SERVICE_WAIT",
    "SIMILAR_WITHIN",
    "TIMELINE_LAG",
    "WATCH_SENT_FOR",
    "backoff",
    "draft_lease",
    "service_wait_until",
]

# A worker publishing a reply holds it this long; past it, the worker is taken for dead.
PUBLISH_LEASE = timedelta(minutes=5)
# Item-level failures each spend one attempt; the last one sends the item to the
# dead-letter queue. The model gets this many tries at a valid reply, each with the
# last problem as feedback.
MAX_PUBLISH_ATTEMPTS = 3
MAX_DRAFT_ATTEMPTS = 3
# A dead-letter row is sent back this many times (5, 10, 20, 40, 80 minutes apart).
DEAD_LETTER_RETRIES = 5
DEAD_LETTER_FIRST_DELAY = timedelta(minutes=5)
# Item retries after an item-level failure: 2, 4, 8 ... minutes.
ITEM_FIRST_DELAY = timedelta(minutes=2)
# X's timeline can trail a write by a moment: a finished call is judged this long after.
TIMELINE_LAG = timedelta(minutes=1)
# When a service gave no time to come back.
SERVICE_WAIT = timedelta(seconds=60)
# A reply that was sent, or handed off to the owner, is looked for on our timeline this
# long before we stop reading for it.
WATCH_SENT_FOR = timedelta(days=3)
# A draft is compared with our replies of this period (X flags repetitive replies).
SIMILAR_WITHIN = timedelta(days=7)
MAX_DELAY = timedelta(hours=6)


def backoff(attempt: int, first: timedelta = ITEM_FIRST_DELAY) -> timedelta:
    """The wait after failed attempt number ``attempt`` (1, 2, ...): doubling, capped."""
    return min(first * 2 ** max(attempt - 1, 0), MAX_DELAY)


def draft_lease(variants: int, call_timeout: float) -> timedelta:
    """How long a worker drafting a post holds it: the slowest draft it may make.

    A server without structured output refuses one request, then answers one per
    variant, each up to the model's timeout; a relevance score may come first.
    """
    return timedelta(seconds=call_timeout * (variants + 2) + 30)


def service_wait_until(now: datetime, retry_at: float | None) -> datetime:
    """When to try a service again: the time it named, else a short wait."""
    if retry_at:
        return max(now, datetime.fromtimestamp(retry_at, UTC))
    return now + SERVICE_WAIT
