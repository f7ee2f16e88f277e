"""``make run``: the whole service on one machine, stopped cleanly by Ctrl-C.

``python -m replyguy.launch [--host H] [--port P]`` reads ``.env``, decides what local
mode adds and writes it to ``var/local.env`` (``replyguy.localenv``), so ``manage.py``
run by hand sees the same service. It checks the settings and the database, migrates,
makes sure there is an admin login, and starts, each in its own process group:

- without ``X_API_KEY``, the sandbox (``manage.py sandbox --demo``, always on
  127.0.0.1) for X, and for the model and Telegram unless ``.env`` configures them.
  Its ports are 8701-8703, or free ones when those are taken (it says so). The sandbox
  gets its own SQLite file (``var/sandbox.sqlite3``; it refuses ``DATABASE_URL``), so
  nothing drafted against it is ever published to a real X later; and, unless ``.env``
  sets pacing other than the defaults, replies go out within a minute with no quiet
  hours;
- the django-q2 cluster, the Telegram poller (when Telegram is configured or
  simulated) and the web server.

It says what runs where, what is simulated and when an approved reply goes out. A
busy web port, a bad setting or an unreachable database stops it at once with one
line. Ctrl-C, SIGTERM or SIGHUP stop every child: SIGTERM to the web server, the poller
and the worker, then to the sandbox once they are gone, SIGKILL to whatever is left
after the worker's grace period; it then exits 0. A child that dies on its own stops
the rest, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bot.simulated import listed
from replyguy.defaults import PACING_DEFAULTS
from replyguy.localenv import (
    BASE_DIR,
    EnvFileError,
    dotenv_path,
    files_on,
    local_ignored,
    local_path,
    read_env_file,
    setting,
    write_env_file,
)
from sandbox.harness import OUR_USERNAME, Sandbox

SANDBOX_HOST = "127.0.0.1"  # never the network: the phone approves replies
SANDBOX_PORTS = {"x": 8701, "openai": 8702, "telegram": 8703}
# The setting that makes a service real, and the words for it.
SIMULATED_BY = {
    "x": ("X_API_KEY", "X"),
    "openai": ("OPENAI_API_KEY", "the model"),
    "telegram": ("TELEGRAM_BOT_TOKEN", "Telegram"),
}
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
# A first run should see its approval go out, not wait half an hour or until 07:00.
# Pacing set to the defaults (.env.example spells them out) counts as unset.
SANDBOX_PACING = {
    "MIN_DELAY_MINUTES": "0",
    "MAX_DELAY_MINUTES": "1",
    "MIN_SPACING_MINUTES": "1",
    "QUIET_HOURS_START": "0",
    "QUIET_HOURS_END": "0",
}
LOCAL_HEADER = """\
Written by `make run` at each start: what local mode added to .env.
manage.py reads it (over .env, under the environment), so commands run by hand see
the same service. Ignored whenever X_API_KEY or SECRET_KEY is set. Safe to delete."""
READY_SECONDS = 60
STOP_MARGIN_SECONDS = 5


class Stop(Exception):
    """Ends the launch with one line and a status (never a traceback)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Child:
    name: str
    process: subprocess.Popen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="the web server's address")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--sandbox-ports",
        default=",".join(map(str, SANDBOX_PORTS.values())),
        help="X, model and Telegram ports to try first (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    launch = Launch(args.host, args.port, _ports(parser, args.sandbox_ports))
    try:
        return launch.run()
    except Stop as stop:
        if stop.status:
            say(f"Reply Guy cannot start: {stop}", error=True)
        else:
            say(f"Reply Guy: {stop}")
        return stop.status
    finally:
        launch.stop_children()


def _ports(parser: argparse.ArgumentParser, text: str) -> dict[str, int]:
    try:
        ports = [int(part) for part in text.split(",")]
    except ValueError:
        ports = []
    if len(ports) != 3 or any(not 0 <= port < 65536 for port in ports):
        parser.error("--sandbox-ports takes three port numbers, e.g. 8701,8702,8703")
    return dict(zip(SANDBOX_PORTS, ports, strict=True))


