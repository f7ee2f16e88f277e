"""The files local mode reads its settings from: ``.env`` and ``var/local.env``.

``make run`` loads ``.env`` (the owner's own settings), adds what local mode needs
(DEBUG on, and the sandbox's addresses when there are no X credentials) and writes those
additions to ``var/local.env``. ``manage.py`` loads both files the same way, so a command
run by hand sees the service ``make run`` started. A variable set in the environment
always wins over both files, and ``.env`` over ``var/local.env``.

Neither file is read by the web server (``wsgi``) or anywhere on a platform unless it
is there: a PaaS sets its variables in its own dashboard. ``REPLYGUY_ENV_FILES=off``
turns the files off (the test suite does, so a developer's ``make run`` never leaks
into it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["EnvFileError", "env_files", "load_env_files", "read_env_file", "write_env_file"]

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_FILE = "local.env"
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


class EnvFileError(ValueError):
    """A line of an env file that is not ``NAME=value``: says which file and line."""


def env_files() -> list[Path]:
    """``.env`` then ``var/local.env``, as this checkout names them (``REPLYGUY_DOTENV``
    and ``REPLYGUY_VAR_DIR`` move them); empty when ``REPLYGUY_ENV_FILES=off``."""
    if os.environ.get("REPLYGUY_ENV_FILES", "").strip().lower() in ("off", "false", "0", "no"):
        return []
    dotenv = Path(os.environ.get("REPLYGUY_DOTENV") or BASE_DIR / ".env")
    return [dotenv, var_dir(dotenv) / LOCAL_FILE]


def var_dir(dotenv: Path | None = None) -> Path:
    """Where local state lives: ``REPLYGUY_VAR_DIR`` from the environment or ``.env``."""
    value = os.environ.get("REPLYGUY_VAR_DIR", "").strip()
    if not value and dotenv is not None and dotenv.is_file():
        value = read_env_file(dotenv).get("REPLYGUY_VAR_DIR", "")
    return Path(value) if value else BASE_DIR / "var"


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines; blank lines and ``#`` comments skipped, ``export`` allowed,
    a value in matching single or double quotes taken as it is written."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if match is None:
            raise EnvFileError(f"{path}, line {number}: expected NAME=value, found {stripped!r}")
        name, value = match.groups()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def load_env_files(files: list[Path] | None = None) -> list[Path]:
    """Put the files' variables into the environment, never over one already set."""
    loaded = []
    for path in env_files() if files is None else files:
        if not path.is_file():
            continue
        for name, value in read_env_file(path).items():
            os.environ.setdefault(name, value)
        loaded.append(path)
    return loaded


def write_env_file(path: Path, values: dict[str, str], header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{name}={_quoted(value)}" for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _quoted(value: str) -> str:
    return f'"{value}"' if any(char.isspace() or char in "#'\"" for char in value) else value
