"""Business events: one log line each, what happened to what, plain or JSON.

``event("published", tweet=12, link=...)`` logs ``published tweet=12 link=...`` on the
``replyguy.events`` logger; with ``LOG_FORMAT=json`` the same line is one JSON object
whose fields are the event's (``"event": "published", "tweet": 12, ...``). Every event
about a queued tweet carries ``tweet=<its id>``: the correlation id that ties a post's
stages together (``grep 'tweet=12 '``, or ``select(.tweet == 12)``).

Fields are the caller's facts; never pass a credential.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "event"]

log = logging.getLogger("replyguy.events")


def event(name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    shown = " ".join(
        f"{key}={_shown(value)}" for key, value in fields.items() if value not in (None, "")
    )
    log.log(level, "%s %s", name, shown, extra={"event": name, "fields": fields})


def _shown(value: Any) -> str:
    text = str(value)
    if not text or any(char.isspace() for char in text) or '"' in text:
        return json.dumps(text, ensure_ascii=False)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and an event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        name = getattr(record, "event", None)
        if name:
            data["event"] = name
            for key, value in (getattr(record, "fields", None) or {}).items():
                data.setdefault(key, value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)