def say(text: str, *, error: bool = False) -> None:
    """Print, even when the terminal is gone (SIGHUP): stopping must still happen."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr if error else sys.stdout, flush=True)


class Launch:
    def __init__(self, host: str, port: int, sandbox_ports: dict[str, int]) -> None:
        self.host = host
        self.port = port
        self.sandbox_ports = sandbox_ports
        self.children: list[Child] = []
        self.signalled: str | None = None
        self.sandbox: dict[str, int] = {}  # the sandbox's ports, when it runs
        self.quick_pacing = False
        self.lines: list[tuple[str, str]] = []  # what to say once everything runs

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        self.settings()
        pacing = _checked_django()
        self.manage("migrate", "--no-input", "-v", "0")
        self.manage("local_admin", say_it="login")
        if self.sandbox:
            ports = [f"--{name}-port={port}" for name, port in self.sandbox.items()]
            self.start("sandbox", "sandbox", "--demo", "--host", SANDBOX_HOST, *ports)
            for port in self.sandbox.values():
                self.wait_listening(SANDBOX_HOST, port, "sandbox")
        self.start("worker", "qcluster")
        if os.environ.get("TELEGRAM_BOT_TOKEN"):
            self.start("telegram poller", "telegram_bot")
        self.start("web server", "runserver", "--noreload", f"{self.host}:{self.port}")
        self.wait_listening(self.host, self.port, "web server")
        if self.quick_pacing:
            pacing += " (the sandbox's quick pacing: set MIN_DELAY_MINUTES and the rest in .env)"
        self.say("how", _routes(os.environ.get("REPLY_MODE", "").strip() or "auto"))
        self.say_running(pacing)
        return self.supervise()

    # --- settings ---------------------------------------------------------------------

    def settings(self) -> None:
        """Load .env, decide what local mode adds, write it to var/local.env and put it in
        this process's environment (the children inherit it)."""
        try:
            dotenv = read_env_file(dotenv_path()) if files_on() else {}
        except EnvFileError as error:
            raise Stop(str(error)) from None
        environ = dict(os.environ)  # as a command run by hand will find it
        for name, value in dotenv.items():
            if not _env(name):
                os.environ[name] = value
        self.require_free(self.port)
        added: dict[str, str] = {}
        if not _env("DEBUG"):
            added["DEBUG"] = "true"
        simulated = [] if _env("X_API_KEY") else self.simulated()
        if simulated:
            self.sandbox = self.sandbox_ports_free()
            urls = {name: f"http://{SANDBOX_HOST}:{port}" for name, port in self.sandbox.items()}
            sandbox_env = Sandbox.env_by_service(**urls)
            for key in simulated:
                added.update(sandbox_env[key])
            if _env("DATABASE_URL"):
                raise Stop(
                    "the sandbox does not use DATABASE_URL: its drafts name the sandbox's "
                    "posts and must never reach a real X from that database. To try the "
                    "sandbox, take DATABASE_URL out of .env and the environment (it gets "
                    "its own SQLite file); with a real account, set X_API_KEY"
                )
            # Never the database a real X account will use: its rows name sandbox posts.
            folder = local_path(dotenv).parent
            added["DATABASE_URL"] = f"sqlite:///{folder / 'sandbox.sqlite3'}"
            if all(_env(name) in ("", str(PACING_DEFAULTS[name])) for name in SANDBOX_PACING):
                added.update(SANDBOX_PACING)
                self.quick_pacing = True
            names = listed([SIMULATED_BY[key][1] for key in simulated])
            self.say("simulated", f"{names}: the local sandbox ({_why(simulated)})")
            self.say("sandbox X", f"{urls['x']}/_sandbox/state (our account: @{OUR_USERNAME})")
            if "telegram" in simulated:
                self.say("sandbox phone", f"{urls['telegram']}/phone (the owner's chat)")
        os.environ.update(added)
        local_file = local_path(dotenv)
        try:
            write_env_file(local_file, added, LOCAL_HEADER)
        except OSError as error:
            raise Stop(f"{local_file} cannot be written ({error.strerror})") from None
        default = local_path(dotenv).parent / "db.sqlite3"
        self.say("database", _database(os.environ.get("DATABASE_URL", ""), default))
        ignored = local_ignored(added, dotenv, environ)
        if ignored:
            self.say("by hand", f"manage.py does not use these settings: {ignored}")
        else:
            self.say("by hand", f"manage.py commands use these settings ({_shown(local_file)})")

    def simulated(self) -> list[str]:
        """The services the sandbox stands in for: X, and the model and Telegram unless
        .env configures them. A model URL of your own (Ollama, say) is never replaced:
        without OPENAI_API_KEY the service says that it is missing."""
        simulated = ["x"]
        url = _env("OPENAI_BASE_URL")
        if not _env("OPENAI_API_KEY") and url in ("", DEFAULT_OPENAI_URL):
            simulated.append("openai")
        if not _env("TELEGRAM_BOT_TOKEN"):
            simulated.append("telegram")
        return simulated

    def sandbox_ports_free(self) -> dict[str, int]:
        ports = {}
        for name, port in self.sandbox_ports.items():
            if port and _free(SANDBOX_HOST, port):
                ports[name] = port
                continue
            ports[name] = _any_free_port(SANDBOX_HOST)
            if port:
                self.say("note", f"port {port} is busy: the sandbox {name} is on {ports[name]}")
        return ports

    def require_free(self, port: int) -> None:
        if not _free(self.host, port):
            raise Stop(
                f"port {port} on {self.host} is already in use, so the web server cannot "
                f"listen there (another `make run`?). Stop that, or choose another port: "
                f"make run PORT={port + 1}"
            )

    def say(self, label: str, text: str) -> None:
        self.lines.append((label, text))

    # --- children ---------------------------------------------------------------------

    def manage(self, *command: str, say_it: str = "") -> None:
        """A manage.py step that must succeed before anything starts; its output is
        kept, and shown only when it fails (or, with ``say_it``, in the summary)."""
        process = self.popen(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while process.poll() is None:
            if self.signalled:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
                _kill_group(process)
                raise Stop("stopped before starting", status=0)
            time.sleep(0.1)
        output = process.stdout.read().strip() if process.stdout else ""
        if process.returncode != 0:
            said = output.splitlines()[-1] if output else "no output"
            raise Stop(f"`manage.py {command[0]}` failed: {said}", status=1)
        if say_it and output:
            self.say(say_it, output.splitlines()[-1])

    def popen(self, *command: str, **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "manage.py", *command],
            cwd=BASE_DIR,
            # Everything is in their environment already: no file read again.
            env={**os.environ, "REPLYGUY_ENV_FILES": "off"},
            process_group=0,  # Ctrl-C reaches this launcher only; it stops each child
            preexec_fn=_die_with_parent,
            text=True,
            **kwargs,
        )

    def start(self, name: str, *command: str) -> None:
        self.children.append(Child(name, self.popen(*command)))

    def wait_listening(self, host: str, port: int, name: str) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.signalled:
                raise Stop("stopped before starting", status=0)
            for child in self.children:
                if child.process.poll() is not None:
                    status = child.process.returncode
                    raise Stop(f"the {child.name} stopped at start (exit status {status})", 1)
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                return
            time.sleep(0.1)
        raise Stop(f"the {name} did not listen on port {port} within {READY_SECONDS} s", 1)

    def say_running(self, pacing: str) -> None:
        url = f"http://{self.host}:{self.port}"
        lines = [("admin", f"{url}/admin/"), ("health", f"{url}/health/status/"), *self.lines]
        lines.append(("replies", pacing))
        width = max(len(label) for label, _ in lines)
        say("Reply Guy is running (Ctrl-C stops everything):")
        for label, text in lines:
            say(f"  {label.ljust(width)}  {text}")

    def supervise(self) -> int:
        while not self.signalled:
            for child in self.children:
                if child.process.poll() is not None:
                    say(
                        f"Reply Guy: the {child.name} stopped on its own (exit status "
                        f"{child.process.returncode}); stopping the rest",
                        error=True,
                    )
                    self.stop_children()
                    return 1
            time.sleep(0.2)
        say(f"Reply Guy: {self.signalled}, stopping every process")
        self.stop_children()
        say("Reply Guy stopped.")
        return 0

    def on_signal(self, signum: int, frame: object) -> None:
        if self.signalled:  # a second Ctrl-C: no more waiting
            for child in self.children:
                _kill_group(child.process)
            return
        self.signalled = signal.Signals(signum).name

    def stop_children(self) -> None:
        """SIGTERM to the web server, the poller and the worker; once they are gone (so
        a task finishing in its grace period still finds it), to the sandbox. SIGKILL
        to each process group still there after the worker's grace period."""
        try:
            grace = float(os.environ.get("Q_STOP_GRACE_SECONDS") or 10)
        except ValueError:  # refused at start with its one line; stop all the same
            grace = 10.0
        grace = min(max(grace, 0.0), 600.0) + STOP_MARGIN_SECONDS
        service = [child for child in self.children if child.name != "sandbox"]
        sandbox = [child for child in self.children if child.name == "sandbox"]
        for group in (service, sandbox):
            for child in reversed(group):
                if child.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for child in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(max(deadline - time.monotonic(), 0))
                if child.process.poll() is None:
                    say(f"Reply Guy: the {child.name} did not stop in {grace:g} s: killed")
                _kill_group(child.process)  # also whatever it left behind
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(5)
        self.children = []


