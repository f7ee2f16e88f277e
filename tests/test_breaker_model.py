"""Hypothesis drives the breaker and a deliberately simple model through the same steps.

The model is written from the rules as an operator would state them, not from the
implementation: N consecutive failures open; after the timeout, trial calls run;
enough successful trials close; a failed trial reopens; a trial that vanishes frees
its slot when its lease ends; operators' forced states override everything.
Two breakers share one store, as two processes would, and the clock is ours.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resilience import CircuitBreaker, CircuitOpenError
from resilience.stores import MemoryStore

THRESHOLD, TIMEOUT, TRIALS, LEASE = 3, 60.0, 2, 30.0


class Down(Exception):
    pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Model:
    def __init__(self) -> None:
        self.mode = "normal"
        self.state = "closed"
        self.failures = 0
        self.open_until = 0.0
        self.successes = 0
        self.leases: list[float] = []  # expiry times of trials that never reported back

    def effective(self, now: float) -> str:
        if self.mode != "normal":
            return self.mode
        if self.state == "open" and now >= self.open_until:
            return "half_open"
        return self.state

    def admits(self, now: float) -> bool:
        if self.mode == "forced_open":
            return False
        if self.mode != "normal":
            return True
        if self.state == "open" and now >= self.open_until:
            self.state, self.successes, self.leases = "half_open", 0, []
        if self.state == "half_open":
            self.leases = [exp for exp in self.leases if exp > now]
            return len(self.leases) + self.successes < TRIALS
        return self.state == "closed"

    def succeeded(self) -> None:
        if self.mode != "normal":
            return
        if self.state == "half_open":
            self.successes += 1
            if self.successes >= TRIALS:
                self.state, self.failures, self.successes, self.leases = "closed", 0, 0, []
        else:
            self.failures = 0

    def failed(self, now: float) -> None:
        if self.mode != "normal":
            return
        if self.state == "half_open":
            self.open(now)
        elif self.state == "closed":
            self.failures += 1
            if self.failures >= THRESHOLD:
                self.open(now)

    def open(self, now: float) -> None:
        self.state, self.open_until, self.successes, self.leases = "open", now + TIMEOUT, 0, []


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        store = MemoryStore()
        self.breakers = [
            CircuitBreaker(
                "svc",
                failure_on=(Down,),
                failure_threshold=THRESHOLD,
                recovery_timeout=TIMEOUT,
                half_open_max_calls=TRIALS,
                trial_lease=LEASE,
                store=store,
                clock=self.clock,
                snapshot_ttl=0,
            )
            for _ in range(2)
        ]
        self.model = Model()

    def _call(self, which: int, outcome: str) -> None:
        def body() -> str:
            if outcome == "down":
                raise Down
            return "ok"

        admitted = self.model.admits(self.clock.now)
        try:
            result = self.breakers[which].call(body)
        except CircuitOpenError:
            assert not admitted, "breaker refused a call the model admits"
            return
        except Down:
            assert admitted, "breaker ran a call the model refuses"
            self.model.failed(self.clock.now)
            return
        assert admitted, "breaker ran a call the model refuses"
        assert result == "ok"
        self.model.succeeded()

    @rule(which=st.integers(0, 1))
    def call_succeeds(self, which: int) -> None:
        self._call(which, "ok")

    @rule(which=st.integers(0, 1))
    def call_fails(self, which: int) -> None:
        self._call(which, "down")

    @rule(seconds=st.sampled_from([0.5, 1.0, 10.0, 29.9, 30.0, 59.9, 60.0, 120.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: self.model.effective(self.clock.now) == "half_open")
    @rule(which=st.integers(0, 1))
    def trial_vanishes(self, which: int) -> None:
        """A process takes a trial slot and is killed before reporting back."""
        admitted = self.model.admits(self.clock.now)
        token = self.breakers[which]._admit(io=True) if admitted else None
        if admitted:
            assert token is not None
            self.model.leases.append(self.clock.now + LEASE)

    @rule(
        which=st.integers(0, 1), action=st.sampled_from(["force_open", "force_closed", "disable"])
    )
    def operator_forces(self, which: int, action: str) -> None:
        getattr(self.breakers[which], action)()
        self.model.mode = {"force_open": "forced_open", "force_closed": "forced_closed"}.get(
            action, "disabled"
        )

    @rule(which=st.integers(0, 1))
    def operator_resets(self, which: int) -> None:
        self.breakers[which].reset()
        self.model = Model()

    @invariant()
    def both_breakers_report_the_model_state(self) -> None:
        expected = self.model.effective(self.clock.now)
        assert [breaker.state for breaker in self.breakers] == [expected, expected]


BreakerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_breaker_matches_model = BreakerMachine.TestCase


def test_model_machine_is_not_vacuous() -> None:
    # Guard against a machine whose rules never reach half-open: drive it by hand.
    machine = BreakerMachine()
    for _ in range(THRESHOLD):
        machine.call_fails(0)
    assert machine.breakers[1].state == "open"
    machine.time_passes(60.0)
    machine.trial_vanishes(1)
    machine.call_succeeds(0)
    machine.call_fails(1)  # no slot left: refused, so it cannot fail the trial
    assert machine.breakers[0].state == "half_open"
    machine.time_passes(30.0)
    machine.call_succeeds(1)
    assert machine.breakers[0].state == "closed"
