"""Our own X account, remembered: X bills a user read every time it is asked for."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from django.core.cache import cache

if TYPE_CHECKING:
    from bot.clients.x import User, XClient

CACHE_KEY = "replyguy:x:me"
REMEMBER_FOR = 24 * 60 * 60  # seconds; the account behind a token does not change


def remembered_account() -> User | None:
    from bot.clients.x import User

    data = cache.get(CACHE_KEY)
    return User(**data) if data else None


def our_account(x: XClient) -> User:
    """Our account as X knows it; asked once a day at most, per the shared cache."""
    me = x.me()
    data = dataclasses.asdict(me)
    if cache.get(CACHE_KEY) != data:
        cache.set(CACHE_KEY, data, REMEMBER_FOR)
    return me