def _checked_django() -> str:
    """Django set up in this process with the launch's settings, and the database
    reached: a bad value or an unreachable database stops the launch here with one
    line, before anything starts. Returns the pacing in words."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "replyguy.settings")
    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImproperlyConfigured as error:
        raise Stop(str(error)) from None
    from django.db import connection

    try:
        connection.ensure_connection()
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = _database(os.environ.get("DATABASE_URL", ""), Path("var/db.sqlite3"))
        raise Stop(f"the database cannot be reached ({where}): {first}", 1) from None
    finally:
        connection.close()
    if _env("REDIS_URL"):  # without it the cache is a table migrate makes
        from django.core.cache import cache

        try:
            cache.get("replyguy:launch")
        except Exception as error:
            raise Stop(f"Redis cannot be reached (REDIS_URL): {error}", 1) from None
    from bot.pacing import Pacing

    return Pacing.from_settings().summary()


def _routes(mode: str) -> str:
    return {
        "auto": "through the API where the author mentioned or quoted us; otherwise a "
        "link comes back to you to post it yourself (REPLY_MODE=auto, X's rule)",
        "api": "always through the API (REPLY_MODE=api: for accounts X exempts)",
        "handoff": "always a link back to you to post it yourself (REPLY_MODE=handoff)",
    }.get(mode, f"REPLY_MODE={mode}")


def _env(name: str) -> str:
    return setting(os.environ.get(name))


def _database(url: str, default: Path) -> str:
    """Where the data lives, without the password."""
    if not url:
        return f"SQLite file {_shown(default)}"
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return f"SQLite file {_shown(Path(url.removeprefix('sqlite:///')))}"
    try:
        return f"{parts.scheme} on {parts.hostname}:{parts.port or 5432}{parts.path}"
    except ValueError:  # a malformed port, or a password with a '/': never shown
        return "DATABASE_URL (unreadable)"


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _any_free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if this launcher dies without stopping it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _why(simulated: list[str]) -> str:
    settings = [SIMULATED_BY[key][0] for key in simulated]
    if len(settings) == 1:
        return f"{settings[0]} is not set"
    return "none of " + ", ".join(settings[:-1]) + " or " + settings[-1] + " is set"


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(BASE_DIR))
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
