"""Deterministic fault injection for the stand-ins.

A ``Fault`` names an endpoint (a route name such as ``create_tweet``, or ``*`` for
all) and what goes wrong there:

- ``error``: answer with ``status`` (500, 502, 503, 429 ...) in the service's own
  error shape; for 429, ``reset_in`` seconds sets the rate-limit reset and
  ``usage_cap`` makes it X's monthly usage-cap problem;
- ``latency``: answer normally after ``latency`` seconds;
- ``hang``: never answer (until ``latency`` seconds pass, or the server stops), then
  drop the connection, so the client's own timeout is what ends the call;
- ``html``: an HTML error page with ``status``, as a proxy in front would send;
- ``truncated``: a 200 whose JSON body is cut off;
- ``cut_before``: drop the connection before doing anything;
- ``cut_after``: do the work (the post exists), then drop the connection before
  answering: the ambiguous case;
- ``delay_after``: do the work, then wait ``latency`` seconds before answering, so a
  client (or a worker killed meanwhile) never learns that it worked.

``rate`` (0..1) applies the fault to that share of requests, drawn from a random
generator seeded per ``Faults``, so a run with the same seed and the same request
order injects the same faults. ``times`` limits how often a fault fires.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["KINDS", "Fault", "Faults"]

KINDS = (
    "error",
    "latency",
    "hang",
    "html",
    "truncated",
    "cut_before",
    "cut_after",
    "delay_after",
)


@dataclass
class Fault:
    endpoint: str
    kind: str = "error"
    status: int = 503
    rate: float = 1.0
    latency: float = 0.0
    reset_in: int = 900
    usage_cap: bool = False
    times: int | None = None
    retry_after: int = 5  # Telegram's parameters.retry_after on a 429

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: one of {', '.join(KINDS)}")
        if not 0 <= self.rate <= 1:
            raise ValueError("rate must be between 0 and 1")


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._random = random.Random(seed)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.fired: list[tuple[str, str]] = []  # (endpoint, kind) for each injected fault

    def add(self, endpoint: str, kind: str = "error", **options: Any) -> Fault:
        fault = Fault(endpoint=endpoint, kind=kind, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.fired.clear()
            self._random = random.Random(self.seed)

    def pick(self, endpoint: str) -> Fault | None:
        """The fault to inject into this request to ``endpoint``, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint not in (endpoint, "*"):
                    continue
                if fault.times is not None and fault.times <= 0:
                    continue
                if fault.rate < 1 and self._random.random() >= fault.rate:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                self.fired.append((endpoint, fault.kind))
                return fault
        return None

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(fault) for fault in self._faults]
