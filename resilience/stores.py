"""Where breaker state lives: process memory, the database, or Redis.

A store offers two operations: ``load(name)`` and ``update(name, change)``, where
``update`` applies a pure ``change`` (see ``resilience.state``) inside one atomic
read-modify-write and returns the states before and after. A store that cannot be
reached raises ``StoreUnavailable``; the breaker then falls back to local state.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Protocol

from resilience.state import BreakerState

__all__ = ["BreakerStore", "DatabaseStore", "MemoryStore", "RedisStore", "StoreUnavailable"]

Change = Callable[[BreakerState], BreakerState]


class StoreUnavailable(Exception):
    """The shared store could not be read or written."""


class BreakerStore(Protocol):
    kind: str
    shared: bool  # seen by every process
    blocking: bool  # does network or database I/O (async callers hop to a thread)

    def load(self, name: str) -> BreakerState: ...

    def update(self, name: str, change: Change) -> tuple[BreakerState, BreakerState]: ...


class MemoryStore:
    """One process's state. Used for the ``database`` breaker and as the fallback."""

    kind = "memory"
    shared = False
    blocking = False

    def __init__(self) -> None:
        self._states: dict[str, BreakerState] = {}
        self._lock = threading.Lock()

    def load(self, name: str) -> BreakerState:
        return self._states.get(name, BreakerState())

    def update(self, name: str, change: Change) -> tuple[BreakerState, BreakerState]:
        with self._lock:
            before = self._states.get(name, BreakerState())
            after = change(before)
            self._states[name] = after
        return before, after

    def put(self, name: str, state: BreakerState) -> None:
        with self._lock:
            self._states[name] = state


class DatabaseStore:
    """State in the ``resilience_breaker`` table, one row per breaker.

    ``update`` locks the row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
    IMMEDIATE transactions serialise writers) so concurrent processes apply their
    changes one after another. Inside a caller's own transaction the write joins
    that transaction, so breakers are meant to wrap calls made outside one (network
    calls should never hold a transaction open anyway).
    """

    kind = "database"
    shared = True
    blocking = True

    def __init__(self, using: str = "default") -> None:
        self.using = using

    def load(self, name: str) -> BreakerState:
        from django.db import DatabaseError

        from resilience.models import BreakerRecord

        try:
            data = (
                BreakerRecord.objects.using(self.using)
                .filter(name=name)
                .values_list("data", flat=True)
                .first()
            )
        except DatabaseError as exc:
            raise StoreUnavailable(f"database: {exc}") from exc
        return BreakerState.from_dict(data) if data else BreakerState()

    def update(self, name: str, change: Change) -> tuple[BreakerState, BreakerState]:
        from django.db import DatabaseError, transaction

        from resilience.models import BreakerRecord

        try:
            with transaction.atomic(using=self.using):
                record, _ = (
                    BreakerRecord.objects.using(self.using)
                    .select_for_update()
                    .get_or_create(name=name)
                )
                before = BreakerState.from_dict(record.data) if record.data else BreakerState()
                after = change(before)
                if after != before:
                    record.data = after.to_dict()
                    record.save(update_fields=["data", "updated_at"])
        except DatabaseError as exc:
            raise StoreUnavailable(f"database: {exc}") from exc
        return before, after


# Seconds a Redis store that just failed is taken as unreachable without asking it.
UNREACHABLE_FOR = 5.0


class RedisStore:
    """State as one JSON document per breaker, updated with WATCH/MULTI/EXEC.

    The optimistic transaction retries when another process wrote the key in between,
    so every change is applied to the latest state exactly once.
    """

    kind = "redis"
    shared = True
    blocking = True

    def __init__(
        self, url: str, *, prefix: str = "replyguy:breaker:", timeout: float = 2.0
    ) -> None:
        import redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._errors = (redis.RedisError,)
        self._watch_error = redis.WatchError
        self.prefix = prefix
        # After a failure, every breaker in this process is told at once for a moment
        # instead of each waiting out the timeout again (a hung Redis would otherwise
        # cost a health probe one timeout per breaker).
        self._down_until = 0.0

    def _check_up(self) -> None:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("redis: unreachable a moment ago; not asked again yet")

    def _failed(self, exc: Exception) -> StoreUnavailable:
        self._down_until = time.monotonic() + UNREACHABLE_FOR
        return StoreUnavailable(f"redis: {exc}")

    def load(self, name: str) -> BreakerState:
        self._check_up()
        try:
            raw = self._redis.get(self.prefix + name)
        except self._errors as exc:
            raise self._failed(exc) from exc
        return _decode(raw)

    def update(self, name: str, change: Change) -> tuple[BreakerState, BreakerState]:
        key = self.prefix + name
        self._check_up()
        try:
            with self._redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        before = _decode(pipe.get(key))
                        after = change(before)
                        if after == before:
                            pipe.unwatch()
                            return before, after
                        pipe.multi()
                        pipe.set(key, json.dumps(after.to_dict()))
                        pipe.execute()
                        return before, after
                    except self._watch_error:
                        continue
        except self._errors as exc:
            raise self._failed(exc) from exc

    def delete(self, name: str) -> None:
        self._redis.delete(self.prefix + name)


def _decode(raw: bytes | None) -> BreakerState:
    return BreakerState.from_dict(json.loads(raw)) if raw else BreakerState()
