"""``with_backoff``'s rules, through its public API, on a controlled clock.

Nothing here sleeps. Tests that look at the waits replace the module's sleep seam with
the ``timeline`` fixture, which records each wait and moves a fake ``time.monotonic``
by it (the clock tenacity measures the deadline with); the rest rely on the session's
testing switch. Jitter draws come from a seeded ``random``, so every run is the same.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from resilience import retry
from resilience.errors import ErrorKind, RetryLater, ServiceError, is_service_failure
from resilience.retry import backoff_delay, set_testing, with_backoff

if TYPE_CHECKING:
    from tests.conftest import FakeClock

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
Runner = Callable[[Decorator, Callable[[], Any]], Any]

NOW = 1_900_000_000.0  # wall-clock seconds for tests that check RetryLater.retry_at


class Down(Exception):
    pass


class Timeout(Down):
    pass


class BadItem(Exception):
    pass


class RateLimited(Exception):
    """A service's "come back in N seconds", in the shape ``with_backoff`` reads."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after} s")
        self.retry_after = retry_after


class Service:
    """An outside call: fails ``failures`` times with a fresh error each time, then answers.

    Keeps what the retry loop did to it: the errors it raised and when each call started
    on ``time.monotonic``. A ``clock`` makes each call take ``takes`` seconds on it.
    """

    def __init__(
        self,
        error: Callable[[int], BaseException],
        *,
        failures: int = 1_000,
        takes: float = 0.0,
        clock: FakeClock | None = None,
    ) -> None:
        self.error = error
        self.failures = failures
        self.takes = takes
        self.clock = clock
        self.raised: list[BaseException] = []
        self.starts: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.starts)

    def __call__(self) -> str:
        self.starts.append(time.monotonic())
        if self.clock is not None:
            self.clock.advance(self.takes)
        if self.calls <= self.failures:
            exc = self.error(self.calls)
            self.raised.append(exc)
            raise exc
        return "ok"


class Timeline:
    """The retry loop's sleeps: each wait is recorded and moves the fake clock forward."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.start = clock()
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture(autouse=True)
def seeded_random() -> Iterator[None]:
    """Jitter comes from the global ``random``; a fixed seed makes every run repeatable."""
    state = random.getstate()
    random.seed(20_240_601)
    yield
    random.setstate(state)


@pytest.fixture
def timeline(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Timeline:
    # tenacity reads time.monotonic for the start and for each outcome (seconds_since_start);
    # time_machine leaves monotonic alone, so the fake clock stands in for it here.
    monkeypatch.setattr(time, "monotonic", clock)
    recorded = Timeline(clock)
    monkeypatch.setattr(retry, "_sleep", recorded.sleep)
    monkeypatch.setattr(retry, "_async_sleep", recorded.async_sleep)
    return recorded


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Decorate a body as a plain function or as an ``async def`` and call it once.

    Each rule that takes ``run`` is checked on both of tenacity's loops.
    """

    def run_sync(decorator: Decorator, body: Callable[[], Any]) -> Any:
        return decorator(body)()

    def run_async(decorator: Decorator, body: Callable[[], Any]) -> Any:
        @decorator
        async def call() -> Any:
            await asyncio.sleep(0)
            return body()

        assert inspect.iscoroutinefunction(call)
        return asyncio.run(call())

    return run_sync if request.param == "sync" else run_async


@pytest.fixture
def sleeping_for_real() -> Iterator[None]:
    set_testing(False)
    yield
    set_testing(True)


def down(n: int) -> Down:
    return Down(f"down on call {n}")


def always(error: BaseException) -> Callable[[], Any]:
    def fail() -> Any:
        raise error

    return fail


# --- what is retried --------------------------------------------------------------------

RETRY_ON_FORMS = [
    pytest.param((Down, RateLimited), lambda n: Timeout(f"{n}"), BadItem("400"), id="tuple"),
    pytest.param(Down, lambda n: Timeout(f"{n}"), BadItem("400"), id="class"),
    pytest.param(
        is_service_failure,
        lambda n: ServiceError("503", kind=ErrorKind.TRANSIENT, status=503),
        ServiceError("404", kind=ErrorKind.PERMANENT, status=404),
        id="predicate",
    ),
]


