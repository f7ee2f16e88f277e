"""How fast the health probes answer while X, the model and Telegram hang, against a naive
check that asks them live.

Run from the project root; it uses a throwaway SQLite database unless DATABASE_URL
is set, and starts the X, OpenAI-compatible and Telegram stand-ins in-process::

    .venv/bin/python -m bench.health_latency [--seconds S] [--clients N] [--json]

Every stand-in is told to hang on every request (``faults.add("*", "hang")``): the
connection is accepted and never answered, as a service does when it is down behind a
load balancer. Reply Guy is served by a threaded WSGI server in this process (Django's
own, as ``runserver`` uses), with the project's URLs plus, for this benchmark only,
``/naive/``: django-health-check's stock view over the database, the cache and three
checks that each call its service live (X ``GET /2/users/me``, the model
``GET /v1/models``, Telegram ``getMe``) with a 5 s timeout, as a first health endpoint
usually does.

Steady load: N clients each send one request after another for S seconds to one
endpoint at a time (``/health/live/``, ``/health/ready/``, ``/health/``, then
``/naive/``), and every answer's latency and status are kept. It prints p50, p99 and
the worst latency, requests per second and the status codes per endpoint, and always
exits 0: it measures, it does not test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

from bench.common import bench_environment, machine, machine_line, percentile, positive

DEFAULT_SECONDS = 15
DEFAULT_CLIENTS = 4
# How long a stand-in holds a request before dropping it: longer than the whole run.
HANG_SECONDS = 600
# The naive checks' client timeout, a common choice (and django-health-check's default).
NAIVE_TIMEOUT = 5.0
ENDPOINTS = ["/health/live/", "/health/ready/", "/health/", "/naive/"]


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    with bench_environment():
        report = _run(seconds=args.seconds, clients=args.clients)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_render(report))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.health_latency",
        description="/health/ latency while X, the model and Telegram hang, against live checks.",
    )
    parser.add_argument(
        "--seconds", type=positive, default=DEFAULT_SECONDS, help="load per endpoint (15)"
    )
    parser.add_argument(
        "--clients", type=positive, default=DEFAULT_CLIENTS, help="concurrent clients (4)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


def _run(*, seconds: int, clients: int) -> dict[str, Any]:
    import django

    django.setup()

    from django.conf import settings
    from django.core.management import call_command

    from bot.services.heartbeat import beat
    from sandbox.harness import Sandbox

    call_command("migrate", verbosity=0)
    # The naive view's every answer is a 500, which Django logs at ERROR: not news here.
    logging.getLogger("django.request").setLevel(logging.CRITICAL)
    results: dict[str, dict[str, Any]] = {}
    with Sandbox() as sandbox:
        for name, value in sandbox.env().items():
            setattr(settings, name, value)
        for app in (sandbox.x, sandbox.openai, sandbox.telegram):
            app.faults.add("*", "hang", latency=HANG_SECONDS)
        settings.ROOT_URLCONF = _BenchUrls()
        settings.ALLOWED_HOSTS = ["127.0.0.1"]
        settings.SECURE_SSL_REDIRECT = False
        apps = (sandbox.x, sandbox.openai, sandbox.telegram)
        with _served() as base:
            for path in ENDPOINTS:
                beat()  # a worker "ran" just now: the heartbeat check passes
                before = sum(len(app.requests) for app in apps)
                results[path] = _load(base + path, seconds=seconds, clients=clients)
                results[path]["stand_in_requests"] = sum(len(app.requests) for app in apps) - before
    return {
        "environment": machine(),
        "settings": {
            "seconds": seconds,
            "clients": clients,
            "naive_timeout": NAIVE_TIMEOUT,
            "hang_seconds": HANG_SECONDS,
        },
        "endpoints": results,
    }


# --- the naive check, for comparison only ---------------------------------------------------


def _naive_checks() -> list[Any]:
    import requests
    from django.conf import settings
    from health_check import Cache, Database, HealthCheck
    from health_check.exceptions import ServiceUnavailable

    @dataclasses.dataclass
    class Live(HealthCheck):
        """Asks the service itself: hangs as long as the service does (up to the timeout)."""

        service: str
        timeout = timedelta(seconds=NAIVE_TIMEOUT)

        def run(self) -> None:
            url = {
                "x": f"{settings.X_API_BASE_URL}/2/users/me",
                "model": f"{settings.OPENAI_BASE_URL}/models",
                "telegram": (
                    f"{settings.TELEGRAM_API_BASE_URL}/bot{settings.TELEGRAM_BOT_TOKEN}/getMe"
                ),
            }[self.service]
            try:
                requests.get(url, timeout=NAIVE_TIMEOUT).raise_for_status()
            except requests.RequestException as exc:
                raise ServiceUnavailable(type(exc).__name__) from exc

    return [Database, Cache, *((Live, {"service": name}) for name in ("x", "model", "telegram"))]


class _BenchUrls:
    """The project's URLs plus ``/naive/`` (this benchmark's URLconf, an object Django's
    resolver accepts in place of a module)."""

    def __init__(self) -> None:
        from django.urls import path
        from health_check.views import HealthCheckView

        from replyguy.urls import urlpatterns

        self.urlpatterns = [
            path("naive/", HealthCheckView.as_view(checks=_naive_checks())),
            *urlpatterns,
        ]


# --- serving and load ------------------------------------------------------------------------


class _served:
    """Reply Guy on a loopback port, one thread per request (Django's runserver server)."""

    def __enter__(self) -> str:
        from django.core.handlers.wsgi import WSGIHandler
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

        class Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadedWSGIServer(("127.0.0.1", 0), Quiet)
        self.httpd.set_app(WSGIHandler())
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _load(url: str, *, seconds: int, clients: int) -> dict[str, Any]:
    import requests

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    status = str(session.get(url, timeout=60).status_code)
                except requests.RequestException as exc:
                    status = type(exc).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[status] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    return {
        "requests": len(latencies),
        "per_second": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "statuses": dict(statuses),
    }


def _render(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["settings"]
    lines = [
        f"Health probe latency on {env['database']} while X, the model and Telegram hang",
        f"{machine_line(env)}; {cfg['clients']} clients, {cfg['seconds']} s per endpoint; "
        f"naive checks time out after {cfg['naive_timeout']:g} s",
        "",
        f"{'endpoint':<16}{'requests':>9}{'req/s':>8}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'max ms':>10}{'to X/model/Telegram':>21}  statuses",
    ]
    for path, row in report["endpoints"].items():
        statuses = ", ".join(f"{code} x{n}" for code, n in sorted(row["statuses"].items()))
        lines.append(
            f"{path:<16}{row['requests']:>9,}{row['per_second']:>8.1f}{row['p50_ms']:>10.1f}"
            f"{row['p99_ms']:>10.1f}{row['max_ms']:>10.1f}{row['stand_in_requests']:>21,}"
            f"  {statuses}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
