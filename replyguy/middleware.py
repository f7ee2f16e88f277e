"""Probes answer whatever Host header the platform sends.

Platforms probe a container by its own address (``Host: 10.1.2.3:8000``), which is not
in ``ALLOWED_HOSTS``: Django would answer 400 and the platform would restart a healthy
process for ever. Probe paths need no host (they build no URL and redirect nowhere), so
for them alone the host is taken as the first allowed one, and ``/health/live`` or
``/metrics/`` are served as ``/health/live/`` and ``/metrics`` instead of redirected.
Every other path keeps Django's host check.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

PROBE = re.compile(r"^/(health(/(live|ready|status))?/?|metrics/?)$")


class ProbeHostMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if PROBE.match(request.path_info):
            hosts = [h for h in settings.ALLOWED_HOSTS if h and h != "*" and not h.startswith(".")]
            request.META["HTTP_HOST"] = hosts[0] if hosts else "localhost"
            path = request.path_info.rstrip("/")
            request.path_info = request.path = path if path == "/metrics" else path + "/"
        return self.get_response(request)
