"""A small threaded HTTP server for the stand-ins, with fault injection built in.

Each stand-in is an ``App``: routes plus the service's own error shape. ``Server``
runs an app on a loopback port in a background thread. Every request passes through
the app's ``Faults`` first, so a test can make any endpoint slow, failing, hanging,
malformed, or (for writes) succeed and then drop the connection before answering.

Every app also answers a small control API under ``/_sandbox/`` (state, reset,
faults) so a demo or another process can drive it over HTTP, and may serve pages for
people (the Telegram stand-in's ``/phone``); neither passes through the faults.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sandbox.faults import Fault, Faults

__all__ = ["App", "Request", "Response", "Server", "json_response"]

log = logging.getLogger(__name__)

_BOT_TOKEN = re.compile(r"/bot[^/\s]+/")

Handler = Callable[..., "Response"]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        """A query, form or JSON body parameter (Telegram accepts all three)."""
        values = self.query.get(name)
        if values:
            return values[0]
        value = self.params().get(name, default)
        return value if value is None or isinstance(value, str) else json.dumps(value)

    def params(self) -> dict[str, Any]:
        """The body as a dict: JSON, or form-encoded, or empty."""
        if not self.body:
            return {}
        content_type = self.headers.get("Content-Type", "")
        if "application/json" in content_type:
            data = json.loads(self.body)
            return data if isinstance(data, dict) else {}
        if "application/x-www-form-urlencoded" in content_type:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            return {key: values[0] for key, values in form.items()}
        if "multipart/form-data" in content_type:
            return _parse_multipart(self.body, content_type)
        return {}

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(
    data: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> Response:
    return Response(
        status=status,
        body=json.dumps(data).encode(),
        headers={"Content-Type": content_type, **(headers or {})},
    )


class App:
    """Routes, state and faults of one stand-in service."""

    name = "app"

    def __init__(self, *, seed: int = 0) -> None:
        self.faults = Faults(seed=seed)
        self.lock = threading.RLock()
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self.requests: list[tuple[str, str]] = []  # (endpoint name, path) seen, for tests

    # --- to be provided by each service ---------------------------------------------

    def error_response(self, status: int, fault: Fault) -> Response:
        return json_response({"error": f"injected {status}"}, status)

    def reset(self) -> None:
        """Forget all state (subclasses extend this)."""
        self.faults.clear()
        self.requests.clear()

    def snapshot(self) -> dict[str, Any]:
        """State for the control API and for inspection from tests."""
        return {}

    def seed_state(self, data: dict[str, Any]) -> None:
        raise NotImplementedError(f"{self.name} cannot be seeded over HTTP")

    def page(self, request: Request) -> Response | None:
        """A page for people rather than the service's clients, or None.

        Pages bypass faults and the request log: opening one in a browser must not use
        up a fault meant for the code under test.
        """
        return None

    # --- routing ---------------------------------------------------------------------

    def route(self, method: str, pattern: str, name: str) -> Callable[[Handler], Handler]:
        """Register a handler; ``{param}`` in the pattern matches one path segment."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        def register(handler: Handler) -> Handler:
            self._routes.append((method, regex, name, handler))
            return handler

        return register

    def resolve(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
        for route_method, regex, name, handler in self._routes:
            match = regex.match(path)
            if match and route_method == method:
                return name, handler, match.groupdict()
        return None

    def control(self, request: Request) -> Response:
        """GET ``/_sandbox/state``; POST ``reset``, ``seed``, ``faults``; DELETE ``faults``."""
        action = request.path.removeprefix("/_sandbox/").strip("/")
        with self.lock:
            if action == "state" and request.method == "GET":
                return json_response(self.snapshot())
            if action == "reset" and request.method == "POST":
                self.reset()
                return json_response({"ok": True})
            if action == "seed" and request.method == "POST":
                self.seed_state(request.json() or {})
                return json_response({"ok": True})
            if action == "faults" and request.method == "POST":
                spec = request.json() or {}
                self.faults.add(**spec)
                return json_response({"ok": True, "faults": self.faults.describe()})
            if action == "faults" and request.method == "DELETE":
                self.faults.clear()
                return json_response({"ok": True})
        return json_response({"error": f"unknown control action {action!r}"}, 404)


class _Quiet(ThreadingHTTPServer):
    """A client that hangs up mid-answer (a timeout, a killed worker, a cut fault) is
    part of the game, not a traceback in the log."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class Server:
    """Runs an ``App`` on a loopback port in a daemon thread."""

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._stopping = threading.Event()
        self.httpd = _Quiet((host, port), _make_handler(app, self._stopping))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> Server:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-{self.app.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging and long-polling handlers
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_handler(app: App, stopping: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, a keep-alive client
        # waits ~40 ms for the second one on every request.
        disable_nagle_algorithm = True
        server_version = f"replyguy-sandbox-{app.name}"

        def log_message(self, format: str, *args: Any) -> None:
            # Telegram's paths carry the bot token (/bot<token>/method): never logged.
            shown = [
                _BOT_TOKEN.sub("/bot<token>/", arg) if isinstance(arg, str) else arg for arg in args
            ]
            log.debug("%s: " + format, app.name, *shown)

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=split.path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers=self.headers,
                body=self.rfile.read(length) if length else b"",
            )
            if request.path.startswith("/_sandbox/"):
                self._send(app.control(request))
                return
            page = app.page(request)
            if page is not None:
                self._send(page)
                return
            resolved = app.resolve(request.method, request.path)
            if resolved is None:
                self._send(app.error_response(404, Fault(endpoint="*", kind="error", status=404)))
                return
            name, handler, params = resolved
            with app.lock:
                app.requests.append((name, request.path))
                fault = app.faults.pick(name)
            if fault is not None and fault.kind == "latency":
                time.sleep(fault.latency)
                fault = None
            if fault is not None and fault.kind not in ("cut_after", "delay_after"):
                self._inject(fault, app)
                return
            response = handler(request, **params)
            if fault is not None and fault.kind == "delay_after":
                stopping.wait(fault.latency)
            elif fault is not None:  # cut_after: the work is done, the answer never arrives
                self._cut()
                return
            self._send(response)

        def _inject(self, fault: Fault, app: App) -> None:
            if fault.kind == "hang":
                stopping.wait(fault.latency or 3600)
                self._cut()
            elif fault.kind == "html":
                body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                self._send(Response(fault.status, body, {"Content-Type": "text/html"}))
            elif fault.kind == "truncated":
                self._send(
                    Response(200, b'{"data": {"id": "12', {"Content-Type": "application/json"})
                )
            elif fault.kind == "cut_before":
                self._cut()
            else:
                self._send(app.error_response(fault.status, fault))

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        def _cut(self) -> None:
            """Drop the connection without a word, as a dying proxy would."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler


def _parse_multipart(body: bytes, content_type: str) -> dict[str, Any]:
    message = Message()
    message["Content-Type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str):
        return {}
    fields: dict[str, Any] = {}
    for part in body.split(b"--" + boundary.encode()):
        head, _, value = part.partition(b"\r\n\r\n")
        match = re.search(rb'name="([^"]+)"', head)
        if match:
            fields[match.group(1).decode()] = value.rstrip(b"\r\n").decode(errors="replace")
    return fields
