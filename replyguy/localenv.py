"""The files local mode reads its settings from: ``.env`` and ``var/local.env``.

``make run`` loads ``.env`` (the owner's own settings), decides what local mode adds
(DEBUG on; without an X account, the sandbox's addresses, its own database and quick
pacing) and writes that to ``var/local.env``. ``manage.py`` loads both the same way, so
a command run by hand sees the service ``make run`` started.

Order: the environment first, then ``var/local.env`` (what ``make run`` decided, over
the ``.env`` it decided from), then ``.env``; an empty value counts as unset, as
everywhere in the settings. ``var/local.env`` is local mode only: it is ignored
whenever ``X_API_KEY`` or ``SECRET_KEY`` is set (in the environment or ``.env``), so a
deploy or a real account never picks up the sandbox or DEBUG from a stale file.

Neither file is read by the web server (``wsgi``), nor anywhere without them: a PaaS
sets its variables in its own dashboard. ``REPLYGUY_ENV_FILES=off`` turns both off (the
test suite does, so a developer's ``make run`` never leaks into it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "EnvFileError",
    "dotenv_path",
    "load_env_files",
    "local_path",
    "read_env_file",
    "write_env_file",
]

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_FILE = "local.env"
# Either one set means this is not local mode: var/local.env does not apply.
NOT_LOCAL = ("X_API_KEY", "SECRET_KEY")
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


class EnvFileError(ValueError):
    """A file that cannot be read as ``NAME=value`` lines: says which file and line."""


def files_on() -> bool:
    return os.environ.get("REPLYGUY_ENV_FILES", "").strip().lower() not in ("off", "false", "0")


def dotenv_path() -> Path:
    return Path(os.environ.get("REPLYGUY_DOTENV") or BASE_DIR / ".env")


def local_path(dotenv: dict[str, str]) -> Path:
    """``var/local.env``, in ``REPLYGUY_VAR_DIR`` from the environment or ``.env``."""
    value = os.environ.get("REPLYGUY_VAR_DIR", "").strip() or dotenv.get("REPLYGUY_VAR_DIR", "")
    return (Path(value) if value else BASE_DIR / "var") / LOCAL_FILE


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines; blank lines and ``#`` comments skipped, ``export`` allowed;
    a value in matching quotes is taken as written, else a `` #`` starts a comment.
    A missing file is empty."""
    if not path.exists():
        return {}
    if not path.is_file():
        raise EnvFileError(f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise EnvFileError(f"{path} is not UTF-8 text") from None
    except OSError as error:
        raise EnvFileError(f"{path} cannot be read ({error.strerror})") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if match is None:
            # Never the line itself: `X_API_SECRET: abc` would show the secret.
            raise EnvFileError(f"{path}, line {number}: expected NAME=value")
        name, value = match.groups()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0]
        values[name] = value
    return values


def load_env_files() -> None:
    """Fill the environment's unset (or empty) variables from the two files."""
    if not files_on():
        return
    dotenv = read_env_file(dotenv_path())
    local = read_env_file(local_path(dotenv))
    if any(_set(os.environ.get(name)) or _set(dotenv.get(name)) for name in NOT_LOCAL):
        local = {}
    for name, value in {**dotenv, **{k: v for k, v in local.items() if _set(v)}}.items():
        if not _set(os.environ.get(name)):
            os.environ[name] = value


def write_env_file(path: Path, values: dict[str, str], header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{name}={_quoted(value)}" for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _set(value: str | None) -> bool:
    return bool(value and value.strip())


def _quoted(value: str) -> str:
    return f'"{value}"' if any(char.isspace() or char in "#'" for char in value) else value
