"""Breaker state shared between OS processes, and what happens when the store is gone."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from django.db import connections

from resilience import CircuitBreaker, CircuitOpenError
from resilience.stores import DatabaseStore, MemoryStore, RedisStore, StoreUnavailable
from tests.helpers import until

WORKERS = 8
TRIALS = 3
RECOVERY = 1.0  # seconds; real time, because the processes share the real clock


class Down(Exception):
    pass


def _shared_breaker(store_kind: str, name: str, redis_url: str | None) -> CircuitBreaker:
    store = DatabaseStore() if store_kind == "database" else RedisStore(redis_url, prefix="t:")
    return CircuitBreaker(
        name,
        failure_on=(Down,),
        failure_threshold=1,
        recovery_timeout=RECOVERY,
        half_open_max_calls=TRIALS,
        store=store,
    )


def _worker(store_kind, name, redis_url, start, release, entered, refused):
    breaker = _shared_breaker(store_kind, name, redis_url)

    def trial() -> None:
        with entered.get_lock():
            entered.value += 1
        # Hold the trial slot until every process has asked for one.
        release.wait(30)

    start.wait(30)
    try:
        breaker.call(trial)
    except CircuitOpenError:
        with refused.get_lock():
            refused.value += 1


def run_eight_processes(
    store_kind: str, name: str, redis_url: str | None = None
) -> tuple[int, int]:
    """Open the breaker, let its timeout pass, then race 8 processes for the trial slots."""
    breaker = _shared_breaker(store_kind, name, redis_url)
    with pytest.raises(Down):
        breaker.call(lambda: (_ for _ in ()).throw(Down()))
    assert breaker.state == "open"
    time.sleep(RECOVERY)
    assert breaker.state == "half_open"

    ctx = multiprocessing.get_context("fork")
    start, release = ctx.Barrier(WORKERS), ctx.Event()
    entered, refused = ctx.Value("i", 0), ctx.Value("i", 0)
    connections.close_all()  # children must open their own connections
    procs = [
        ctx.Process(
            target=_worker, args=(store_kind, name, redis_url, start, release, entered, refused)
        )
        for _ in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    try:
        until(lambda: entered.value + refused.value >= WORKERS, timeout=60, interval=0.05)
        seen = (entered.value, refused.value)
    finally:
        release.set()
        for proc in procs:
            proc.join(30)
    assert all(proc.exitcode == 0 for proc in procs)
    assert breaker.state == "closed"  # every trial succeeded
    return seen


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_eight_processes_on_postgresql_get_exactly_the_trial_quota(unique_name):
    entered, refused = run_eight_processes("database", unique_name)
    assert (entered, refused) == (TRIALS, WORKERS - TRIALS)


def test_eight_processes_on_redis_get_exactly_the_trial_quota(redis_url, unique_name):
    entered, refused = run_eight_processes("redis", unique_name, redis_url)
    assert (entered, refused) == (TRIALS, WORKERS - TRIALS)


@pytest.mark.django_db(transaction=True)
def test_a_failure_in_one_process_opens_the_breaker_for_another(clock, unique_name):
    make = lambda: CircuitBreaker(  # noqa: E731
        unique_name,
        failure_on=(Down,),
        failure_threshold=2,
        recovery_timeout=60,
        store=DatabaseStore(),
        clock=clock,
        snapshot_ttl=1.0,
    )
    web, worker = make(), make()
    assert worker.call(lambda: "ok") == "ok"  # worker now holds a fresh "closed" snapshot
    for _ in range(2):
        with pytest.raises(Down):
            web.call(lambda: (_ for _ in ()).throw(Down()))
    assert worker.call(lambda: "stale but bounded") == "stale but bounded"
    clock.advance(1.0)  # the snapshot's age limit
    with pytest.raises(CircuitOpenError):
        worker.call(lambda: "refused")


@pytest.mark.django_db(transaction=True)
def test_the_success_path_makes_no_database_query(clock, unique_name, django_assert_num_queries):
    breaker = CircuitBreaker(
        unique_name, failure_on=(Down,), store=DatabaseStore(), clock=clock, snapshot_ttl=1.0
    )
    breaker.call(lambda: None)  # first call loads the snapshot
    with django_assert_num_queries(0):
        for _ in range(1000):
            breaker.call(lambda: None)


def test_redis_store_shares_state_between_breakers(redis_url, unique_name, clock):
    make = lambda: CircuitBreaker(  # noqa: E731
        unique_name,
        failure_on=(Down,),
        failure_threshold=1,
        recovery_timeout=60,
        store=RedisStore(redis_url, prefix="t:"),
        clock=clock,
        snapshot_ttl=0,
    )
    one, two = make(), make()
    with pytest.raises(Down):
        one.call(lambda: (_ for _ in ()).throw(Down()))
    assert two.state == "open"
    two.force_closed()
    assert one.state == "forced_closed"
    one.reset()
    assert two.call(lambda: "ok") == "ok"


class FlakyStore:
    """A shared store that can be switched off, as a database or Redis outage would."""

    kind = "database"
    shared = True
    blocking = False

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.up = True

    def load(self, name):
        if not self.up:
            raise StoreUnavailable("database: connection refused")
        return self.inner.load(name)

    def update(self, name, change):
        if not self.up:
            raise StoreUnavailable("database: connection refused")
        return self.inner.update(name, change)


def test_store_outage_falls_back_to_local_state_and_says_so(clock):
    store = FlakyStore()
    breaker = CircuitBreaker(
        "svc",
        failure_on=(Down,),
        failure_threshold=2,
        recovery_timeout=60,
        store=store,
        clock=clock,
        snapshot_ttl=0,
        store_retry=5,
    )
    store.up = False
    for _ in range(2):
        with pytest.raises(Down):
            breaker.call(lambda: (_ for _ in ()).throw(Down()))
    # The breaker still protects the service with local state.
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "refused")
    status = breaker.get_status()
    assert status["state"] == "open"
    assert status["shared"] is False
    assert "connection refused" in status["store_error"]

    store.up = True
    clock.advance(5)
    assert breaker.get_status()["shared"] is True
    assert breaker.get_status()["store_error"] is None


def test_store_outage_keeps_an_open_breaker_open(clock):
    store = FlakyStore()
    breaker = CircuitBreaker(
        "svc",
        failure_on=(Down,),
        failure_threshold=1,
        recovery_timeout=60,
        store=store,
        clock=clock,
        snapshot_ttl=0,
    )
    with pytest.raises(Down):
        breaker.call(lambda: (_ for _ in ()).throw(Down()))
    store.up = False
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "must not run")


@pytest.mark.django_db(transaction=True)
def test_forced_states_set_in_one_process_are_obeyed_in_another(clock, unique_name):
    make = lambda: CircuitBreaker(  # noqa: E731
        unique_name, failure_on=(Down,), store=DatabaseStore(), clock=clock, snapshot_ttl=0
    )
    admin, worker = make(), make()
    admin.force_open()
    with pytest.raises(CircuitOpenError) as refused:
        worker.call(lambda: "no")
    assert refused.value.state == "forced_open"
    admin.disable()
    assert worker.call(lambda: "yes") == "yes"
    assert worker.state == "disabled"
