"""The circuit breaker's rules, through its public API, on a controlled clock."""

from __future__ import annotations

import asyncio

import pytest

from resilience import CircuitBreaker, CircuitOpenError, ErrorKind, ServiceError
from resilience.errors import is_service_failure
from resilience.stores import MemoryStore


class Down(Exception):
    pass


class BadItem(Exception):
    pass


def fail() -> None:
    raise Down("service down")


def ok() -> str:
    return "ok"


@pytest.fixture
def breaker(clock):
    return CircuitBreaker(
        "svc",
        failure_on=(Down,),
        failure_threshold=3,
        recovery_timeout=60,
        half_open_max_calls=2,
        clock=clock,
        snapshot_ttl=0,
    )


def trip(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Down):
            breaker.call(fail)


def test_opens_after_consecutive_failures_and_refuses_with_retry_after(breaker, clock):
    trip(breaker, 2)
    assert breaker.state == "closed"
    trip(breaker, 1)
    assert breaker.state == "open"
    clock.advance(15)
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(ok)
    assert refused.value.retry_after == pytest.approx(45)
    assert refused.value.name == "svc"


def test_a_success_resets_the_consecutive_count(breaker):
    trip(breaker, 2)
    assert breaker.call(ok) == "ok"
    trip(breaker, 2)
    assert breaker.state == "closed"


def test_item_level_errors_do_not_count(breaker):
    def bad_item() -> None:
        raise BadItem("400")

    for _ in range(10):
        with pytest.raises(BadItem):
            breaker.call(bad_item)
    assert breaker.state == "closed"
    assert breaker.get_status()["total_failures"] == 0


def test_half_open_closes_after_enough_trial_successes(breaker, clock):
    trip(breaker, 3)
    clock.advance(60)
    assert breaker.state == "half_open"
    breaker.call(ok)
    assert breaker.state == "half_open"
    breaker.call(ok)
    assert breaker.state == "closed"


def test_a_failed_trial_reopens_for_a_full_timeout(breaker, clock):
    trip(breaker, 3)
    clock.advance(61)
    trip(breaker, 1)
    assert breaker.state == "open"
    assert breaker.get_status()["retry_after"] == pytest.approx(60)
    assert breaker.get_status()["opened_count"] == 2


def test_half_open_admits_only_the_trial_quota_while_trials_run(clock):
    store = MemoryStore()
    a, b, c = (
        CircuitBreaker(
            "svc",
            failure_on=(Down,),
            failure_threshold=1,
            recovery_timeout=10,
            half_open_max_calls=2,
            store=store,
            clock=clock,
            snapshot_ttl=0,
        )
        for _ in range(3)
    )
    trip(a, 1)
    clock.advance(10)
    refused = []

    def trial_that_calls_the_next(next_breaker):
        # While this trial runs, the next "process" asks for a slot.
        def body():
            if next_breaker is not None:
                try:
                    next_breaker.call(trial_that_calls_the_next(None))
                except CircuitOpenError as exc:
                    refused.append(exc)
            return "done"

        return body

    def first_trial():
        b.call(trial_that_calls_the_next(None))  # second slot
        with pytest.raises(CircuitOpenError) as exc:
            c.call(ok)  # third caller: no slot left
        refused.append(exc.value)
        return "done"

    assert a.call(first_trial) == "done"
    assert [exc.state for exc in refused] == ["half_open"]
    assert a.state == "closed"


def test_an_abandoned_trial_frees_its_slot_when_the_lease_expires(clock):
    store = MemoryStore()
    make = lambda: CircuitBreaker(  # noqa: E731
        "svc",
        failure_on=(Down,),
        failure_threshold=1,
        recovery_timeout=10,
        half_open_max_calls=1,
        trial_lease=30,
        store=store,
        clock=clock,
        snapshot_ttl=0,
    )
    crashed, survivor = make(), make()
    trip(crashed, 1)
    clock.advance(10)
    # A worker takes the only trial slot and dies without reporting back.
    assert crashed._admit(io=True) is not None
    with pytest.raises(CircuitOpenError) as refused:
        survivor.call(ok)
    assert refused.value.retry_after == pytest.approx(30)
    clock.advance(30)
    assert survivor.call(ok) == "ok"
    assert survivor.state == "closed"


def test_service_error_with_reset_opens_until_the_reset(clock):
    breaker = CircuitBreaker(
        "x",
        failure_on=is_service_failure,
        failure_threshold=5,
        recovery_timeout=60,
        clock=clock,
        snapshot_ttl=0,
    )

    def rate_limited() -> None:
        raise ServiceError("429", kind=ErrorKind.TRANSIENT, retry_at=clock() + 900)

    with pytest.raises(ServiceError):
        breaker.call(rate_limited)
    assert breaker.state == "open"
    clock.advance(899)
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(ok)
    assert refused.value.retry_after == pytest.approx(1)
    clock.advance(1)
    assert breaker.call(ok) == "ok"


