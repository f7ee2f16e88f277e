"""Task bodies outlive a dropped database connection; a dead database opens its breaker."""

from __future__ import annotations

import psycopg
import pytest
from django.db import OperationalError, connection, transaction

from resilience import CircuitOpenError, get_breaker
from resilience.db import with_db_recovery
from resilience.models import BreakerRecord


def terminate_backend(pid: int) -> None:
    """What an operator, a failover or a PaaS proxy does to a worker's connection."""
    params = connection.settings_dict
    with psycopg.connect(
        host=params["HOST"],
        port=params["PORT"] or 5432,
        user=params["USER"],
        dbname=params["NAME"],
        autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_task_body_survives_pg_terminate_backend_mid_run():
    runs: list[int] = []

    @with_db_recovery
    def task_body() -> str:
        runs.append(1)
        BreakerRecord.objects.update_or_create(name="progress", defaults={"data": {"step": 1}})
        if len(runs) == 1:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                terminate_backend(cursor.fetchone()[0])
        BreakerRecord.objects.update_or_create(name="progress", defaults={"data": {"step": 2}})
        return "done"

    assert task_body() == "done"
    assert len(runs) == 2, "the body ran again on a fresh connection"
    assert BreakerRecord.objects.get(name="progress").data == {"step": 2}
    assert get_breaker("database").state == "closed"


@pytest.mark.django_db(transaction=True)
def test_repeated_connection_failures_open_the_database_breaker():
    runs: list[int] = []

    @with_db_recovery(max_retries=5)
    def task_body() -> None:
        runs.append(1)
        raise OperationalError("server closed the connection unexpectedly")

    with pytest.raises(CircuitOpenError) as refused:
        task_body()
    assert len(runs) == 3, "the breaker (threshold 3) stopped further attempts"
    assert refused.value.name == "database"
    assert get_breaker("database").get_status()["last_error"].startswith("OperationalError")


@pytest.mark.django_db(transaction=True)
def test_query_errors_are_not_retried():
    runs: list[int] = []

    @with_db_recovery
    def task_body() -> None:
        runs.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        task_body()
    assert len(runs) == 1
    assert get_breaker("database").get_status()["total_failures"] == 0


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_nothing_is_retried():
    runs: list[int] = []

    @with_db_recovery
    def task_body() -> None:
        runs.append(1)
        raise OperationalError("connection lost")

    with pytest.raises(OperationalError), transaction.atomic():
        task_body()
    assert len(runs) == 1
