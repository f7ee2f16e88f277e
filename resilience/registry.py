"""The breakers configured in ``settings.RESILIENCE["BREAKERS"]``, one per process."""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from resilience.breaker import CircuitBreaker, Listener
from resilience.stores import BreakerStore, DatabaseStore, MemoryStore, RedisStore

__all__ = ["add_listener", "all_breakers", "clear", "get_breaker"]

_breakers: dict[str, CircuitBreaker] = {}
_stores: dict[str, BreakerStore] = {}
# Heard by every breaker built here (the alerts, wired in ``apps.py``); kept by ``clear``.
_listeners: list[Listener] = []
_lock = threading.Lock()


def get_breaker(name: str) -> CircuitBreaker:
    """The process's breaker called ``name``; KeyError names the configured ones."""
    breaker = _breakers.get(name)
    if breaker is not None:
        return breaker
    with _lock:
        if name not in _breakers:
            _breakers[name] = _build(name)
        return _breakers[name]


def all_breakers() -> list[CircuitBreaker]:
    return [get_breaker(name) for name in settings.RESILIENCE["BREAKERS"]]


def add_listener(listener: Listener) -> None:
    """Have every configured breaker, built or yet to be built, call ``listener``."""
    with _lock:
        if listener in _listeners:
            return
        _listeners.append(listener)
        for breaker in _breakers.values():
            breaker.add_listener(listener)


def clear() -> None:
    """Forget built breakers and stores (tests and settings changes)."""
    with _lock:
        _breakers.clear()
        _stores.clear()


def _build(name: str) -> CircuitBreaker:
    config: dict[str, Any] = dict(settings.RESILIENCE["BREAKERS"].get(name) or {})
    if not config:
        known = ", ".join(sorted(settings.RESILIENCE["BREAKERS"]))
        raise KeyError(f"no circuit breaker named {name!r}; configured: {known}")
    store = _store(config.pop("store", settings.RESILIENCE["STORE"]))
    failure_on = config.pop("failure_on")
    if isinstance(failure_on, str):
        failure_on = import_string(failure_on)
    return CircuitBreaker(
        name,
        failure_on=failure_on,
        store=store,
        snapshot_ttl=settings.RESILIENCE["SNAPSHOT_TTL"],
        listeners=tuple(_listeners),
        **config,
    )


def _store(kind: str) -> BreakerStore:
    if kind not in _stores:
        if kind == "database":
            _stores[kind] = DatabaseStore()
        elif kind == "redis":
            _stores[kind] = RedisStore(settings.RESILIENCE["REDIS_URL"])
        elif kind == "memory":
            _stores[kind] = MemoryStore()
        else:
            raise ValueError(f"unknown breaker store {kind!r}: use database, redis or memory")
    return _stores[kind]
