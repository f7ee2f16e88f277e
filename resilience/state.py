"""The breaker's state and its transitions, as pure functions.

Every store (memory, database, Redis) applies these same functions inside its own
atomic read-modify-write, so the rules live in one place and can be tested without
any store at all. Times are Unix seconds supplied by the caller.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "BreakerState",
    "Mode",
    "Policy",
    "State",
    "acquire",
    "add_successes",
    "effective_state",
    "force",
    "hold_open",
    "record_failure",
    "record_success",
    "reset",
]


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Mode(enum.StrEnum):
    """What an operator has set. Anything but NORMAL overrides the automatic state."""

    NORMAL = "normal"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"  # admits everything, still counts failures, never trips
    DISABLED = "disabled"  # admits everything and records nothing


@dataclass(frozen=True)
class Policy:
    failure_threshold: int
    recovery_timeout: float
    half_open_max_calls: int
    # How long a half-open trial may hold its slot before another caller may take it.
    trial_lease: float = 60.0
    # Optional second trip rule: failure rate over a tumbling window, given enough calls.
    failure_rate: float | None = None
    rate_window: float = 60.0
    rate_min_calls: int = 20

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_max_calls < 1:
            raise ValueError("failure_threshold and half_open_max_calls must be at least 1")
        if self.recovery_timeout < 0 or self.trial_lease <= 0:
            raise ValueError("recovery_timeout must be >= 0 and trial_lease > 0")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")


@dataclass(frozen=True)
class BreakerState:
    state: State = State.CLOSED
    mode: Mode = Mode.NORMAL
    failures: int = 0  # consecutive failures while closed
    opened_at: float | None = None
    open_until: float | None = None
    trials: tuple[tuple[str, float], ...] = ()  # half-open leases: (token, expires at)
    trial_successes: int = 0
    window_start: float = 0.0
    window_calls: int = 0
    window_failures: int = 0
    total_failures: int = 0
    opened_count: int = 0
    last_failure_at: float | None = None
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["trials"] = [list(trial) for trial in self.trials]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BreakerState:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["state"] = State(values.get("state", State.CLOSED))
        values["mode"] = Mode(values.get("mode", Mode.NORMAL))
        values["trials"] = tuple(
            (str(token), float(exp)) for token, exp in values.get("trials", ())
        )
        return cls(**values)


def effective_state(s: BreakerState, now: float) -> str:
    """What the breaker is, as an operator would name it."""
    if s.mode is not Mode.NORMAL:
        return s.mode.value
    if s.state is State.OPEN and s.open_until is not None and now >= s.open_until:
        return State.HALF_OPEN.value
    return s.state.value


def live_trials(s: BreakerState, now: float) -> tuple[tuple[str, float], ...]:
    return tuple(trial for trial in s.trials if trial[1] > now)


def half_open_is_full(s: BreakerState, p: Policy, now: float) -> bool:
    return len(live_trials(s, now)) + s.trial_successes >= p.half_open_max_calls


def acquire(s: BreakerState, p: Policy, now: float, token: str) -> BreakerState:
    """Ask for a half-open trial slot; granted when ``token`` is in the result's trials."""
    if s.mode is not Mode.NORMAL or s.state is State.CLOSED:
        return s
    if s.state is State.OPEN:
        if s.open_until is not None and now < s.open_until:
            return s
        s = replace(s, state=State.HALF_OPEN, trials=(), trial_successes=0)
    s = replace(s, trials=live_trials(s, now))
    if half_open_is_full(s, p, now):
        return s
    return replace(s, trials=(*s.trials, (token, now + p.trial_lease)))


