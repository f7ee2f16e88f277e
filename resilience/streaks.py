"""The same permanent error on several different items in a row: a setup problem, not theirs.

A service that refuses every item alike (a misrouted URL, a model that answers nothing
usable, a permission X names in a way nobody listed) looks item-level on each call. A
streak of one error on ``threshold`` different items, with no success between, is
taken as the service's. State lives in the shared cache, so the streak counts across
workers; a lost update only delays the verdict by one item.
"""

from __future__ import annotations

import logging
import re

from django.core.cache import cache

__all__ = ["STREAK_THRESHOLD", "error_signature", "streak_broken", "streak_extended"]

log = logging.getLogger(__name__)

STREAK_THRESHOLD = 3
_KEEP = 24 * 60 * 60  # seconds
_NUMBERS = re.compile(r"\d+")


def error_signature(status: int | None, message: str) -> str:
    """What makes two errors the same: the status and the words, without ids or counts."""
    return f"{status or '-'}:{_NUMBERS.sub('#', message.lower())[:200]}"


def streak_extended(
    scope: str, signature: str, item: str, *, threshold: int = STREAK_THRESHOLD
) -> bool:
    """Count this error for ``item``; True when ``threshold`` different items share it."""
    key = _key(scope)
    try:
        streak = cache.get(key) or {}
        items = streak.get("items", []) if streak.get("signature") == signature else []
        if item not in items:
            items = [*items, item][-threshold:]
        cache.set(key, {"signature": signature, "items": items}, _KEEP)
    except Exception as exc:  # the cache is an aid here, never a reason to fail the item
        log.warning("error streak for %s not recorded: %s", scope, exc)
        return False
    return len(items) >= threshold


def streak_broken(scope: str) -> None:
    """A success: the errors before it were the items' own."""
    try:
        if cache.get(_key(scope)) is not None:
            cache.delete(_key(scope))
    except Exception as exc:
        log.warning("error streak for %s not cleared: %s", scope, exc)


def _key(scope: str) -> str:
    return f"replyguy:streak:{scope}"