@pytest.mark.parametrize(("retry_on", "retryable", "other"), RETRY_ON_FORMS)
def test_retries_the_named_errors_until_a_call_succeeds(run, timeline, retry_on, retryable, other):
    service = Service(retryable, failures=2)

    assert run(with_backoff(3, retry_on=retry_on), service) == "ok"
    assert service.calls == 3
    assert len(timeline.waits) == 2


@pytest.mark.parametrize(("retry_on", "retryable", "other"), RETRY_ON_FORMS)
def test_other_errors_raise_at_once_after_one_call(run, timeline, retry_on, retryable, other):
    service = Service(lambda n: other)

    with pytest.raises(type(other)) as raised:
        run(with_backoff(3, retry_on=retry_on), service)
    assert raised.value is other
    assert service.calls == 1
    assert timeline.waits == []


def test_an_unretried_error_is_raised_as_is_even_when_it_asks_for_a_wait(run, timeline):
    service = Service(lambda n: RateLimited(retry_after=600))

    with pytest.raises(RateLimited):
        run(with_backoff(3, max_delay=10, retry_on=Down), service)
    assert service.calls == 1
    assert timeline.waits == []


def test_retry_on_has_no_default():
    with pytest.raises(TypeError):
        with_backoff(3)  # type: ignore[call-arg]


# --- giving up --------------------------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 1, 3, 6])
def test_gives_up_after_max_retries_plus_one_calls_with_the_last_error(run, timeline, max_retries):
    service = Service(down)

    with pytest.raises(Down) as raised:
        run(with_backoff(max_retries, deadline=1e6, retry_on=Down), service)
    assert service.calls == max_retries + 1
    assert len(timeline.waits) == max_retries
    assert raised.value is service.raised[-1]
    assert type(raised.value) is Down
    assert str(raised.value) == f"down on call {max_retries + 1}"


def test_defaults_allow_three_retries(run, timeline):
    service = Service(down)

    with pytest.raises(Down):
        run(with_backoff(retry_on=Down), service)
    assert service.calls == 4


def test_each_call_gets_its_own_attempts(timeline):
    service = Service(down, failures=3)
    fetch = with_backoff(1, retry_on=Down)(service)

    with pytest.raises(Down):
        fetch()  # calls 1 and 2 fail
    assert fetch() == "ok"  # call 3 fails, call 4 answers: a fresh budget of one retry
    assert service.calls == 4


def test_arguments_reach_every_attempt_and_the_answer_comes_back(timeline):
    seen: list[tuple[Any, ...]] = []

    @with_backoff(2, retry_on=Down)
    def fetch(user_id: int, *, page: str) -> str:
        seen.append((user_id, page))
        if len(seen) < 2:
            raise Down("once")
        return f"{user_id}:{page}"

    assert fetch(42, page="next") == "42:next"
    assert seen == [(42, "next"), (42, "next")]


# --- backoff with full jitter -----------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base_delay", "max_delay", "exponential_base", "ceiling"),
    [
        (1, 1, 10, 2, 1),
        (2, 1, 10, 2, 2),
        (3, 1, 10, 2, 4),
        (4, 1, 10, 2, 8),
        (5, 1, 10, 2, 10),
        (12, 1, 10, 2, 10),
        (3, 0.5, 100, 3, 4.5),
        (1, 30, 10, 2, 10),
    ],
)
def test_backoff_delay_is_full_jitter_under_the_capped_exponential_ceiling(
    attempt, base_delay, max_delay, exponential_base, ceiling
):
    draws = [
        backoff_delay(
            attempt,
            base_delay=base_delay,
            max_delay=max_delay,
            exponential_base=exponential_base,
        )
        for _ in range(2_000)
    ]

    assert all(0 <= draw <= ceiling for draw in draws)
    assert max(draws) > 0.98 * ceiling
    assert min(draws) < 0.02 * ceiling
    assert len(set(draws)) > 1_900


def test_backoff_delay_is_zero_without_a_base_delay():
    assert {
        backoff_delay(n, base_delay=0, max_delay=10, exponential_base=2) for n in range(1, 6)
    } == {0}


