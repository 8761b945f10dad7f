"""Run settings from four places: flags win over the promptbatch.conf sheet, which wins over
the environment, which wins over the user's config file. API keys are not settings: they are
looked up by ``userconfig.api_key`` and never stored with a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from .errors import ConfigError
from .plan import Rerun
from .userconfig import load_user_config


class Via(str, Enum):
    """How a run reaches the model."""

    REALTIME = "realtime"
    BATCH = "batch"
    """The provider's Batch API: half price, answers within a day, collected by a later run."""


@dataclass(frozen=True)
class Settings:
    model: str | None = None
    base_url: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None
    concurrency: int | None = None
    """The most requests in flight; None: the limiter's window adapts up to ``limits.CAP``."""
    timeout: float = 120.0
    retries: int = 6
    rpm: float | None = None
    tpm: float | None = None
    budget: float | None = None
    output_column: str = "response"
    fields: str | None = None
    """Structured answers: output headers with types, e.g. ``score (number), reason``."""
    schema: str | None = None
    """Structured answers: a JSON schema, or the path of a .json file holding one."""
    rerun: Rerun = Rerun.MISSING
    use_cache: bool = True
    skip_hidden: bool = False
    """Leave out rows hidden in the sheet (filtered rows are hidden rows)."""
    via: Via = Via.REALTIME


NUMBERS: dict[str, type] = {"temperature": float, "max_tokens": int, "concurrency": int,
                            "timeout": float, "retries": int, "rpm": float, "tpm": float,
                            "budget": float}
BOOLS = frozenset({"use_cache", "skip_hidden"})
CHOICES: dict[str, type[Rerun] | type[Via]] = {"rerun": Rerun, "via": Via}
NAMES = {f.name for f in fields(Settings)}


def _coerce(name: str, value: Any, where: str) -> Any:
    if name in NUMBERS:
        try:
            number = NUMBERS[name](float(value)) if NUMBERS[name] is int else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"Setting {name!r} in {where} must be a number, not {value!r}."
                              ) from None
        if number < 0 or (name in ("concurrency", "retries", "max_tokens", "rpm", "tpm")
                          and number < 1):
            raise ConfigError(f"Setting {name!r} in {where} is out of range: {value!r}.")
        return number
    if name in CHOICES:
        kind = CHOICES[name]
        try:
            return value if isinstance(value, kind) else kind(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(c.value for c in kind)
            raise ConfigError(f"Setting {name!r} in {where} must be one of {choices}.") from None
    if name in BOOLS:
        return str(value).strip().lower() not in ("0", "false", "no", "off")
    return str(value)


def _layer(values: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.strip().lower().replace("-", "_")
        if name in NAMES and value is not None and str(value).strip() != "":
            out[name] = _coerce(name, value, where)
    return out


def resolve(flags: dict[str, Any], sheet: dict[str, str], sheet_name: str = "") -> Settings:
    """Merge the four layers; each named in the error if one of its values is wrong."""
    env = {name: os.environ.get(f"PROMPTBATCH_{name.upper()}") for name in NAMES}
    merged: dict[str, Any] = {}
    merged.update(_layer(load_user_config().get("defaults", {}), "the user config file"))
    merged.update(_layer(env, "the environment (PROMPTBATCH_*)"))
    merged.update(_layer(sheet, f"the {sheet_name or 'promptbatch.conf'} sheet"))
    merged.update(_layer(flags, "the command line"))
    return replace(Settings(), **merged)


def overlay(base: Settings, values: dict[str, Any], where: str) -> Settings:
    """``base`` with ``values`` on top, checked as any layer is: the HTTP server lays the
    settings a sheet sends over its own."""
    return replace(base, **_layer(values, where))
