"""A first run that explains itself: `make run` (replyguy/launch.py), manage.py by hand,
bad settings, and stopping on SIGTERM or Ctrl-C with every child gone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from replyguy.localenv import write_env_file
from tests.helpers import ROOT, environ_without, free_port, until, worker_env

OUTSIDE = ("X_", "OPENAI_", "AI_MODEL", "TELEGRAM_", "DEBUG", "SECRET_KEY", "PYTEST")


def local_env(tmp_path: Path, dotenv: str = "", **extra: str) -> dict[str, str]:
    """A shell with no settings but the project's files: ``tmp_path/.env`` and
    ``tmp_path/var/local.env``, as a newcomer's checkout has them."""
    (tmp_path / ".env").write_text(dotenv)
    env = environ_without(*OUTSIDE, "REPLYGUY_", "DATABASE_URL", "ALLOWED_HOSTS", "LOG_LEVEL")
    env.update(
        REPLYGUY_ENV_FILES="on",
        REPLYGUY_DOTENV=str(tmp_path / ".env"),
        REPLYGUY_VAR_DIR=str(tmp_path / "var"),
        **extra,
    )
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- bad settings: one line naming the variable ------------------------------------------


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("DEBUG=maybe", "DEBUG"),
        ("Q_WORKERS=two", "Q_WORKERS"),
        ("Q_STOP_GRACE_SECONDS=nan", "Q_STOP_GRACE_SECONDS"),
        ("DATABASE_URL=postgres://owner:hunter2@db.example:port/replyguy", "DATABASE_URL"),
        ("DATABASE_URL=sqlite:////etc/passwd/db.sqlite3", "DATABASE_URL"),
        ("TIME_ZONE=Mars/Base", "TIME_ZONE"),
        ("LOG_LEVEL=LOUD", "LOG_LEVEL"),
        ("DATABASE_URL=mysql://owner:hunter2@db.example/replyguy", "DATABASE_URL"),
        ("REDIS_URL=localhost:6379", "REDIS_URL"),
        ("TELEGRAM_ALLOWED_USER_IDS=42,me", "TELEGRAM_ALLOWED_USER_IDS"),
        ("this is not a setting", ".env, line 2"),
    ],
)
def test_a_bad_value_in_env_stops_manage_py_with_one_line_naming_it(tmp_path, line, named):
    # DEBUG on first, so each case is the one bad value (the DEBUG case replaces it).
    dotenv = line + "\n" if line.startswith("DEBUG") else f"DEBUG=true\n{line}\n"
    done = manage(local_env(tmp_path, dotenv), "check")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0]
    assert lines[0].startswith("Reply Guy cannot start:")
    assert "hunter2" not in done.stderr, "a database URL's password is never shown"


