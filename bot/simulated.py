"""Which outside services are the local sandbox: the one rule the admin, the health
status, the worker's start line and ``make run`` share."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

__all__ = ["SERVICE_NAMES", "listed", "simulated", "simulated_names"]

SERVICE_NAMES = {"x": "X", "llm": "the model", "telegram": "Telegram"}


def simulated(service: str) -> bool:
    """The local sandbox stands in for this service (``x``, ``llm`` or ``telegram``): a
    loopback URL with the sandbox's well-known credential. A real local model server
    (Ollama, say) is on loopback too, but never with the sandbox's key."""
    from sandbox.harness import SANDBOX_OPENAI_KEY
    from sandbox.telegram_api import TelegramApp
    from sandbox.x_api import SANDBOX_CREDENTIALS

    url, credential, fake = {
        "x": (settings.X_API_BASE_URL, settings.X_API_KEY, SANDBOX_CREDENTIALS["consumer_key"]),
        "llm": (settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY, SANDBOX_OPENAI_KEY),
        "telegram": (
            settings.TELEGRAM_API_BASE_URL,
            settings.TELEGRAM_BOT_TOKEN,
            TelegramApp.DEFAULT_TOKEN,
        ),
    }[service]
    host = urlsplit(url or "").hostname or ""
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    return loopback and credential == fake


def simulated_names() -> list[str]:
    """``["X", "the model", "Telegram"]``, or the part of it the sandbox stands in for."""
    return [name for service, name in SERVICE_NAMES.items() if simulated(service)]


def listed(names: list[str]) -> str:
    """``X, the model and Telegram``: names as a sentence lists them."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
