"""Holds in the project's shared cache (here its database table): kept, extended, expired,
and a failing cache costing nothing but a log line."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest
from django.core.cache import cache
from django.db import connection

from resilience.holds import EXPIRY_MARGIN, held_until, hold
from tests.helpers import free_port

NOW = 1_800_000_000.0
KEY = "replyguy:test:hold:search"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def test_a_hold_lasts_until_its_time():
    assert held_until(KEY, NOW) is None
    hold(KEY, NOW + 300, now=NOW)
    assert held_until(KEY, NOW) == NOW + 300
    assert held_until(KEY, NOW + 299.5) == NOW + 300
    assert held_until(KEY, NOW + 300) is None
    assert held_until("replyguy:test:hold:other", NOW) is None  # keys are independent


def test_the_later_time_wins():
    hold(KEY, NOW + 300, now=NOW)
    hold(KEY, NOW + 100, now=NOW)  # an earlier reset never shortens a hold
    assert held_until(KEY, NOW) == NOW + 300
    hold(KEY, NOW + 900, now=NOW)
    assert held_until(KEY, NOW) == NOW + 900


def test_a_time_already_past_holds_nothing():
    hold(KEY, NOW - 1, now=NOW)
    assert cache.get(KEY) is None


def test_the_cache_entry_expires_with_the_hold():
    now = time.time()
    hold(KEY, now + 300, now=now)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT expires FROM replyguy_cache WHERE cache_key = %s", [cache.make_key(KEY)]
        )
        [(expires,)] = cursor.fetchall()
    if isinstance(expires, str):  # SQLite hands the timestamp back as text
        expires = datetime.fromisoformat(expires)
    expires = expires.replace(tzinfo=expires.tzinfo or UTC).timestamp()
    # The table keeps whole seconds.
    assert now + 300 + EXPIRY_MARGIN - 1 <= expires <= now + 300 + EXPIRY_MARGIN + 2


def test_something_else_under_the_key_is_not_a_hold():
    cache.set(KEY, "soon")
    assert held_until(KEY, NOW) is None


@pytest.fixture
def broken_cache(settings):
    """A Redis cache on a port nobody listens on."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }


def test_a_failing_cache_is_logged_and_holds_nothing(broken_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="resilience.holds"):
        hold(KEY, NOW + 300, now=NOW)  # does not raise
        assert held_until(KEY, NOW) is None
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(f"could not record hold {KEY} until {NOW + 300:.0f}: ")
    assert messages[1].startswith(f"could not read hold {KEY}: ")
