"""Settings fail loudly on bad input, pass Django's deploy checks, and SQLite takes concurrency."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

import pytest

from tests.helpers import ROOT, environ_without


def manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """``manage.py`` in a new process: this environment less the test run's, plus ``env``."""
    base = environ_without("DJANGO", "PYTEST")
    for name in (
        "SECRET_KEY",
        "DEBUG",
        "DATABASE_URL",
        "REDIS_URL",
        "ALLOWED_HOSTS",
        "SECURE_SSL_REDIRECT",
    ):
        base.pop(name, None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PRODUCTION = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "DEBUG": "false",
    "ALLOWED_HOSTS": "replyguy.example.com",
}


def test_production_settings_pass_check_deploy_without_warnings(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={**PRODUCTION, "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_secret_key_is_required_outside_local_mode():
    result = manage("check", env={"DEBUG": "false"})
    assert result.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DEBUG", "maybe", "DEBUG='maybe' is not valid: expected true or false"),
        ("MAX_POSTS_PER_HOUR", "four", "MAX_POSTS_PER_HOUR='four' is not valid: expected a whole"),
        ("QUIET_HOURS_START", "25", "QUIET_HOURS_START='25' is not valid: expected at most 23"),
        (
            "REPLY_MODE",
            "yolo",
            "REPLY_MODE='yolo' is not valid: expected one of auto, api, handoff",
        ),
        ("Q_BROKER", "redis", "Q_BROKER=redis needs REDIS_URL"),
    ],
)
def test_bad_values_stop_the_process_naming_the_variable(name, value, message):
    result = manage("check", env={**PRODUCTION, name: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_sqlite_file_takes_concurrent_writers_without_locking_errors(tmp_path):
    """Four processes hammer one breaker row: no "database is locked", no lost update."""
    env = {"DEBUG": "true", "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}
    assert manage("migrate", "-v", "0", env=env).returncode == 0
    writer = (
        "from resilience.stores import DatabaseStore\n"
        "from resilience import state\n"
        "policy = state.Policy(failure_threshold=10**6, recovery_timeout=60,"
        " half_open_max_calls=1)\n"
        "store = DatabaseStore()\n"
        "for i in range(50):\n"
        "    store.update('shared', lambda s: state.record_failure(s, policy, 0.0))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", writer],
            cwd=ROOT,
            env={**os.environ, **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], errors
    count = (
        "from resilience.stores import DatabaseStore\n"
        "print(DatabaseStore().load('shared').total_failures)\n"
    )
    result = manage("shell", "-c", count, env=env)
    assert result.stdout.strip().splitlines()[-1] == "200"


def test_env_example_lists_every_variable_the_settings_read():
    source = (ROOT / "replyguy" / "settings.py").read_text()
    read = set(
        re.findall(r'env_(?:str|bool|int|float|choice|list|int_list)\(\s*"([A-Z_0-9]+)"', source)
    )
    listed = set(re.findall(r"^([A-Z_0-9]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read, "no variables found: the pattern is stale"
    assert read - listed == set(), "read by settings but missing from .env.example"
    assert listed - read == set(), "listed in .env.example but never read"
