"""The files local mode reads its settings from: ``.env`` and ``var/local.env``.

``make run`` loads ``.env`` (the owner's own settings), decides what local mode adds
(DEBUG on; without an X account, the sandbox's addresses, its own database and quick
pacing) and writes that to ``var/local.env``. ``manage.py`` loads both the same way, so
a command run by hand sees the service ``make run`` started.

Order: the environment first, then ``var/local.env`` (what ``make run`` decided, over
the ``.env`` it decided from), then ``.env``; an empty value counts as unset, as
everywhere in the settings. ``var/local.env`` is local mode only, and all or nothing:
it is ignored whenever ``X_API_KEY`` or ``SECRET_KEY`` is set (in the environment or
``.env``), or the environment gives one of its variables another value, so a deploy, a
real account or another database never picks up the sandbox or DEBUG from it.

Neither file is read by the web server (``wsgi``), nor anywhere without them: a PaaS
sets its variables in its own dashboard. ``REPLYGUY_ENV_FILES=off`` turns both off (the
test suite does, so a developer's ``make run`` never leaks into it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "EnvFileError",
    "dotenv_path",
    "load_env_files",
    "local_ignored",
    "local_path",
    "read_env_file",
    "setting",
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
        if "\x00" in value:
            raise EnvFileError(f"{path}, line {number}: {name} holds a NUL character")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0]
        values[name] = value
    return values


def load_env_files() -> str | None:
    """Fill the environment's unset (or empty) variables from the two files; returns
    why ``var/local.env`` was ignored, if it was."""
    if not files_on():
        return None
    dotenv = read_env_file(dotenv_path())
    path = local_path(dotenv)
    local = {k: v for k, v in read_env_file(path).items() if setting(v)}
    ignored = local_ignored(local, dotenv) if local else None
    if ignored:
        local = {}
    for name, value in {**dotenv, **local}.items():
        if not setting(os.environ.get(name)):
            os.environ[name] = value
    return f"{path} is ignored: {ignored}" if ignored else None


def local_ignored(
    local: dict[str, str], dotenv: dict[str, str], environ: Mapping[str, str] = os.environ
) -> str | None:
    """Why make run's settings must not apply here, or None. All or nothing: half of
    them (the sandbox's X with another database, say) would be worse than none."""
    for name in NOT_LOCAL:
        if setting(environ.get(name)) or setting(dotenv.get(name)):
            return f"{name} is set (not local mode)"
    for name, value in local.items():
        if setting(environ.get(name)) not in ("", value):
            return f"{name} in the environment differs from what make run used"
    return None


def write_env_file(path: Path, values: dict[str, str], header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{name}={_quoted(value)}" for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def setting(value: str | None) -> str:
    """A variable's value as the project reads it: stripped, and "" when blank (an empty
    variable counts as unset, in the environment and in the files alike)."""
    return (value or "").strip()


def _quoted(value: str) -> str:
    return f'"{value}"' if any(char.isspace() or char in "#'" for char in value) else value
