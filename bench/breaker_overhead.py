"""What a circuit breaker costs per call: ours (database store) against pybreaker.

Run from the project root; it uses a throwaway SQLite database unless DATABASE_URL
is set::

    .venv/bin/python -m bench.breaker_overhead [--calls N] [--repeats R] [--json]

In one run it measures:

1. a successful call through a closed breaker (ours with the shared database store,
   pybreaker with its in-memory storage) against the bare call;
2. the database queries our successful calls issue;
3. a call rejected by an open breaker, ours against pybreaker's;
4. the memory still held after 100,000 rejections (tracemalloc, after gc).

It prints a verdict per target and always exits 0: it measures, it does not test.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Any

from bench.common import bench_environment, machine, positive, verdict

# Our breaker with the store production uses by default. The names are distinct so
# a run against a real database never meets a row a service owns; they are deleted
# before and after.
SUCCESS_BREAKER = "bench-overhead-closed"
REJECTING_BREAKER = "bench-overhead-open"
# An open breaker that stays open for the whole run.
HOLD_OPEN_SECONDS = 3600
# "No growth": what a few one-off allocations (a snapshot refresh) may leave behind.
MEMORY_BUDGET_BYTES = 4096

Call = Callable[[Callable[[], None]], None]


@dataclass(frozen=True)
class Success:
    bare_ns: float
    ours_ns: float
    pybreaker_ns: float

    @property
    def ours_overhead_ns(self) -> float:
        return self.ours_ns - self.bare_ns

    @property
    def pybreaker_overhead_ns(self) -> float:
        return self.pybreaker_ns - self.bare_ns


@dataclass(frozen=True)
class Queries:
    """Database queries issued by our breaker's successful calls over the timing phase."""

    count: int
    selects: int
    writes: int
    calls: int
    wall_seconds: float
    snapshot_ttl: float

    @property
    def per_call(self) -> float:
        return self.count / self.calls

    @property
    def refresh_bound(self) -> int:
        # Refreshes are at least snapshot_ttl apart, so the phase has room for this many.
        if self.snapshot_ttl <= 0:
            return self.calls
        return int(self.wall_seconds // self.snapshot_ttl) + 1


@dataclass(frozen=True)
class Rejection:
    ours_ns: float
    pybreaker_ns: float


@dataclass(frozen=True)
class Memory:
    calls: int
    ours_bytes: int
    ours_queries: int
    pybreaker_bytes: int


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with bench_environment():
        report = _run(calls=args.calls, repeats=args.repeats, memory_calls=args.memory_calls)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_render(report))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.breaker_overhead",
        description="Per-call cost of our circuit breaker against pybreaker and a bare call.",
    )
    parser.add_argument(
        "--calls", type=positive, default=200_000, help="calls per timing loop (200000)"
    )
    parser.add_argument(
        "--repeats", type=positive, default=5, help="timing loops per variant; best kept (5)"
    )
    parser.add_argument(
        "--memory-calls",
        type=positive,
        default=100_000,
        help="rejections traced for memory growth (100000)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


def _run(*, calls: int, repeats: int, memory_calls: int) -> dict[str, Any]:
    import django

    django.setup()

    import pybreaker
    from django.conf import settings
    from django.core.management import call_command

    from resilience.breaker import CircuitBreaker
    from resilience.errors import CircuitOpenError, ErrorKind, ServiceError, is_service_failure
    from resilience.models import BreakerRecord
    from resilience.stores import DatabaseStore

    call_command("migrate", verbosity=0)
    names = [SUCCESS_BREAKER, REJECTING_BREAKER]
    BreakerRecord.objects.filter(name__in=names).delete()
    snapshot_ttl = float(settings.RESILIENCE["SNAPSHOT_TTL"])

    def unwell() -> None:
        raise ServiceError("bench", kind=ErrorKind.TRANSIENT, service="bench")

    try:
        ours = CircuitBreaker(
            SUCCESS_BREAKER,
            failure_on=is_service_failure,
            store=DatabaseStore(),
            snapshot_ttl=snapshot_ttl,
        )
        theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
        success, queries = _measure_success(ours.call, theirs.call, calls, repeats, snapshot_ttl)

        ours_open = CircuitBreaker(
            REJECTING_BREAKER,
            failure_on=is_service_failure,
            failure_threshold=1,
            recovery_timeout=HOLD_OPEN_SECONDS,
            store=DatabaseStore(),
            snapshot_ttl=snapshot_ttl,
        )
        with suppress(ServiceError):
            ours_open.call(unwell)
        theirs_open = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=HOLD_OPEN_SECONDS)
        # pybreaker raises its own error on the call that trips it.
        with suppress(pybreaker.CircuitBreakerError):
            theirs_open.call(unwell)
        if ours_open.state != "open" or theirs_open.current_state != "open":
            raise RuntimeError("could not open the breakers for the rejection benchmark")

        rejection = _measure_rejection(
            ours_open.call,
            CircuitOpenError,
            theirs_open.call,
            pybreaker.CircuitBreakerError,
            calls,
            repeats,
        )
        ours_bytes, ours_queries = _memory_growth(ours_open.call, CircuitOpenError, memory_calls)
        theirs_bytes, _ = _memory_growth(
            theirs_open.call, pybreaker.CircuitBreakerError, memory_calls
        )
        memory = Memory(memory_calls, ours_bytes, ours_queries, theirs_bytes)
    finally:
        BreakerRecord.objects.filter(name__in=names).delete()

    verdicts = {
        "success_no_slower_than_pybreaker": success.ours_ns <= success.pybreaker_ns,
        "no_query_per_successful_call": queries.writes == 0
        and queries.count <= queries.refresh_bound,
        "rejection_no_slower_than_pybreaker": rejection.ours_ns <= rejection.pybreaker_ns,
        "no_memory_growth_over_rejections": memory.ours_bytes <= MEMORY_BUDGET_BYTES,
    }
    return {
        "environment": _environment(),
        "settings": {
            "calls": calls,
            "repeats": repeats,
            "memory_calls": memory_calls,
            "snapshot_ttl": snapshot_ttl,
            "debug": settings.DEBUG,
        },
        "success": {
            **asdict(success),
            "ours_overhead_ns": success.ours_overhead_ns,
            "pybreaker_overhead_ns": success.pybreaker_overhead_ns,
        },
        "queries": {
            **asdict(queries),
            "per_call": queries.per_call,
            "refresh_bound": queries.refresh_bound,
        },
        "rejection": asdict(rejection),
        "memory": {**asdict(memory), "budget_bytes": MEMORY_BUDGET_BYTES},
        "verdicts": verdicts,
    }


