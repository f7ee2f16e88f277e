"""All three stand-ins together, for tests, benchmarks, demos and `make run`."""

from __future__ import annotations

from typing import Any

from sandbox.http import Server
from sandbox.openai_api import OpenAIApp
from sandbox.telegram_api import TelegramApp
from sandbox.x_api import OUR_USERNAME, SANDBOX_CREDENTIALS, XApp

__all__ = ["OUR_USERNAME", "Sandbox"]

SANDBOX_OPENAI_KEY = "sandbox-openai-key"


class Sandbox:
    """Starts the X, OpenAI-compatible and Telegram stand-ins on loopback ports."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        x_port: int = 0,
        openai_port: int = 0,
        telegram_port: int = 0,
        seed: int = 0,
        placeholder: str = "",
    ) -> None:
        self.x = XApp(seed=seed)
        self.openai = OpenAIApp(seed=seed, placeholder=placeholder)
        self.telegram = TelegramApp(seed=seed)
        self.servers = {
            "x": Server(self.x, host, x_port),
            "openai": Server(self.openai, host, openai_port),
            "telegram": Server(self.telegram, host, telegram_port),
        }

    def start(self) -> Sandbox:
        for server in self.servers.values():
            server.start()
        return self

    def stop(self) -> None:
        self.telegram.close()
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        for app in (self.x, self.openai, self.telegram):
            app.reset()

    def urls(self) -> dict[str, str]:
        return {name: server.url for name, server in self.servers.items()}

    def env(self) -> dict[str, Any]:
        """The settings (and environment variables) that point Reply Guy at the stand-ins."""
        urls = {name: server.url for name, server in self.servers.items()}
        return self.env_for(
            **urls, telegram_token=self.telegram.token, chat_id=self.telegram.owner_chat_id
        )

    @classmethod
    def env_for(cls, **urls: Any) -> dict[str, str]:
        """The same settings for stand-ins at these base URLs, without starting any."""
        return {
            name: value
            for service in cls.env_by_service(**urls).values()
            for name, value in service.items()
        }

    @staticmethod
    def env_by_service(
        *,
        x: str,
        openai: str,
        telegram: str,
        telegram_token: str = TelegramApp.DEFAULT_TOKEN,
        chat_id: int = TelegramApp.OWNER_ID,
    ) -> dict[str, dict[str, str]]:
        """``env_for``, by stand-in (``x``, ``openai``, ``telegram``): what pointing one
        service at its stand-in sets."""
        return {
            "x": {
                "X_API_BASE_URL": x,
                "X_API_KEY": SANDBOX_CREDENTIALS["consumer_key"],
                "X_API_SECRET": SANDBOX_CREDENTIALS["consumer_secret"],
                "X_ACCESS_TOKEN": SANDBOX_CREDENTIALS["access_token"],
                "X_ACCESS_TOKEN_SECRET": SANDBOX_CREDENTIALS["access_token_secret"],
                "X_BEARER_TOKEN": SANDBOX_CREDENTIALS["bearer_token"],
            },
            "openai": {
                "OPENAI_BASE_URL": openai + "/v1",
                "OPENAI_API_KEY": SANDBOX_OPENAI_KEY,
                "AI_MODEL": "sandbox-model",
            },
            "telegram": {
                "TELEGRAM_BOT_TOKEN": telegram_token,
                "TELEGRAM_CHAT_ID": str(chat_id),
                "TELEGRAM_API_BASE_URL": telegram,
            },
        }