def test_waits_grow_within_the_exponential_ceilings_and_never_pass_max_delay(run, timeline):
    ceilings = [1, 2, 4, 8, 10, 10]
    by_retry: list[list[float]] = [[] for _ in ceilings]
    decorator = with_backoff(
        len(ceilings), base_delay=1, max_delay=10, exponential_base=2, deadline=1e6, retry_on=Down
    )

    for _ in range(300):
        timeline.waits.clear()
        with pytest.raises(Down):
            run(decorator, always(Down("down")))
        assert len(timeline.waits) == len(ceilings)
        for waits, wait in zip(by_retry, timeline.waits, strict=True):
            waits.append(wait)

    for ceiling, waits in zip(ceilings, by_retry, strict=True):
        assert min(waits) >= 0
        assert max(waits) <= ceiling
        assert max(waits) > 0.9 * ceiling  # jittered waits reach up to each ceiling


# --- a service's own retry_after --------------------------------------------------------


def test_retry_after_is_the_wait_when_it_exceeds_the_backoff(run, timeline):
    service = Service(lambda n: RateLimited(retry_after=3), failures=2)

    assert run(with_backoff(3, base_delay=1, max_delay=10, retry_on=RateLimited), service) == "ok"
    assert timeline.waits == [3, 3]


def test_retry_after_is_a_lower_bound_not_a_fixed_wait(run, timeline):
    decorator = with_backoff(
        5, base_delay=4, max_delay=4, exponential_base=1, deadline=1e6, retry_on=RateLimited
    )

    for _ in range(50):
        with pytest.raises(RateLimited):
            run(decorator, always(RateLimited(retry_after=0.5)))

    assert min(timeline.waits) == 0.5
    assert max(timeline.waits) > 3.5  # the jittered backoff still wins when it is longer
    assert all(0.5 <= wait <= 4 for wait in timeline.waits)


def test_a_service_error_retry_at_sets_the_next_wait(run, timeline, time_machine):
    time_machine.move_to(NOW, tick=False)
    service = Service(
        lambda n: ServiceError("429", kind=ErrorKind.TRANSIENT, status=429, retry_at=NOW + 5),
        failures=1,
    )

    assert run(with_backoff(3, max_delay=10, retry_on=is_service_failure), service) == "ok"
    assert timeline.waits == [5]


def test_retry_after_beyond_max_delay_raises_retry_later_after_one_call(
    run, timeline, time_machine
):
    time_machine.move_to(NOW, tick=False)
    service = Service(lambda n: RateLimited(retry_after=60))

    with pytest.raises(RetryLater) as later:
        run(with_backoff(3, max_delay=10, retry_on=RateLimited), service)
    assert later.value.retry_at == NOW + 60
    assert later.value.__cause__ is service.raised[0]
    assert service.calls == 1
    assert timeline.waits == []


def test_a_rate_limit_reset_beyond_max_delay_becomes_retry_later(run, timeline, time_machine):
    time_machine.move_to(NOW, tick=False)
    service = Service(
        lambda n: ServiceError("429", kind=ErrorKind.TRANSIENT, status=429, retry_at=NOW + 900)
    )

    with pytest.raises(RetryLater) as later:
        run(with_backoff(3, max_delay=10, retry_on=is_service_failure), service)
    assert later.value.retry_at == pytest.approx(NOW + 900)
    assert isinstance(later.value.__cause__, ServiceError)
    assert later.value.__cause__.status == 429
    assert service.calls == 1
    assert timeline.waits == []


def test_retry_after_past_the_deadline_raises_retry_later(run, timeline, time_machine):
    time_machine.move_to(NOW, tick=False)
    # Within max_delay, but the first call took 5 s of a 10 s deadline.
    service = Service(lambda n: RateLimited(retry_after=8), takes=5, clock=timeline.clock)

    with pytest.raises(RetryLater) as later:
        run(with_backoff(3, max_delay=10, deadline=10, retry_on=RateLimited), service)
    assert later.value.retry_at == NOW + 8
    assert later.value.__cause__ is service.raised[0]
    assert service.calls == 1
    assert timeline.waits == []


# --- the total deadline -----------------------------------------------------------------


