"""Circuit breakers whose state every process shares.

The success path of a closed breaker reads a process-local snapshot of the shared
state (refreshed at most every ``snapshot_ttl`` seconds or after any write this
process makes) and touches no store. A failure or a transition is one atomic write.
Half-open admits exactly ``half_open_max_calls`` trial calls across all processes:
each trial holds an expiring lease in the shared state, so a trial that never
reports back (its worker was killed) frees its slot when the lease runs out.

If the shared store cannot be reached the breaker carries on with local state seeded
from its last snapshot, says so in ``get_status()``, and tries the store again every
``store_retry`` seconds. It never lets everything through silently.

A breaker whose store is shared also counts its calls for health and metrics: an
answered call adds one to a process-local integer, a refused one likewise, and the
counts (with when the service last answered) go to ``resilience.calls`` on a snapshot
refresh at most every ``report_every`` seconds, and on a failure: never once per call.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async

from resilience import state as rules
from resilience.errors import CircuitOpenError
from resilience.events import event
from resilience.state import BreakerState, Mode, Policy, State
from resilience.stores import BreakerStore, MemoryStore, StoreUnavailable

__all__ = ["CircuitBreaker", "FailureRule", "Listener"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

FailureRule = tuple[type[BaseException], ...] | Callable[[BaseException], bool]
# Called after every transition with (breaker name, state before, state after).
Listener = Callable[[str, str, str], None]
# Takes a process's new counts: (breaker name, ok=, rejected=, last_ok_at=); False if
# they could not be stored (they are kept and sent with the next report).
Reporter = Callable[..., bool]

# How often, at most, a process adds its counted calls to the shared counts.
REPORT_EVERY = 30.0

_NEED_IO = object()
# The hot paths compare against these module names: on Python 3.11 an enum member
# lookup (``State.OPEN``) costs about ten times a global name (bench/breaker_overhead.py).
_NORMAL, _FORCED_OPEN = Mode.NORMAL, Mode.FORCED_OPEN
_CLOSED, _OPEN, _HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_on: FailureRule,
        failure_threshold: int = 5,
        recovery_timeout: float = 60.0,
        half_open_max_calls: int = 1,
        trial_lease: float = 60.0,
        failure_rate: float | None = None,
        rate_window: float = 60.0,
        rate_min_calls: int = 20,
        store: BreakerStore | None = None,
        snapshot_ttl: float = 1.0,
        store_retry: float = 5.0,
        clock: Callable[[], float] = time.time,
        listeners: tuple[Listener, ...] = (),
        reporter: Reporter | None = None,
        report_every: float = REPORT_EVERY,
    ) -> None:
        """``failure_on`` has no default: say which exceptions mean the service is unwell.

        Exceptions it does not match (an item-level 400, say) pass through and count as
        proof that the service answered.

        ``reporter`` receives the counted calls; by default ``resilience.calls`` when the
        store is shared (a private breaker's calls are nobody else's business), except
        for the ``database`` breaker.
        """
        self.name = name
        self.policy = Policy(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            half_open_max_calls=half_open_max_calls,
            trial_lease=trial_lease,
            failure_rate=failure_rate,
            rate_window=rate_window,
            rate_min_calls=rate_min_calls,
        )
        if isinstance(failure_on, tuple):
            classes = failure_on
            self._counts: Callable[[BaseException], bool] = lambda exc: isinstance(exc, classes)
        else:
            self._counts = failure_on
        self.store: BreakerStore = store if store is not None else MemoryStore()
        self.snapshot_ttl = snapshot_ttl
        self.store_retry = store_retry
        self._clock = clock
        self._listeners: list[Listener] = [_log_transition, *listeners]
        self._local = MemoryStore()  # fallback when the shared store is unreachable
        self._degraded: str | None = None
        self._degraded_at = 0.0
        self._snap = BreakerState()
        self._snap_at = float("-inf")
        self._pending_successes = 0
        self._lock = threading.Lock()
        # Calls counted here: answered (``_ok``) and refused. No lock on the hot path: in
        # CPython 3.11 a ``+= 1`` on an int attribute is not interrupted by another thread
        # (no call, no backward jump inside it), and were it ever, a count would be one
        # short, the breaker's state untouched.
        self._reporter = reporter if reporter is not None else _default_reporter(name, self.store)
        self.report_every = report_every
        self._ok = 0
        self._rejected = 0
        self._ok_reported = 0
        self._rejected_reported = 0
        self._reported_at = clock()
        self._report_lock = threading.Lock()
        # When this process last looked at ``_ok`` (on a refresh), the count it saw then,
        # and a lower bound for its latest answered call: a count that grew between two
        # looks grew after the first.
        self._looked_at = clock()
        self._ok_looked = 0
        self._ok_after: float | None = None

    # --- calling through the breaker -------------------------------------------------

    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        token = self._admit(io=True)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._after_failure(token, exc)
            raise
        self._ok += 1
        if token is not None or self._success_needs_write():
            self._record_success(token)
        return result

    async def call_async(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        blocking = self.store.blocking
        token = self._admit(io=not blocking)
        if token is _NEED_IO:
            token = await sync_to_async(self._admit)(io=True)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            if blocking:
                await sync_to_async(self._after_failure)(token, exc)
            else:
                self._after_failure(token, exc)
            raise
        self._ok += 1
        if token is not None or self._success_needs_write():
            if blocking:
                await sync_to_async(self._record_success)(token)
            else:
                self._record_success(token)
        return result

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Use the breaker as a decorator on a sync or async function."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(fn, *args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.call(fn, *args, **kwargs)

        return wrapper

    # --- operator and service controls ----------------------------------------------

    @property
    def state(self) -> str:
        """``closed``, ``open``, ``half_open``, or the operator's ``forced_open``,
        ``forced_closed``, ``disabled``; read from the shared store."""
        return rules.effective_state(self._load(), self._clock())

    def open_until(self, when: datetime | float) -> None:
        """Hold the breaker open until ``when`` (a rate-limit reset, say)."""
        until = when.timestamp() if isinstance(when, datetime) else float(when)
        self._update(lambda s: rules.hold_open(s, self.policy, self._clock(), until))

    def reset(self) -> None:
        self._update(rules.reset)

    def force_open(self) -> None:
        self._update(lambda s: rules.force(s, Mode.FORCED_OPEN))

    def force_closed(self) -> None:
        self._update(lambda s: rules.force(s, Mode.FORCED_CLOSED))

    def disable(self) -> None:
        self._update(lambda s: rules.force(s, Mode.DISABLED))

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def get_status(self) -> dict[str, Any]:
        """The breaker as health checks and the admin show it (fresh from the store)."""
        s = self._load()
        now = self._clock()
        retry_after = None
        if s.mode is Mode.NORMAL and s.state is State.OPEN and s.open_until is not None:
            retry_after = max(0.0, round(s.open_until - now, 1))
        return {
            "name": self.name,
            "state": rules.effective_state(s, now),
            "mode": s.mode.value,
            "failures": s.failures,
            "failure_threshold": self.policy.failure_threshold,
            "recovery_timeout": self.policy.recovery_timeout,
            "half_open_max_calls": self.policy.half_open_max_calls,
            "trials_in_flight": len(rules.live_trials(s, now)),
            "total_failures": s.total_failures,
            "opened_count": s.opened_count,
            "opened_at": _iso(s.opened_at),
            "open_until": _iso(s.open_until),
            "retry_after": retry_after,
            "last_failure_at": _iso(s.last_failure_at),
            "last_error": s.last_error,
            "store": self.store.kind,
            "shared": self.store.shared and not self._degraded,
            "store_error": self._degraded,
        }

    # --- internals ---------------------------------------------------------------------

    def _admit(self, io: bool) -> Any:
        """Decide whether a call may run. Returns a trial token, None, or _NEED_IO.

        Raises CircuitOpenError on refusal. With ``io=False`` it never touches the
        store and returns _NEED_IO when it would have to.
        """
        now = self._clock()
        if now - self._snap_at >= self.snapshot_ttl:
            if not io:
                return _NEED_IO
            self._refresh(now)
        s = self._snap
        if s.mode is not _NORMAL:
            if s.mode is _FORCED_OPEN:
                self._rejected += 1
                raise CircuitOpenError(self.name, "forced_open", None)
            return None
        if s.state is _CLOSED:
            return None
        if s.state is _OPEN and s.open_until is not None and now < s.open_until:
            self._rejected += 1
            raise CircuitOpenError(self.name, "open", s.open_until - now)
        if s.state is _HALF_OPEN and rules.half_open_is_full(s, self.policy, now):
            self._rejected += 1
            raise self._half_open_refusal(s, now)
        if not io:
            return _NEED_IO
        token = uuid.uuid4().hex
        after = self._update(lambda st: rules.acquire(st, self.policy, self._clock(), token))
        if any(t == token for t, _ in after.trials):
            return token
        if after.state is State.CLOSED or after.mode in (Mode.FORCED_CLOSED, Mode.DISABLED):
            return None
        self._rejected += 1  # refused, whichever way it is told below
        if after.mode is Mode.FORCED_OPEN:
            raise CircuitOpenError(self.name, Mode.FORCED_OPEN.value, None)
        if after.state is State.OPEN and after.open_until is not None:
            raise CircuitOpenError(self.name, State.OPEN.value, max(0.0, after.open_until - now))
        raise self._half_open_refusal(after, now)

    def _half_open_refusal(self, s: BreakerState, now: float) -> CircuitOpenError:
        expiries = [exp for _, exp in rules.live_trials(s, now)]
        retry_after = min(expiries) - now if expiries else self.snapshot_ttl
        return CircuitOpenError(self.name, State.HALF_OPEN.value, retry_after)

    def _success_needs_write(self) -> bool:
        s = self._snap
        if s.mode is not _NORMAL:
            return False
        if s.failures:
            return True
        if self.policy.failure_rate is not None:
            with self._lock:
                self._pending_successes += 1
        return False

    def _record_success(self, token: str | None) -> None:
        self._update(lambda s: rules.record_success(s, self.policy, self._clock(), token))

    def _after_failure(self, token: Any, exc: BaseException) -> None:
        if self._snap.mode is Mode.DISABLED or not isinstance(exc, Exception):
            return  # cancelled or interrupted: no verdict; a trial's lease simply expires
        if not self._counts(exc):
            # The service answered; for the breaker that is a success.
            self._ok += 1
            if token is not None or self._success_needs_write():
                self._record_success(token)
            return
        retry_at = getattr(exc, "retry_at", None)
        error = f"{type(exc).__name__}: {exc}"
        self._update(
            lambda s: rules.record_failure(
                s, self.policy, self._clock(), error=error, retry_at=retry_at
            )
        )
        # Answers counted before this failure are told now, so a reader never takes a
        # failure for newer than an answer that came before it.
        self._report(self._clock(), due=False)

    def _refresh(self, now: float) -> None:
        with self._lock:
            pending, self._pending_successes = self._pending_successes, 0
        if pending:
            self._update(lambda s: rules.add_successes(s, self.policy, self._clock(), pending))
        else:
            self._set_snapshot(self._load())
        self._report(now, due=True)

    def _report(self, now: float, *, due: bool) -> None:
        """Hand the calls counted since the last report to the reporter.

        With ``due`` only once ``report_every`` has passed since the last one. One thread
        reports at a time; counts the reporter could not store stay for the next report.
        """
        if self._reporter is None:
            return
        if self._ok != self._ok_looked:
            self._ok_looked = self._ok
            self._ok_after = self._looked_at
        self._looked_at = now
        if due and now - self._reported_at < self.report_every:
            return
        if not self._report_lock.acquire(blocking=False):
            return
        try:
            self._reported_at = now
            ok = self._ok_looked - self._ok_reported
            rejected = self._rejected - self._rejected_reported
            if not ok and not rejected:
                return
            try:
                stored = self._reporter(
                    self.name, ok=ok, rejected=rejected, last_ok_at=self._ok_after if ok else None
                )
            except Exception:
                # As with listeners: counting calls must never fail the call itself.
                log.exception("breaker %s: reporter %r failed", self.name, self._reporter)
                return
            if stored:
                self._ok_reported += ok
                self._rejected_reported += rejected
        finally:
            self._report_lock.release()

    def _load(self) -> BreakerState:
        store = self._active_store()
        try:
            return store.load(self.name)
        except StoreUnavailable as exc:
            self._degrade(exc)
            return self._local.load(self.name)

    def _update(self, change: Callable[[BreakerState], BreakerState]) -> BreakerState:
        store = self._active_store()
        try:
            before, after = store.update(self.name, change)
        except StoreUnavailable as exc:
            self._degrade(exc)
            before, after = self._local.update(self.name, change)
        self._set_snapshot(after)
        now = self._clock()
        old, new = rules.effective_state(before, now), rules.effective_state(after, now)
        if old != new:
            for listener in self._listeners:
                try:
                    listener(self.name, old, new)
                except Exception:
                    log.exception("breaker %s: listener %r failed", self.name, listener)
        return after

    def _set_snapshot(self, s: BreakerState) -> None:
        self._snap = s
        self._snap_at = self._clock()
        if self._degraded is None:
            self._local.put(self.name, s)

    def _active_store(self) -> BreakerStore:
        if self._degraded is None:
            return self.store
        if self._clock() - self._degraded_at >= self.store_retry:
            try:
                shared = self.store.load(self.name)
            except StoreUnavailable:
                self._degraded_at = self._clock()
                return self._local
            log.warning("breaker %s: shared %s store is back", self.name, self.store.kind)
            self._degraded = None
            self._local.put(self.name, shared)
            return self.store
        return self._local

    def _degrade(self, exc: StoreUnavailable) -> None:
        if self._degraded is None:
            log.error(
                "breaker %s: shared %s store unreachable, using this process's state: %s",
                self.name,
                self.store.kind,
                exc,
            )
        self._degraded = str(exc)[:300]
        self._degraded_at = self._clock()


def _default_reporter(name: str, store: BreakerStore) -> Reporter | None:
    # The database breaker's calls would be counted in the database it guards.
    if not store.shared or name == "database":
        return None

    def report(name: str, *, ok: int, rejected: int, last_ok_at: float | None) -> bool:
        # Imported here: the breaker itself stays free of Django's models.
        from resilience.calls import calls_add

        return calls_add(name, ok=ok, rejected=rejected, last_ok_at=last_ok_at)

    return report


def _log_transition(name: str, old: str, new: str) -> None:
    level = logging.INFO if new == State.CLOSED.value else logging.WARNING
    event("breaker", level=level, service=name, was=old, now=new)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
