"""What every benchmark needs: its own database, the settings, and a note of the machine."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def bench_environment() -> Iterator[bool]:
    """Point Django at the project settings, on a throwaway SQLite file unless
    DATABASE_URL is set (the file is removed afterwards). Yields whether it is one."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "replyguy.settings")
    # DEBUG off, as in production: with it on Django keeps every query in
    # connection.queries_log, which costs time and shows up as memory growth.
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")
    # Tripping breakers on purpose would log a warning each.
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    if os.environ.get("DATABASE_URL", "").strip():
        yield False
        return
    scratch = Path(tempfile.mkdtemp(prefix="replyguy-bench-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{scratch / 'bench.sqlite3'}"
    try:
        yield True
    finally:
        from django.db import connections

        connections.close_all()
        shutil.rmtree(scratch, ignore_errors=True)
        del os.environ["DATABASE_URL"]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def number_list(text: str, *, low: int, high: int | None = None) -> tuple[int, ...]:
    """A comma-separated list of whole numbers from ``low`` to ``high``, sorted, unique."""
    try:
        numbers = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not numbers or min(numbers) < low or (high is not None and max(numbers) > high):
        bounds = f"from {low} to {high}" if high is not None else f"of {low} or more"
        raise argparse.ArgumentTypeError(f"need numbers {bounds}, got {text!r}")
    return tuple(sorted(set(numbers)))


def machine() -> dict[str, Any]:
    """Python, Django, database and CPU, for the report."""
    import django
    from django.db import connection

    connection.ensure_connection()
    if connection.vendor == "postgresql":
        server = connection.pg_version
        database = f"PostgreSQL {server // 10000}.{server % 10000}"
    elif connection.vendor == "sqlite":
        database = f"SQLite {connection.Database.sqlite_version}"
    else:
        database = connection.display_name
    return {
        "python": platform.python_version(),
        "django": django.get_version(),
        "database": database,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown"