def test_the_launch_stops_on_a_bad_value_before_starting_anything(tmp_path):
    launch = subprocess.run(
        [sys.executable, "-m", "replyguy.launch", "--port", str(free_port())],
        cwd=ROOT,
        env=local_env(tmp_path, "MAX_DELAY_MINUTES=soon\n"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert launch.returncode == 2
    assert launch.stderr.strip().splitlines() == [
        "Reply Guy cannot start: MAX_DELAY_MINUTES='soon' is not valid: expected a whole number"
    ]
    assert not (tmp_path / "var" / "db.sqlite3").exists(), "nothing ran: not even migrate"


def test_the_launch_names_a_busy_web_port_and_how_to_choose_another(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launch = subprocess.run(
            [sys.executable, "-m", "replyguy.launch", "--port", str(port)],
            cwd=ROOT,
            env=local_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert launch.returncode == 2
    (line,) = launch.stderr.strip().splitlines()
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert f"make run PORT={port + 1}" in line


# --- manage.py by hand after make run -------------------------------------------------------


SHOW = (
    "from django.conf import settings as s; "
    "print(s.DEBUG, s.X_API_BASE_URL, s.AI_MODEL, s.MIN_DELAY_MINUTES, sep='|')"
)


def shown_settings(env: dict[str, str]) -> list[str]:
    done = manage(env, "shell", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1].split("|")


def made_run(tmp_path: Path) -> None:
    """What `make run` leaves in var/local.env with no X account."""
    write_env_file(
        tmp_path / "var" / "local.env",
        {"DEBUG": "true", "X_API_BASE_URL": "http://127.0.0.1:8701", "AI_MODEL": "sandbox-model"},
        "written by make run",
    )


def test_manage_py_by_hand_sees_what_make_run_wrote(tmp_path):
    made_run(tmp_path)
    # .env.example's layout: empty values and defaults, which make run decided over.
    env = local_env(tmp_path, "DEBUG=\nX_API_KEY=\nX_API_BASE_URL=https://api.twitter.com\n")
    helped = manage(env, "help")
    assert helped.returncode == 0, helped.stderr
    for command in ("recover_stale", "run_pipeline", "telegram_bot", "sandbox", "qcluster"):
        assert command in helped.stdout, f"manage.py help hides {command}"
    assert shown_settings(env) == ["True", "http://127.0.0.1:8701", "sandbox-model", "5"]
    # The environment wins over .env.
    assert shown_settings(env | {"MIN_DELAY_MINUTES": "7"})[3] == "7"


@pytest.mark.parametrize(
    ("where", "setting"),
    [
        ("environment", "X_API_KEY=a-real-key"),
        (".env", "X_API_KEY=a-real-key"),
        ("environment", "SECRET_KEY=a-deploys-secret"),
    ],
)
def test_a_real_account_or_a_deploy_never_reads_make_runs_local_settings(tmp_path, where, setting):
    made_run(tmp_path)
    name, value = setting.split("=")
    env = local_env(tmp_path, f"{setting}\n" if where == ".env" else "")
    if where == "environment":
        env[name] = value
    env["DEBUG"] = "true" if name == "X_API_KEY" else ""
    debug, x_url, model, _ = shown_settings(env)
    assert x_url == "https://api.twitter.com", "the sandbox's address reached a real process"
    assert model != "sandbox-model"
    assert debug == ("True" if name == "X_API_KEY" else "False")


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"DEBUG=true\nX_API_SECRET: hunter2\n", "line 2: expected NAME=value"),
        (b"DEBUG=\xff\n", "is not UTF-8 text"),
    ],
)
def test_an_unreadable_env_file_is_one_line_that_never_shows_its_values(tmp_path, content, named):
    env = local_env(tmp_path)
    (tmp_path / ".env").write_bytes(content)
    for command in (["manage.py", "check"], ["-m", "replyguy.launch", "--port", "1"]):
        done = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode != 0
        (line,) = done.stderr.strip().splitlines()
        assert named in line
        assert "hunter2" not in line


def test_env_files_take_a_bom_quotes_export_and_comments(tmp_path):
    env = local_env(tmp_path)
    (tmp_path / ".env").write_bytes(
        b"\xef\xbb\xbfDEBUG=true\r\nexport AI_MODEL = 'llama 3.1 # not a comment'\r\n"
        b"MIN_DELAY_MINUTES=2 # two minutes\r\n"
    )
    debug, _, model, delay = shown_settings(env)
    assert (debug, model, delay) == ("True", "llama 3.1 # not a comment", "2")


def test_without_make_run_a_missing_secret_key_is_one_line(tmp_path):
    done = manage(local_env(tmp_path), "check")
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert "SECRET_KEY is required when DEBUG is off" in line


# --- the sandbox command -------------------------------------------------------------------


def test_sandbox_env_prints_the_settings_without_binding_while_a_sandbox_runs(tmp_path):
    with socket.socket() as running:
        running.bind(("127.0.0.1", 0))
        running.listen()
        port = running.getsockname()[1]
        done = manage(
            local_env(tmp_path, "DEBUG=true\n"), "sandbox", "--env", "--x-port", str(port)
        )
    assert done.returncode == 0, done.stderr
    assert f"export X_API_BASE_URL=http://127.0.0.1:{port}" in done.stdout.splitlines()
    assert "export TELEGRAM_CHAT_ID=1001" in done.stdout.splitlines()


def test_the_sandbox_on_a_busy_port_says_so_in_one_line(tmp_path):
    with socket.socket() as running:
        running.bind(("127.0.0.1", 0))
        running.listen()
        port = running.getsockname()[1]
        done = manage(local_env(tmp_path, "DEBUG=true\n"), "sandbox", "--x-port", str(port))
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert "the sandbox cannot listen" in line
    assert str(port) in line


# --- make run end to end, and stopping it ---------------------------------------------------


class Output:
    """A child's merged output, read on a thread so it never blocks on a full pipe."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def descendants(pid: int) -> list[int]:
    from bot.management.commands.qcluster import descendants as below

    return below(pid)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def get_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (loopback)
            return json.load(answer)
    except urllib.error.HTTPError as error:  # 503 while no worker has beaten yet
        return json.load(error)


@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_make_run_explains_itself_and_stops_every_child_within_seconds(tmp_path, stop):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    web = free_port()
    launch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "replyguy.launch",
            "--port",
            str(web),
            "--sandbox-ports",
            f"{busy_port},{free_port()},{free_port()}",
        ],
        cwd=ROOT,
        env=local_env(tmp_path, "# a newcomer's .env: nothing set\n"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own terminal group: Ctrl-C is SIGINT to the group
    )
    output = Output(launch)
    try:
        assert until(lambda: "replies " in output.text or launch.poll() is not None, timeout=90)
        assert launch.poll() is None, output.text
        said = output.text
        assert f"port {busy_port} is busy: the sandbox x is on" in said
        assert "X, the model and Telegram: the local sandbox" in said
        assert "no quiet hours" in said
        assert "0 to 1 min after approval" in said
        assert "/phone (the owner's chat)" in said
        assert "login" in said
        assert "admin" in said
        assert "database       SQLite file" in said
        assert "sandbox.sqlite3" in said
        # The worker's own first lines say it too (on a PaaS they are the log).
        assert until(lambda: "replyguy.worker pacing: " in output.text, timeout=30)
        assert "simulated: X, the model and Telegram are the local sandbox" in output.text

        status = get_json(f"http://127.0.0.1:{web}/health/status/")
        assert all(status[name]["simulated"] for name in ("twitter", "ai", "telegram"))

        # A command by hand, in a shell with nothing set: the launch's settings carry over.
        by_hand = manage(
            local_env(tmp_path),
            "shell",
            "-c",
            "from django.conf import settings as s; print(s.DEBUG, s.X_API_BASE_URL)",
        )
        assert by_hand.returncode == 0, by_hand.stderr
        assert by_hand.stdout.split()[-2] == "True"
        assert by_hand.stdout.split()[-1] != f"http://127.0.0.1:{busy_port}"

        # Everything it started: sandbox, cluster (sentinel, workers...), poller, server.
        assert until(lambda: len(descendants(launch.pid)) >= 6, timeout=30)
        children = descendants(launch.pid)
        commands = " ".join(Path(f"/proc/{pid}/cmdline").read_text() for pid in children)
        for part in ("sandbox", "qcluster", "telegram_bot", "runserver"):
            assert part in commands

        started = time.monotonic()
        if stop == "SIGTERM":
            launch.send_signal(signal.SIGTERM)
        else:
            os.killpg(launch.pid, signal.SIGINT)
        assert launch.wait(30) == 0, output.text
        assert time.monotonic() - started < 20, "stopped within seconds, not the grace period"
        assert until(lambda: not any(alive(pid) for pid in children), timeout=5)
        output.thread.join(5)
        assert output.lines[-1] == "Reply Guy stopped.", output.text
        assert "Traceback" not in output.text, output.text
    finally:
        busy.close()
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
        for pid in descendants(launch.pid):
            os.kill(pid, signal.SIGKILL)


def start_cluster(env: dict[str, str]) -> tuple[subprocess.Popen, Output]:
    """A real `manage.py qcluster` on this test's database, its output read aside."""
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return cluster, Output(cluster)


def stop_cluster(cluster: subprocess.Popen) -> None:
    """Whatever the test left running, stopped: SIGTERM, then SIGKILL to all of it."""
    if cluster.poll() is None:
        cluster.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.wait(30)
    for pid in descendants(cluster.pid):
        os.kill(pid, signal.SIGKILL)
    if cluster.poll() is None:
        cluster.kill()


@pytest.mark.django_db(transaction=True)
def test_a_worker_stuck_in_a_task_is_killed_after_the_grace_period(tmp_path, sandbox):
    from django_q.tasks import async_task

    env = worker_env(sandbox, Q_STOP_GRACE_SECONDS="2", LOG_LEVEL="WARNING")
    cluster, output = start_cluster(env)
    marker = tmp_path / "started"
    try:
        async_task("tests.helpers.hang", str(marker), 600)
        assert until(marker.exists, timeout=60), output.text
        worker = int(marker.read_text())
        children = descendants(cluster.pid)
        assert worker in children

        started = time.monotonic()
        cluster.send_signal(signal.SIGTERM)
        assert cluster.wait(30) == 1, output.text  # stopped, not cleanly
        assert time.monotonic() - started < 15, "2 s of grace, then the kill"
        assert until(lambda: not any(alive(pid) for pid in children), timeout=5)
        output.thread.join(5)
        assert "running tasks get 2 s to finish" in output.text
        assert "still running 2 s after the stop: killing its" in output.text
    finally:
        stop_cluster(cluster)


def test_the_sandbox_models_drafts_say_they_are_placeholders():
    import openai

    from bot.management.commands.sandbox import PLACEHOLDER
    from sandbox.harness import Sandbox

    with Sandbox(placeholder=PLACEHOLDER) as sandbox:
        env = sandbox.env()
        model = openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"])
        answer = model.chat.completions.create(
            model=env["AI_MODEL"],
            messages=[{"role": "user", "content": "Reply to: testing retries without sleeping"}],
        )
    assert answer.choices[0].message.content.startswith("[sandbox placeholder] ")


@pytest.mark.django_db(transaction=True)
def test_a_cluster_whose_workers_are_stuck_is_restarted_in_place(tmp_path, sandbox):
    """Workers killed while one held the task queue's lock leave the cluster taking no
    task for good (django-q2 starts new workers into the same wait); the watchdog sees
    tasks waiting and none started, and starts the cluster again."""
    from django_q.tasks import async_task

    env = worker_env(
        sandbox,
        Q_TIMEOUT_SECONDS="10",
        Q_RETRY_SECONDS="20",
        Q_STUCK_SECONDS="40",
        LOG_LEVEL="WARNING",
    )
    cluster, output = start_cluster(env)
    first, second = tmp_path / "first", tmp_path / "second"
    try:
        async_task("tests.helpers.hang", str(first), 0)
        assert until(first.exists, timeout=60), output.text
        time.sleep(1)  # the workers are back waiting for the next task
        (sentinel,) = Path(f"/proc/{cluster.pid}/task/{cluster.pid}/children").read_text().split()
        for pid in descendants(int(sentinel)):
            os.kill(pid, signal.SIGKILL)  # as the OOM killer would: no cleanup

        # More than the frozen queue takes (django-q2 hands a cluster workers² at a
        # time): the rest wait in the broker, which is what the watchdog watches.
        for n in range(8):
            async_task("tests.helpers.hang", f"{second}-{n}", 0)
        ran = lambda: list(tmp_path.glob("second-*"))  # noqa: E731
        assert until(ran, timeout=150), output.text
        assert "the cluster is stuck: tasks have waited" in output.text
        assert cluster.poll() is None, "started again in place, same process"
    finally:
        stop_cluster(cluster)


@pytest.mark.parametrize(
    ("waiting", "starts", "restarted"),
    [
        # A schedule's batch seen before the pusher takes it, every 30 s: healthy.
        ([True, False, False, False, False, False] * 4, [], False),
        # Tasks always waiting (busy workers), but tasks start: healthy.
        ([True] * 20, [10, 40, 70, 90], False),
        # Tasks always waiting, none started since they were first seen: stuck.
        ([True] * 20, [], True),
        # The broker unreachable reads as nothing waiting: never a restart.
        ([False] * 20, [], False),
    ],
)
def test_the_watchdog_restarts_only_a_cluster_that_takes_no_task(waiting, starts, restarted):
    from bot.management.commands import qcluster

    watchdog = qcluster.Watchdog(stuck_after=60, stop=qcluster.Deadline(10))
    restarts = []
    watchdog.restart = restarts.append
    answers = iter(waiting)
    watchdog._tasks_waiting = lambda: next(answers)
    started = 0.0
    for tick in range(len(waiting)):
        now = 1000.0 + tick * 5
        started = max([started] + [1000.0 + s for s in starts if 1000.0 + s <= now])
        qcluster.LAST_START.value = started
        watchdog.check(now)
    assert bool(restarts) == restarted


def launch_once(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The launcher, expected to stop before starting anything."""
    return subprocess.run(
        [sys.executable, "-m", "replyguy.launch", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("dotenv", "said"),
    [
        (
            "DATABASE_URL=postgres://owner:hunter2@127.0.0.1:5432/real\n",
            "the sandbox does not use DATABASE_URL",
        ),
        ("DATABASE_URL=postgres://bob:Hunter2/x@db.example:5432/app\n", "DATABASE_URL"),
        ("Q_STOP_GRACE_SECONDS=abc\n", "Q_STOP_GRACE_SECONDS='abc' is not valid"),
        ("AI_MODEL=llama\x003\n", "AI_MODEL holds a NUL character"),
    ],
)
def test_the_launch_refuses_in_one_line_and_never_shows_a_password(tmp_path, dotenv, said):
    done = launch_once(local_env(tmp_path, dotenv))
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert said in line
    assert "unter2" not in done.stderr + done.stdout


def test_local_settings_are_all_or_nothing_and_say_when_ignored(tmp_path):
    made_run(tmp_path)
    env = local_env(tmp_path, "DEBUG=true\n") | {"X_API_BASE_URL": "https://api.twitter.com"}
    done = manage(env, "shell", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    assert "local.env is ignored: X_API_BASE_URL in the environment differs" in done.stderr
    assert done.stdout.strip().splitlines()[-1].split("|")[2] != "sandbox-model"


def test_env_example_as_env_still_gets_the_sandboxs_quick_pacing(tmp_path):
    """.env.example spells out the defaults; copied as .env they count as unset."""
    example = (ROOT / ".env.example").read_text()
    env = local_env(tmp_path, example)
    launch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "replyguy.launch",
            "--port",
            str(free_port()),
            "--sandbox-ports",
            f"{free_port()},{free_port()},{free_port()}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(launch)
    try:
        assert until(lambda: "replies " in output.text or launch.poll() is not None, timeout=90)
        assert "0 to 1 min after approval" in output.text, output.text
        assert "manage.py commands use these settings" in output.text
        assert shown_settings(local_env(tmp_path, example))[1].startswith("http://127.0.0.1:")
    finally:
        launch.send_signal(signal.SIGTERM)
        launch.wait(30)