def test_permanent_service_errors_pass_through_without_counting(clock):
    breaker = CircuitBreaker("x", failure_on=is_service_failure, failure_threshold=1, clock=clock)

    def gone() -> None:
        raise ServiceError("404", kind=ErrorKind.PERMANENT, status=404)

    with pytest.raises(ServiceError):
        breaker.call(gone)
    assert breaker.state == "closed"


def test_open_until_holds_the_breaker_open(breaker, clock):
    breaker.open_until(clock() + 300)
    clock.advance(299)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    clock.advance(1)
    assert breaker.call(ok) == "ok"


def test_forced_open_refuses_without_a_retry_time_until_reset(breaker, clock):
    breaker.force_open()
    clock.advance(10_000)
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(ok)
    assert refused.value.retry_after is None
    assert breaker.state == "forced_open"
    breaker.reset()
    assert breaker.call(ok) == "ok"


def test_forced_closed_counts_failures_but_never_refuses(breaker):
    breaker.force_closed()
    trip(breaker, 10)
    assert breaker.call(ok) == "ok"
    status = breaker.get_status()
    assert (status["state"], status["total_failures"]) == ("forced_closed", 10)


def test_disabled_records_nothing(breaker):
    breaker.disable()
    trip(breaker, 10)
    assert breaker.get_status()["total_failures"] == 0
    assert breaker.state == "disabled"


def test_reset_closes_an_open_breaker(breaker):
    trip(breaker, 3)
    breaker.reset()
    assert breaker.state == "closed"
    assert breaker.call(ok) == "ok"


def test_failure_rate_rule_trips_with_enough_calls(clock):
    breaker = CircuitBreaker(
        "svc",
        failure_on=(Down,),
        failure_threshold=100,
        failure_rate=0.5,
        rate_window=60,
        rate_min_calls=10,
        clock=clock,
        snapshot_ttl=0,
    )
    for _ in range(4):
        breaker.call(ok)
        trip(breaker, 1)
    assert breaker.state == "closed"  # 8 calls: below the minimum
    breaker.call(ok)
    trip(breaker, 1)
    assert breaker.state == "open"  # 10 calls, half of them failures


def test_failure_rate_window_forgets_old_calls(clock):
    breaker = CircuitBreaker(
        "svc",
        failure_on=(Down,),
        failure_threshold=100,
        failure_rate=0.5,
        rate_window=60,
        rate_min_calls=4,
        clock=clock,
        snapshot_ttl=0,
    )
    trip(breaker, 3)
    clock.advance(61)
    for _ in range(3):
        breaker.call(ok)
    trip(breaker, 1)
    assert breaker.state == "closed"  # this window: 1 failure in 4 calls


def test_decorator_on_sync_and_async_functions(breaker, clock):
    @breaker
    def sync_fail() -> None:
        raise Down

    @breaker
    async def async_ok() -> str:
        return "async ok"

    @breaker
    async def async_fail() -> None:
        raise Down

    with pytest.raises(Down):
        sync_fail()
    with pytest.raises(Down):
        asyncio.run(async_fail())
    assert asyncio.run(async_ok()) == "async ok"
    with pytest.raises(Down):
        asyncio.run(async_fail())
    with pytest.raises(Down):
        asyncio.run(async_fail())
    with pytest.raises(Down):
        asyncio.run(async_fail())
    with pytest.raises(CircuitOpenError):
        asyncio.run(async_ok())
    assert sync_fail.__name__ == "sync_fail"


def test_listeners_hear_every_transition(breaker, clock):
    heard = []
    breaker.add_listener(lambda name, old, new: heard.append((name, old, new)))
    trip(breaker, 3)
    clock.advance(60)
    breaker.call(ok)
    breaker.call(ok)
    breaker.force_open()
    assert heard == [
        ("svc", "closed", "open"),
        ("svc", "half_open", "closed"),
        ("svc", "closed", "forced_open"),
    ]


def test_a_failing_listener_does_not_break_the_call(breaker):
    def broken(name, old, new):
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    trip(breaker, 3)
    assert breaker.state == "open"


def test_status_is_a_plain_dict_for_health_and_admin(breaker, clock):
    trip(breaker, 3)
    status = breaker.get_status()
    assert status["state"] == "open"
    assert status["failures"] == 3
    assert status["last_error"] == "Down: service down"
    assert status["opened_at"].endswith("+00:00")
    assert status["store"] == "memory"
    assert status["store_error"] is None


@pytest.mark.parametrize(
    ("kind", "status", "counts"),
    [
        (ErrorKind.TRANSIENT, 503, True),
        (ErrorKind.AMBIGUOUS, None, True),  # no answer after sending: the service is unwell
        (ErrorKind.AMBIGUOUS, 502, True),
        (ErrorKind.AMBIGUOUS, 403, False),  # X's duplicate content: an answer, about the item
        (ErrorKind.PERMANENT, 400, False),
        (ErrorKind.NOT_PERMITTED, 403, False),
    ],
)
def test_which_service_errors_count_against_a_breaker(kind, status, counts):
    assert is_service_failure(ServiceError("x", kind=kind, status=status)) is counts
