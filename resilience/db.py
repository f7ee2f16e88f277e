"""Database connection recovery for task bodies.

A worker's connection can die under it: the database restarts, a PaaS proxy drops
idle connections, an operator runs ``pg_terminate_backend``. ``with_db_recovery``
runs a task body under the ``database`` breaker and, when the body fails with a
connection error, drops the broken connection and runs the body again with backoff.
Bodies must therefore be safe to run twice, which pipeline tasks are by design:
they find their work in the database and move rows with conditional updates.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connections

from resilience.registry import get_breaker
from resilience.retry import with_backoff

__all__ = ["is_connection_failure", "with_db_recovery"]

P = ParamSpec("P")
R = TypeVar("R")

CONNECTION_ERRORS = (OperationalError, InterfaceError)


def is_connection_failure(exc: BaseException) -> bool:
    """The ``database`` breaker's rule: the connection or server failed, not the query."""
    return isinstance(exc, CONNECTION_ERRORS)


def with_db_recovery(
    fn: Callable[P, R] | None = None, *, max_retries: int = 3, using: str = "default"
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a task body so a lost database connection costs a retry, not the run.

    Works as ``@with_db_recovery`` or ``@with_db_recovery(max_retries=5)``. Must wrap
    the outermost function: inside an atomic block there is nothing safe to retry, so
    the error is raised unchanged.
    """

    def decorate(body: Callable[P, R]) -> Callable[P, R]:
        @with_backoff(
            max_retries=max_retries, base_delay=0.5, max_delay=5.0, retry_on=CONNECTION_ERRORS
        )
        def attempt(*args: P.args, **kwargs: P.kwargs) -> R:
            connection = connections[using]
            connection.close_if_unusable_or_obsolete()
            try:
                return get_breaker("database").call(body, *args, **kwargs)
            except CONNECTION_ERRORS:
                # The next attempt must open a fresh connection, not reuse the dead one.
                with contextlib.suppress(DatabaseError):
                    connection.close()
                raise

        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            if connections[using].in_atomic_block:
                return body(*args, **kwargs)
            return attempt(*args, **kwargs)

        return run

    return decorate if fn is None else decorate(fn)