def _measure_success(
    ours: Call, theirs: Call, calls: int, repeats: int, snapshot_ttl: float
) -> tuple[Success, Queries]:
    from django.db import connection

    # Warm up: the first call loads the snapshot; the interpreter specialises the loops.
    warmup = min(calls, 10_000)
    _time_bare(warmup)
    _time_calls(ours, warmup)
    _time_calls(theirs, warmup)

    bare, mine, other = [], [], []
    counter = _QueryCounter()
    started = time.perf_counter()
    with connection.execute_wrapper(counter):
        # Interleaved so that drift in machine load hits every variant alike.
        for _ in range(repeats):
            bare.append(_time_bare(calls))
            mine.append(_time_calls(ours, calls))
            other.append(_time_calls(theirs, calls))
    wall = time.perf_counter() - started
    success = Success(min(bare) / calls, min(mine) / calls, min(other) / calls)
    queries = Queries(
        count=counter.count,
        selects=counter.selects,
        writes=counter.count - counter.selects,
        calls=calls * repeats,
        wall_seconds=wall,
        snapshot_ttl=snapshot_ttl,
    )
    return success, queries


def _measure_rejection(
    ours: Call,
    ours_error: type[Exception],
    theirs: Call,
    their_error: type[Exception],
    calls: int,
    repeats: int,
) -> Rejection:
    warmup = min(calls, 10_000)
    _time_rejections(ours, ours_error, warmup)
    _time_rejections(theirs, their_error, warmup)
    mine, other = [], []
    for _ in range(repeats):
        mine.append(_time_rejections(ours, ours_error, calls))
        other.append(_time_rejections(theirs, their_error, calls))
    return Rejection(min(mine) / calls, min(other) / calls)


def _memory_growth(call: Call, error: type[Exception], calls: int) -> tuple[int, int]:
    """Bytes still allocated after ``calls`` rejections, and the queries issued meanwhile."""
    from django.db import connection

    counter = _QueryCounter()
    gc.collect()
    tracemalloc.start()
    try:
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        with connection.execute_wrapper(counter):
            _time_rejections(call, error, calls)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before, counter.count


def _noop() -> None:
    return None


def _time_bare(calls: int) -> int:
    fn = _noop
    with _gc_paused():
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        return time.perf_counter_ns() - start


def _time_calls(call: Call, calls: int) -> int:
    fn = _noop
    with _gc_paused():
        start = time.perf_counter_ns()
        for _ in range(calls):
            call(fn)
        return time.perf_counter_ns() - start


