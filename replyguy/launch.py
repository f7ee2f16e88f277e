"""``make run``: the whole service on one machine, stopped cleanly by Ctrl-C.

``python -m replyguy.launch [--host H] [--port P]`` reads ``.env``, adds what local
mode needs and writes those additions to ``var/local.env`` (``replyguy.localenv``), so
``manage.py`` run by hand sees the same service. Then it migrates, makes sure there is
an admin login, and starts, each in its own process group:

- without ``X_API_KEY``, the sandbox (``manage.py sandbox --demo``) for X, and for the
  model and Telegram unless ``.env`` configures them (``OPENAI_API_KEY``,
  ``TELEGRAM_BOT_TOKEN``). Its ports are 8701-8703, or free ones when
  those are taken (it says so). With X simulated, replies go out within a minute of
  approval and there are no quiet hours, unless ``.env`` says otherwise;
- the django-q2 cluster, the Telegram poller (when Telegram is configured or
  simulated) and the web server.

It says what runs where, what is simulated and when an approved reply goes out. A
busy web port or a bad setting stops it at once with one line. Ctrl-C, SIGTERM or
SIGHUP stop every child: SIGTERM first, SIGKILL to whatever is left after the
cluster's grace period; it then exits 0. A child that dies on its own stops the rest,
and the exit status is 1.
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
from dataclasses import dataclass, field
from pathlib import Path

from replyguy.localenv import (
    BASE_DIR,
    LOCAL_FILE,
    EnvFileError,
    env_files,
    load_env_files,
    var_dir,
    write_env_file,
)
from sandbox.harness import OUR_USERNAME, Sandbox

SANDBOX_PORTS = {"x": 8701, "openai": 8702, "telegram": 8703}
# Which settings make a service real, and the sandbox settings standing in for it.
SIMULATED_BY = {
    "x": ("X_API_KEY", "X"),
    "openai": ("OPENAI_API_KEY", "the model"),
    "telegram": ("TELEGRAM_BOT_TOKEN", "Telegram"),
}
SANDBOX_SETTINGS = {
    "x": (
        "X_API_BASE_URL",
        "X_API_KEY",
        "X_API_SECRET",
        "X_ACCESS_TOKEN",
        "X_ACCESS_TOKEN_SECRET",
        "X_BEARER_TOKEN",
    ),
    "openai": ("OPENAI_BASE_URL", "OPENAI_API_KEY", "AI_MODEL"),
    "telegram": ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "TELEGRAM_API_BASE_URL"),
}
# A first run should see its approval go out, not wait half an hour or until 07:00.
SANDBOX_PACING = {
    "MIN_DELAY_MINUTES": "0",
    "MAX_DELAY_MINUTES": "1",
    "MIN_SPACING_MINUTES": "1",
    "QUIET_HOURS_START": "0",
    "QUIET_HOURS_END": "0",
}
LOCAL_HEADER = """\
Written by `make run` at each start: the local-mode settings it added to .env.
manage.py reads .env and then this file, so commands run by hand see the same service.
A variable in .env or the environment wins over this file. Safe to delete."""
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
    stopping: bool = field(default=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
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
        print(f"Reply Guy cannot start: {stop}", file=sys.stderr)
        launch.stop_children()
        return stop.status


def _ports(parser: argparse.ArgumentParser, text: str) -> dict[str, int]:
    try:
        ports = [int(part) for part in text.split(",")]
    except ValueError:
        ports = []
    if len(ports) != 3 or any(not 0 <= port < 65536 for port in ports):
        parser.error("--sandbox-ports takes three port numbers, e.g. 8701,8702,8703")
    return dict(zip(SANDBOX_PORTS, ports, strict=True))


class Launch:
    def __init__(self, host: str, port: int, sandbox_ports: dict[str, int]) -> None:
        self.host = host
        self.port = port
        self.sandbox_ports = sandbox_ports
        self.children: list[Child] = []
        self.signalled: str | None = None
        self.sandbox: dict[str, int] = {}  # the sandbox's ports, when it runs
        self.pacing = ""
        self.lines: list[tuple[str, str]] = []  # what to say once everything runs

    def run(self) -> int:
        self.settings()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        self.manage("migrate", "--no-input", "-v", "0")
        self.manage("local_admin")
        if self.sandbox:
            ports = self.sandbox
            self.start(
                "sandbox",
                "sandbox",
                "--demo",
                "--host",
                self.host,
                *(f"--{name}-port={port}" for name, port in ports.items()),
            )
            for port in ports.values():
                self.wait_listening(port, "sandbox")
        self.start("worker", "qcluster")
        if os.environ.get("TELEGRAM_BOT_TOKEN"):
            self.start("telegram poller", "telegram_bot")
        self.start("web server", "runserver", "--noreload", f"{self.host}:{self.port}")
        self.wait_listening(self.port, "web server")
        self.say_running()
        return self.supervise()

    # --- settings ---------------------------------------------------------------------

    def settings(self) -> None:
        """Load .env, decide what local mode adds, write it to var/local.env and put it in
        this process's environment (the children inherit it)."""
        files = env_files()
        dotenv = files[0] if files else None  # REPLYGUY_ENV_FILES=off: the environment only
        try:
            load_env_files(files[:1])
        except EnvFileError as error:
            raise Stop(str(error)) from None
        self.require_free(self.port, "the web server", f"make run PORT={self.port + 1}")
        added: dict[str, str] = {}
        if not _env("DEBUG"):
            added["DEBUG"] = "true"
        # Only without X credentials: a real X never gets a placeholder draft or a chat
        # nobody reads. With X, what .env lacks is reported by the service as on a PaaS.
        simulated = [key for key, (setting, _) in SIMULATED_BY.items() if not _env(setting)]
        if _env("X_API_KEY"):
            simulated = []
        if simulated:
            self.sandbox = self.sandbox_ports_free()
            urls = {name: f"http://{self.host}:{port}" for name, port in self.sandbox.items()}
            sandbox_env = Sandbox.env_for(**urls)
            for key in simulated:
                added.update({name: sandbox_env[name] for name in SANDBOX_SETTINGS[key]})
            added.update({k: v for k, v in SANDBOX_PACING.items() if not _env(k)})
            names = _and([SIMULATED_BY[key][1] for key in simulated])
            self.say("simulated", f"{names}: the local sandbox ({_why(simulated)})")
            self.say("sandbox X", f"{urls['x']}/_sandbox/state (our account: @{OUR_USERNAME})")
            if "telegram" in simulated:
                self.say("sandbox phone", f"{urls['telegram']}/phone (the owner's chat)")
        local_file = var_dir(dotenv) / LOCAL_FILE
        write_env_file(local_file, added, LOCAL_HEADER)
        os.environ.update(added)
        self.pacing = _pacing()
        self.say("by hand", f"manage.py commands use these settings ({_shown(local_file)})")

    def say(self, label: str, text: str) -> None:
        self.lines.append((label, text))

    def sandbox_ports_free(self) -> dict[str, int]:
        ports = {}
        for name, port in self.sandbox_ports.items():
            if port and _free(self.host, port):
                ports[name] = port
                continue
            ports[name] = _any_free_port(self.host)
            if port:
                self.say("note", f"port {port} is busy: the sandbox {name} is on {ports[name]}")
        return ports

    def require_free(self, port: int, what: str, hint: str) -> None:
        if not _free(self.host, port):
            raise Stop(
                f"port {port} on {self.host} is already in use, so {what} cannot listen there "
                f"(another `make run`?). Stop that, or choose another port: {hint}"
            )

    # --- children ---------------------------------------------------------------------

    def manage(self, *command: str) -> None:
        """A manage.py step that must succeed before anything starts."""
        done = subprocess.run([sys.executable, "manage.py", *command], cwd=BASE_DIR, check=False)
        if self.signalled:
            raise Stop("stopped before it started", status=0)
        if done.returncode != 0:
            # manage.py has said why in one line.
            raise Stop(f"`manage.py {command[0]}` failed (exit status {done.returncode})", 1)

    def start(self, name: str, *command: str) -> None:
        process = subprocess.Popen(
            [sys.executable, "manage.py", *command],
            cwd=BASE_DIR,
            process_group=0,  # Ctrl-C reaches this launcher only; it stops each child
            preexec_fn=_die_with_parent,
        )
        self.children.append(Child(name, process))

    def wait_listening(self, port: int, name: str) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.signalled:
                raise Stop("stopped before it started", status=0)
            for child in self.children:
                if child.process.poll() is not None:
                    status = child.process.returncode
                    raise Stop(f"the {child.name} stopped at start (exit status {status})", 1)
            with contextlib.suppress(OSError), socket.create_connection((self.host, port), 0.5):
                return
            time.sleep(0.1)
        raise Stop(f"the {name} did not listen on port {port} within {READY_SECONDS} s", status=1)

    def say_running(self) -> None:
        url = f"http://{self.host}:{self.port}"
        lines = [("admin", f"{url}/admin/"), ("health", f"{url}/health/status/"), *self.lines]
        pacing = self.pacing
        if self.sandbox:
            pacing += " (the sandbox's quick pacing; .env settings win over it)"
        lines.append(("replies", pacing))
        width = max(len(label) for label, _ in lines)
        print("Reply Guy is running (Ctrl-C stops everything):", flush=True)
        for label, text in lines:
            print(f"  {label.ljust(width)}  {text}", flush=True)

    def supervise(self) -> int:
        while not self.signalled:
            for child in self.children:
                if child.process.poll() is not None:
                    print(
                        f"Reply Guy: the {child.name} stopped on its own (exit status "
                        f"{child.process.returncode}); stopping the rest",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.stop_children()
                    return 1
            time.sleep(0.2)
        print(f"Reply Guy: {self.signalled}, stopping every process", flush=True)
        self.stop_children()
        print("Reply Guy stopped.", flush=True)
        return 0

    def on_signal(self, signum: int, frame: object) -> None:
        if self.signalled:  # a second Ctrl-C: no more waiting
            for child in self.children:
                _kill_group(child.process)
            return
        self.signalled = signal.Signals(signum).name

    def stop_children(self) -> None:
        """SIGTERM to each child, the web server first; SIGKILL to each process group
        still there after the worker's grace period."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        grace = float(os.environ.get("Q_STOP_GRACE_SECONDS") or 10) + STOP_MARGIN_SECONDS
        deadline = time.monotonic() + grace
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(max(deadline - time.monotonic(), 0))
            if child.process.poll() is None:
                print(
                    f"Reply Guy: the {child.name} did not stop in {grace:g} s: killed", flush=True
                )
            _kill_group(child.process)  # also whatever it left behind
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(5)


def _pacing() -> str:
    """The pacing in words, from Django set up in this process with the launch's
    settings: a bad value stops the launch here with its one line, before anything
    starts."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "replyguy.settings")
    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImproperlyConfigured as error:
        raise Stop(str(error)) from None
    from bot.pacing import Pacing

    return Pacing.from_settings().summary()


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


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


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _why(simulated: list[str]) -> str:
    settings = [SIMULATED_BY[key][0] for key in simulated]
    listed = settings[0] if len(settings) == 1 else ", ".join(settings[:-1]) + " or " + settings[-1]
    return f"none of {listed} is set" if len(settings) > 1 else f"{listed} is not set"


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(BASE_DIR))
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
