"""Our own X account, remembered: X bills a user read every time it is asked for."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.cache import cache

if TYPE_CHECKING:
    from bot.clients.x import User, XClient

REMEMBER_FOR = 24 * 60 * 60  # seconds; the account behind a token does not change


def cache_key() -> str:
    """Per X and access token: new credentials (the sandbox's, then a real account's)
    are never answered with the account of the old ones."""
    seen = f"{settings.X_API_BASE_URL}\n{settings.X_ACCESS_TOKEN}".encode()
    return f"replyguy:x:me:{hashlib.sha256(seen).hexdigest()[:16]}"


def remembered_account() -> User | None:
    from bot.clients.x import User

    data = cache.get(cache_key())
    return User(**data) if data else None


def our_account(x: XClient) -> User:
    """Our account as X knows it; asked once a day at most, per the shared cache."""
    me = x.me()
    data = dataclasses.asdict(me)
    if cache.get(cache_key()) != data:
        cache.set(cache_key(), data, REMEMBER_FOR)
    return me
