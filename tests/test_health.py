"""Health probes: liveness without the database, readiness and every check, the status
document, the command, and probes that never call X, the model or Telegram."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import requests
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from bot.models import FailedTweet, FailedTweetStatus, QueuedTweet, Source, Status
from bot.services.heartbeat import beat
from resilience import get_breaker
from resilience.alerts import AlertKind
from resilience.calls import calls_add
from resilience.errors import ErrorKind, ServiceError
from resilience.models import AlertEvent
from tests.helpers import ROOT, environ_without, free_port, until, worker_env

# A probe that waited on a hung service would wait for the client's own timeout (5 s and
# more); this only stops a broken test from hanging the run.
GENEROUS = 10.0
SERVICES = ("twitter_api", "ai_service", "telegram")
GUNICORN = [sys.executable, "-m", "gunicorn", "replyguy.wsgi"]


@pytest.fixture
def workers_alive() -> Iterator[None]:
    """A django-q2 worker beat just now; the cache is emptied before and after."""
    cache.clear()
    beat()
    yield
    cache.clear()


def tweet(post_id: str = "1", **fields: object) -> QueuedTweet:
    now = timezone.now()
    defaults: dict[str, object] = {
        "author_id": "42",
        "author_username": "alice",
        "text": "a post",
        "tweet_created_at": now,
        "source": Source.MENTION,
        "summoned": True,
    }
    return QueuedTweet.objects.create(target_tweet_id=post_id, **{**defaults, **fields})


def due_reply(post_id: str, *, due_for: timedelta) -> QueuedTweet:
    now = timezone.now()
    return tweet(
        post_id,
        status=Status.APPROVED,
        draft="a reply",
        approved_at=now - due_for,
        approved_by="owner",
        scheduled_at=now - due_for,
    )


def checks_of(response) -> dict[str, str]:
    return json.loads(response.content)


# --- liveness and readiness ---------------------------------------------------------------


def test_liveness_answers_without_touching_the_database(client: Client):
    # No django_db mark: any query on this path makes pytest-django fail the test.
    response = client.get("/health/live/")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}
    assert "no-cache" in response["Cache-Control"]


@contextmanager
def web_process(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real gunicorn web process (one worker) on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [*GUNICORN, "--bind", f"127.0.0.1:{port}", "--workers", "1", "--timeout", "30"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(f"{url}/health/live/", timeout=1).status_code == 200
        except requests.RequestException:  # not listening yet, or still loading Django
            return False

    try:
        assert until(answers, timeout=30, interval=0.1), "the web process did not start"
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(10)


def test_with_the_database_down_liveness_answers_and_readiness_fails():
    env = environ_without("PYTEST")
    # PostgreSQL on a port nobody listens on: every connection is refused at once.
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/replyguy",
        REDIS_URL="",
        DEBUG="true",
        LOG_LEVEL="INFO",
        LOG_FORMAT="text",
    )
    with web_process(env) as (url, proc):
        live = requests.get(f"{url}/health/live/", timeout=GENEROUS)
        ready = requests.get(f"{url}/health/ready/?format=json", timeout=GENEROUS)
        every = requests.get(f"{url}/health/?format=json", timeout=GENEROUS)
        status = requests.get(f"{url}/health/status/", timeout=GENEROUS)
        scrape = requests.get(f"{url}/metrics", timeout=GENEROUS)
        proc.terminate()
        _, log = proc.communicate(timeout=10)

    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["Database(alias='default')"].startswith("Unavailable")
    assert ready.json()["Cache(alias='default')"].startswith("Unavailable")
    assert every.status_code == 503
    assert status.status_code == 503
    assert status.json()["overall"] == "error"
    assert status.json()["database"] == {
        **status.json()["database"],
        "status": "error",
        "connected": False,
    }
    # Metrics still answer, saying which sources could not be read.
    assert scrape.status_code == 200
    assert 'replyguy_scrape_source_up{source="pipeline"} 0.0' in scrape.text
    # One line per failing probe, never a traceback, nothing at ERROR from the probes
    # (the breakers say once, at ERROR, that their shared store is unreachable).
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert [line for line in errors if "resilience.breaker" not in line] == []
    failing = [line for line in log.splitlines() if "resilience.health" in line]
    assert [line.split(" resilience.health health ")[1].split(":")[0] for line in failing] == [
        "/health/ready/ error",
        "/health/ error",
        "/health/status/ error",
    ]
    assert all(" WARNING " in line for line in failing)


# --- every check ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_check_passes_on_a_healthy_install(client: Client, workers_alive):
    response = client.get("/health/?format=json")
    assert response.status_code == 200
    checks = checks_of(response)
    assert set(checks) == {
        "Database(alias='default')",
        "Cache(alias='default')",
        "WorkerHeartbeat()",
        "PublishLag()",
        "DeadLetters()",
        *(f"Breaker(name='{name}')" for name in SERVICES),
    }
    assert set(checks.values()) == {"OK"}
    assert client.get("/health/ready/").status_code == 200
    assert client.get("/health/", HTTP_ACCEPT="text/html").status_code == 200


@pytest.mark.django_db
def test_a_silent_worker_fails_the_probe():
    cache.clear()
    response = Client().get("/health/?format=json")
    assert response.status_code == 503
    assert checks_of(response)["WorkerHeartbeat()"] == (
        "Unavailable: no django-q2 worker has run a task yet (start qcluster)"
    )
    beat(now=timezone.now().timestamp() - 6 * 60)
    response = Client().get("/health/?format=json")
    assert checks_of(response)["WorkerHeartbeat()"] == (
        "Unavailable: no django-q2 worker has run a task for 6 min"
    )
    # Readiness does not depend on the workers.
    assert Client().get("/health/ready/").status_code == 200


@pytest.mark.django_db
def test_an_open_breaker_is_degraded_not_down(client: Client, workers_alive):
    get_breaker("twitter_api").force_open()
    get_breaker("ai_service").open_until(timezone.now().timestamp() + 90)
    response = client.get("/health/?format=json")
    assert response.status_code == 200
    checks = checks_of(response)
    assert checks["Breaker(name='twitter_api')"] == (
        "Warning: forced_open: calls refused, until an operator acts"
    )
    assert checks["Breaker(name='ai_service')"].startswith(
        "Warning: open: calls refused, trying again in "
    )
    assert checks["Breaker(name='telegram')"] == "OK"


@pytest.mark.django_db
def test_a_failing_service_without_a_recent_answer_is_degraded(client: Client, workers_alive):
    breaker = get_breaker("telegram")
    calls_add("telegram", ok=3, rejected=0, last_ok_at=timezone.now().timestamp() - 3600)
    with pytest.raises(ServiceError):
        breaker.call(_raises("connection refused"))
    checks = checks_of(client.get("/health/?format=json"))
    assert checks["Breaker(name='telegram')"] == (
        "Warning: 1 failure in a row, no answer for 60 min"
    )
    # A recent answer makes one failure nothing to report.
    calls_add("telegram", ok=1, rejected=0, last_ok_at=timezone.now().timestamp())
    checks = checks_of(client.get("/health/?format=json"))
    assert checks["Breaker(name='telegram')"] == "OK"


@pytest.mark.django_db
def test_overdue_replies_and_exhausted_dead_letters_are_degraded(client: Client, workers_alive):
    due_reply("1", due_for=timedelta(minutes=5))
    assert checks_of(client.get("/health/?format=json"))["PublishLag()"] == "OK"
    due_reply("2", due_for=timedelta(minutes=40))
    failed = tweet("3", status=Status.FAILED)
    FailedTweet.objects.create(
        queued_tweet=failed,
        target_tweet_id="3",
        stage="publish",
        error="x",
        error_kind="permanent",
        status=FailedTweetStatus.EXHAUSTED,
    )
    response = client.get("/health/?format=json")
    assert response.status_code == 200
    checks = checks_of(response)
    assert checks["PublishLag()"] == "Warning: the oldest due reply has waited 40 min"
    assert checks["DeadLetters()"] == "Warning: 1 dead letters used up their retries: review them"


@pytest.mark.django_db
def test_the_lag_says_when_publishing_is_paused(client: Client, workers_alive, settings):
    settings.PUBLISHING_PAUSED = True
    due_reply("1", due_for=timedelta(hours=2))
    checks = checks_of(client.get("/health/?format=json"))
    assert checks["PublishLag()"] == (
        "Warning: the oldest due reply has waited 120 min (publishing is paused)"
    )


# --- outside services hang: probes never call them ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_probes_answer_while_x_the_model_and_telegram_hang(sandbox, workers_alive):
    for app in (sandbox.x, sandbox.openai, sandbox.telegram):
        app.faults.add("*", "hang", latency=30)
    paths = ["/health/", "/health/?format=json", "/health/ready/", "/health/status/", "/metrics"]
    with web_process(worker_env(sandbox)) as (url, _):
        answers = {path: requests.get(url + path, timeout=GENEROUS) for path in paths}
    assert {path: r.status_code for path, r in answers.items()} == dict.fromkeys(paths, 200)
    assert set(answers["/health/?format=json"].json().values()) == {"OK"}
    assert answers["/health/status/"].json()["overall"] == "healthy"
    # Not one request reached the stand-ins.
    assert (sandbox.x.requests, sandbox.openai.requests, sandbox.telegram.requests) == ([], [], [])


# --- the status document ----------------------------------------------------------------------


@pytest.mark.django_db
def test_status_has_the_seeds_shape_and_says_the_sandbox_is_simulated(sandbox, workers_alive):
    calls_add("twitter_api", ok=2, rejected=0, last_ok_at=timezone.now().timestamp() - 30)
    doc = Client().get("/health/status/").json()
    assert set(doc) == {"database", "twitter", "ai", "telegram", "checks", "overall"}
    assert doc["overall"] == "healthy"
    assert doc["database"]["status"] == "healthy"
    assert doc["database"]["connected"] is True
    flags = {"twitter": "authenticated", "ai": "available", "telegram": "connected"}
    for service, flag in flags.items():
        entry = doc[service]
        assert entry["status"] == "healthy", entry
        assert entry[flag] is True
        assert entry["simulated"] is True
        assert entry["configured"] is True
        assert entry["circuit_breaker"]["state"] == "closed"
        assert set(entry["circuit_breaker"]) >= {"state", "failures", "opened_at", "retry_after"}
        assert "last_error" not in entry["circuit_breaker"]
    assert 25 <= doc["twitter"]["last_success_age_seconds"] <= 60
    assert doc["ai"]["last_success_at"] is None


@pytest.mark.django_db
def test_status_names_an_open_breaker_and_a_refused_setup(sandbox, workers_alive, settings):
    get_breaker("twitter_api").force_open()
    AlertEvent.objects.create(
        kind=AlertKind.CONFIGURATION_REFUSED, subject="llm 401 bad key", message="refused"
    )
    settings.TELEGRAM_BOT_TOKEN = ""
    response = Client().get("/health/status/")
    assert response.status_code == 200
    doc = response.json()
    assert (doc["twitter"]["status"], doc["twitter"]["authenticated"]) == ("error", False)
    assert doc["twitter"]["circuit_breaker"]["state"] == "forced_open"
    assert (doc["ai"]["status"], doc["ai"]["available"]) == ("error", False)
    assert doc["ai"]["circuit_breaker"]["state"] == "closed"
    assert (doc["telegram"]["configured"], doc["telegram"]["connected"]) == (False, False)
    assert doc["telegram"]["simulated"] is False
    # Outside services down: Reply Guy waits, it is not broken.
    assert doc["overall"] == "degraded"


@pytest.mark.django_db
def test_real_services_are_not_called_simulated(settings, workers_alive):
    settings.X_API_BASE_URL = "https://api.twitter.com"
    settings.X_API_KEY = "real-key"
    settings.OPENAI_BASE_URL = "http://localhost:11434/v1"  # a real local model server
    settings.OPENAI_API_KEY = "ollama"
    doc = Client().get("/health/status/").json()
    assert doc["twitter"]["simulated"] is False
    assert doc["ai"]["simulated"] is False


# --- no secret in any output --------------------------------------------------------------------


@pytest.mark.django_db
def test_no_secret_in_any_health_or_metrics_output(sandbox, workers_alive, settings, caplog):
    secrets = [
        str(value)
        for name, value in sandbox.env().items()
        if any(part in name for part in ("KEY", "SECRET", "TOKEN"))
    ]
    settings.METRICS_TOKEN = "metrics-bearer-token"
    # Errors that quote every credential, as a misbehaving server might echo them.
    for name in SERVICES:
        for _ in range(6):
            with pytest.raises(ServiceError):
                get_breaker(name).call(_raises(f"refused {' '.join(secrets)}"))
    assert "refused" in get_breaker("twitter_api").get_status()["last_error"]
    client = Client()
    outputs = [
        client.get(path).content.decode()
        for path in (
            "/health/",
            "/health/?format=json",
            "/health/?format=text",
            "/health/?format=openmetrics",
            "/health/ready/",
            "/health/live/",
            "/health/status/",
        )
    ]
    outputs.append(
        client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-bearer-token").content.decode()
    )
    outputs.append(caplog.text)
    assert "open" in outputs[1]
    for secret in [*secrets, "metrics-bearer-token"]:
        for output in outputs:
            assert secret not in output


def _raises(message: str) -> Callable[[], None]:
    def unwell() -> None:
        raise ServiceError(message, kind=ErrorKind.TRANSIENT, service="any")

    return unwell


# --- the command and the HTTPS redirect ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_manage_py_health_check_runs_the_same_checks(sandbox, workers_alive):
    def health_check() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "health_check", "health", "--no-http"],
            cwd=ROOT,
            env=worker_env(sandbox),
            capture_output=True,
            text=True,
            timeout=60,
        )

    healthy = health_check()
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = healthy.stdout.splitlines()
    assert "WorkerHeartbeat(): OK" in lines
    assert "Breaker(name='twitter_api'): OK" in lines
    assert len(lines) == 8

    get_breaker("telegram").force_open()
    degraded = health_check()
    # django-health-check's command fails on any warning: degraded is not "all well".
    assert degraded.returncode == 1
    assert "Breaker(name='telegram'): Warning: forced_open" in degraded.stdout


@pytest.mark.django_db
def test_probes_and_metrics_are_exempt_from_the_https_redirect(settings, workers_alive):
    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    for path in ("/health/live/", "/health/ready/", "/health/", "/health/status/", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert client.get("/admin/").status_code == 301
    assert client.get("/metricsx").status_code == 301  # the exemption is exact


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/health/live/", "/health/live", "/metrics", "/metrics/"])
def test_probes_answer_a_platforms_own_host_header_and_either_slash(
    client: Client, settings, workers_alive, path
):
    settings.ALLOWED_HOSTS = ["replyguy.example.com"]
    settings.DEBUG = False
    response = client.get(path, HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200
    assert client.get("/admin/login/", HTTP_HOST="10.1.2.3:8000").status_code == 400


class HungServer:
    """A TCP server that accepts connections and never answers (a hung Redis)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.connections = 0
        self.held: list[object] = []
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            self.held.append(conn)

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        for conn in self.held:
            conn.close()  # type: ignore[attr-defined]
        self.sock.close()


@pytest.mark.django_db
def test_a_hung_redis_is_waited_for_once_per_probe_not_once_per_breaker(
    client: Client, settings, workers_alive
):
    from tests.helpers import reset_breakers

    hung = HungServer()
    try:
        settings.RESILIENCE = {**settings.RESILIENCE, "STORE": "redis", "REDIS_URL": hung.url}
        reset_breakers()
        response = client.get("/health/status/")
        assert response.status_code in (200, 503)
        # Three breakers live in the hung Redis; one wait tells them all.
        assert hung.connections == 1
    finally:
        hung.close()
        settings.RESILIENCE = {**settings.RESILIENCE, "STORE": "database", "REDIS_URL": ""}
        reset_breakers()