def test_no_retry_starts_after_the_deadline(run, timeline):
    service = Service(down, takes=3, clock=timeline.clock)

    with pytest.raises(Down) as raised:
        run(with_backoff(100, base_delay=0, deadline=10, retry_on=Down), service)
    assert [start - timeline.start for start in service.starts] == [0, 3, 6, 9]
    assert raised.value is service.raised[-1]


def test_the_deadline_counts_the_waits_too(run, timeline):
    service = Service(down, takes=1, clock=timeline.clock)

    with pytest.raises(Down):
        run(with_backoff(100, base_delay=2, max_delay=4, deadline=15, retry_on=Down), service)
    offsets = [start - timeline.start for start in service.starts]
    assert 3 <= service.calls < 101
    assert max(offsets) <= 15
    assert sum(timeline.waits) > 0
    assert offsets[-1] == pytest.approx((service.calls - 1) * 1 + sum(timeline.waits))


# --- testing mode -----------------------------------------------------------------------


def test_testing_mode_runs_every_attempt_without_sleeping(monkeypatch):
    def refuse(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s in testing mode")

    async def refuse_async(seconds: float) -> None:
        refuse(seconds)

    monkeypatch.setattr(time, "sleep", refuse)
    monkeypatch.setattr(asyncio, "sleep", refuse_async)
    slow = with_backoff(5, base_delay=100, max_delay=1_000, deadline=1e6, retry_on=Down)
    service = Service(down, failures=5)

    @slow
    async def async_service() -> str:
        return service()

    assert slow(service)() == "ok"
    assert service.calls == 6
    service.starts.clear()
    assert asyncio.run(async_service()) == "ok"
    assert service.calls == 6


def test_outside_testing_mode_the_waits_are_slept(monkeypatch, sleeping_for_real):
    slept: list[float] = []

    async def record_async(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(asyncio, "sleep", record_async)
    slow = with_backoff(3, base_delay=100, max_delay=1_000, deadline=1e6, retry_on=Down)
    service = Service(down, failures=3)

    @slow
    async def async_service() -> str:
        return service()

    assert slow(service)() == "ok"
    service.starts.clear()
    assert asyncio.run(async_service()) == "ok"
    assert len(slept) == 6
    for wait, ceiling in zip(slept, [100, 200, 400] * 2, strict=True):
        assert 0 <= wait <= ceiling


# --- the decorator itself ---------------------------------------------------------------


def test_keeps_the_wrapped_functions_name_doc_and_kind():
    @with_backoff(retry_on=Down)
    def fetch_mentions(user_id: int) -> list[str]:
        """Fetch a user's mentions."""
        return []

    @with_backoff(retry_on=Down)
    async def post_reply(text: str) -> str:
        """Post a reply."""
        return text

    assert fetch_mentions.__name__ == "fetch_mentions"
    assert fetch_mentions.__doc__ == "Fetch a user's mentions."
    assert not inspect.iscoroutinefunction(fetch_mentions)
    assert post_reply.__name__ == "post_reply"
    assert post_reply.__doc__ == "Post a reply."
    assert inspect.iscoroutinefunction(post_reply)
    assert asyncio.run(post_reply("hi")) == "hi"


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"max_retries": -1}, id="negative max_retries"),
        pytest.param({"deadline": 0}, id="zero deadline"),
        pytest.param({"deadline": -5}, id="negative deadline"),
        pytest.param({"base_delay": -1}, id="negative base_delay"),
        pytest.param({"max_delay": -1}, id="negative max_delay"),
    ],
)
def test_invalid_arguments_are_refused(arguments):
    with pytest.raises(ValueError, match="must be"):
        with_backoff(retry_on=Down, **arguments)


def test_zero_retries_is_valid_and_means_one_call(timeline):
    service = Service(down)

    with pytest.raises(Down):
        with_backoff(0, retry_on=Down)(service)()
    assert service.calls == 1


def test_a_reset_already_passed_when_the_deadline_is_spent_returns_the_error(run, timeline):
    service = Service(lambda n: RateLimited(0), takes=11, clock=timeline.clock)

    with pytest.raises(RateLimited) as raised:
        run(with_backoff(3, base_delay=0, deadline=10, retry_on=RateLimited), service)
    assert raised.value is service.raised[-1]
    assert service.calls == 1