def _time_rejections(call: Call, error: type[Exception], calls: int) -> int:
    fn = _noop
    with _gc_paused():
        start = time.perf_counter_ns()
        for _ in range(calls):
            # Not contextlib.suppress: its own cost would swamp what is measured.
            try:  # noqa: SIM105
                call(fn)
            except error:
                pass
        return time.perf_counter_ns() - start


@contextmanager
def _gc_paused() -> Iterator[None]:
    # As timeit does: a collection landing in one variant's loop is noise.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _QueryCounter:
    """An ``execute_wrapper`` that counts queries (and how many are plain reads)."""

    def __init__(self) -> None:
        self.count = 0
        self.selects = 0

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        self.count += 1
        if sql.lstrip().upper().startswith("SELECT") and "FOR UPDATE" not in sql.upper():
            self.selects += 1
        return execute(sql, params, many, context)


def _environment() -> dict[str, Any]:
    return {**machine(), "pybreaker": version("pybreaker")}


def _render(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["settings"]
    ok, q, mem = report["verdicts"], report["queries"], report["memory"]
    success, rejection = report["success"], report["rejection"]
    bare = success["bare_ns"]
    lines = [
        f"Circuit breaker overhead on {env['database']}",
        f"Python {env['python']}, Django {env['django']}, pybreaker {env['pybreaker']}, "
        f"{env['cpus']} CPUs ({env['cpu_model']})",
        f"{cfg['calls']:,} calls per loop, best of {cfg['repeats']}; "
        f"snapshot_ttl {cfg['snapshot_ttl']} s; DEBUG {cfg['debug']}",
        "",
        f"{'Successful call, closed breaker':<44}{'ns/call':>10}{'minus bare':>12}",
        _row("bare no-op call", bare, None),
        _row("ours (DatabaseStore)", success["ours_ns"], success["ours_overhead_ns"]),
        _row(
            f"pybreaker {env['pybreaker']} (memory storage)",
            success["pybreaker_ns"],
            success["pybreaker_overhead_ns"],
        ),
        "",
        f"Database queries during our {q['calls']:,} successful calls: {q['count']} "
        f"({q['selects']} reads, {q['writes']} writes) = {q['per_call']:.7f} per call",
        f"  over {q['wall_seconds']:.2f} s of wall time (the whole timing phase), in which "
        f"one snapshot refresh per {q['snapshot_ttl']} s allows up to {q['refresh_bound']}",
        "",
        f"{'Rejected call, open breaker':<44}{'ns/call':>10}{'minus bare':>12}",
        _row("ours (CircuitOpenError)", rejection["ours_ns"], rejection["ours_ns"] - bare),
        _row(
            "pybreaker (CircuitBreakerError)",
            rejection["pybreaker_ns"],
            rejection["pybreaker_ns"] - bare,
        ),
        "",
        f"Memory still allocated after {mem['calls']:,} rejections "
        "(tracemalloc, after gc.collect())",
        f"  ours       {mem['ours_bytes']:>+9,} B  "
        f"({mem['ours_bytes'] / mem['calls']:.3f} B per rejection; "
        f"{mem['ours_queries']} snapshot refresh queries during the loop)",
        f"  pybreaker  {mem['pybreaker_bytes']:>+9,} B",
        "",
        "Targets",
        verdict(
            ok["success_no_slower_than_pybreaker"],
            f"success path no slower than pybreaker: {_us(success['ours_ns'])} "
            f"vs {_us(success['pybreaker_ns'])} per call",
        ),
        verdict(
            ok["no_query_per_successful_call"],
            f"no database query per successful call: {q['count']} queries over "
            f"{q['calls']:,} calls, {q['writes']} writes, at most one refresh per "
            f"{q['snapshot_ttl']} s (bound {q['refresh_bound']})",
        ),
        verdict(
            ok["rejection_no_slower_than_pybreaker"],
            f"rejection no slower than pybreaker's: {_us(rejection['ours_ns'])} "
            f"vs {_us(rejection['pybreaker_ns'])} per call",
        ),
        verdict(
            ok["no_memory_growth_over_rejections"],
            f"no memory growth over {mem['calls']:,} rejections: "
            f"{mem['ours_bytes']:+,} B (budget {mem['budget_bytes']:,} B)",
        ),
    ]
    return "\n".join(lines)


def _row(label: str, raw_ns: float, net_ns: float | None) -> str:
    net = "" if net_ns is None else f"{net_ns:,.0f}"
    return f"  {label:<42}{raw_ns:>10,.0f}{net:>12}"


def _us(ns: float) -> str:
    return f"{ns / 1000:.3f} µs"


if __name__ == "__main__":
    main()