def record_success(s: BreakerState, p: Policy, now: float, token: str | None) -> BreakerState:
    if s.mode is not Mode.NORMAL:
        return s
    if s.state is State.HALF_OPEN:
        if token is None or token not in {t for t, _ in s.trials}:
            return s  # a late report from a lease that expired; the slot was given away
        successes = s.trial_successes + 1
        if successes >= p.half_open_max_calls:
            return _close(s, now)
        trials = tuple(trial for trial in s.trials if trial[0] != token)
        return replace(s, trials=trials, trial_successes=successes)
    if s.state is State.CLOSED:
        s = _roll_window(s, p, now)
        return replace(s, failures=0, window_calls=s.window_calls + 1)
    return s


def add_successes(s: BreakerState, p: Policy, now: float, count: int) -> BreakerState:
    """Fold in successes a process counted locally, for the failure-rate rule."""
    if s.mode is not Mode.NORMAL or s.state is not State.CLOSED or count <= 0:
        return s
    s = _roll_window(s, p, now)
    return replace(s, window_calls=s.window_calls + count)


def record_failure(
    s: BreakerState, p: Policy, now: float, *, error: str = "", retry_at: float | None = None
) -> BreakerState:
    """Count a service-level failure; trip when a rule says so.

    ``retry_at`` comes from the service itself (a rate-limit reset): it opens the breaker
    at once and holds it open at least until then.
    """
    if s.mode is Mode.DISABLED:
        return s
    s = replace(s, total_failures=s.total_failures + 1, last_failure_at=now, last_error=error[:500])
    if s.mode is Mode.FORCED_CLOSED or s.mode is Mode.FORCED_OPEN:
        return s
    if s.state is State.HALF_OPEN:
        return _open(s, p, now, retry_at)
    if s.state is State.OPEN:
        if retry_at is not None and (s.open_until is None or retry_at > s.open_until):
            return replace(s, open_until=retry_at)
        return s
    s = _roll_window(s, p, now)
    s = replace(
        s,
        failures=s.failures + 1,
        window_calls=s.window_calls + 1,
        window_failures=s.window_failures + 1,
    )
    if retry_at is not None or s.failures >= p.failure_threshold or _rate_exceeded(s, p):
        return _open(s, p, now, retry_at)
    return s


def hold_open(s: BreakerState, p: Policy, now: float, until: float) -> BreakerState:
    """Open (or keep open) until ``until``, as a rate-limit reset demands."""
    if s.mode is not Mode.NORMAL:
        return s
    if s.state is State.OPEN:
        return replace(s, open_until=max(until, s.open_until or until))
    return _open(s, p, now, until)


def force(s: BreakerState, mode: Mode) -> BreakerState:
    return replace(s, mode=mode)


def reset(s: BreakerState) -> BreakerState:
    """Back to normal and closed, keeping the lifetime counters."""
    return BreakerState(
        total_failures=s.total_failures,
        opened_count=s.opened_count,
        last_failure_at=s.last_failure_at,
        last_error=s.last_error,
    )


def _open(s: BreakerState, p: Policy, now: float, retry_at: float | None) -> BreakerState:
    until = now + p.recovery_timeout
    if retry_at is not None:
        until = max(retry_at, now)
    return replace(
        s,
        state=State.OPEN,
        opened_at=now,
        open_until=until,
        trials=(),
        trial_successes=0,
        opened_count=s.opened_count + 1,
        window_start=now,
        window_calls=0,
        window_failures=0,
    )


def _close(s: BreakerState, now: float) -> BreakerState:
    return replace(
        s,
        state=State.CLOSED,
        failures=0,
        opened_at=None,
        open_until=None,
        trials=(),
        trial_successes=0,
        window_start=now,
        window_calls=0,
        window_failures=0,
    )


def _roll_window(s: BreakerState, p: Policy, now: float) -> BreakerState:
    if p.failure_rate is None or now - s.window_start < p.rate_window:
        return s
    return replace(s, window_start=now, window_calls=0, window_failures=0)


def _rate_exceeded(s: BreakerState, p: Policy) -> bool:
    if p.failure_rate is None or s.window_calls < p.rate_min_calls:
        return False
    return s.window_failures / s.window_calls >= p.failure_rate
