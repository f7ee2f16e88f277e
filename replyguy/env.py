"""Strict readers for environment variables.

Each helper returns the default when the variable is unset or empty, and raises
``ImproperlyConfigured`` naming the variable when the value cannot be read, so a
typo in a deploy fails at start instead of running with a silent fallback.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from django.core.exceptions import ImproperlyConfigured

from replyguy.localenv import setting

__all__ = ["env_bool", "env_choice", "env_float", "env_int", "env_int_list", "env_list", "env_str"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _raw(name: str) -> str | None:
    return setting(os.environ.get(name)) or None


def _bad(name: str, value: str, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name}={value!r} is not valid: expected {expected}")


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise _bad(name, value, "true or false")


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise _bad(name, value, "a whole number") from None
    _check_range(name, value, number, minimum, maximum)
    return number


def env_float(
    name: str, default: float, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise _bad(name, value, "a number") from None
    if not math.isfinite(number):
        raise _bad(name, value, "a finite number")
    _check_range(name, value, number, minimum, maximum)
    return number


def env_choice(name: str, default: str, choices: Iterable[str]) -> str:
    allowed = tuple(choices)
    value = _raw(name)
    if value is None:
        return default
    if value not in allowed:
        raise _bad(name, value, "one of " + ", ".join(allowed))
    return value


def env_list(name: str, default: Iterable[str] = ()) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_int_list(name: str) -> list[int]:
    """Comma-separated whole numbers (Telegram user ids, say)."""
    items = env_list(name)
    try:
        return [int(item) for item in items]
    except ValueError:
        raise _bad(name, ",".join(items), "whole numbers separated by commas") from None


def _check_range(
    name: str, value: str, number: float, minimum: float | None, maximum: float | None
) -> None:
    if minimum is not None and number < minimum:
        raise _bad(name, value, f"at least {minimum}")
    if maximum is not None and number > maximum:
        raise _bad(name, value, f"at most {maximum}")
