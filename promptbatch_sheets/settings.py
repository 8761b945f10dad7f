"""Run settings from four places: flags win over the promptbatch.conf sheet, which wins over
the environment, which wins over the user's config file. API keys are not settings: they are
looked up by ``userconfig.api_key`` and never stored with a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from .errors import ConfigError
from .plan import Rerun
from .userconfig import load_user_config


class Via(StrEnum):
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
    csv_escape: bool = True
    """Answers written to a CSV file that would open as formulas get a leading ``'``."""
    via: Via = Via.REALTIME
    metadata: str = ""
    """Columns beside each prompt's answers, comma-separated from ``METADATA``."""
    variations: int = 1
    """Answers per row and prompt column, each in its own numbered column and cache entry."""
    export_dir: str | None = None
    """A folder that gets each answer as a Markdown file too; never from a workbook."""
    export_name: str | None = None
    """The column naming those files (default: the row number)."""


MAX_VARIATIONS = 100
"""More answers per row than anyone reads; a typo's 1000 would multiply the bill."""
NUMBERS: dict[str, type] = {"temperature": float, "max_tokens": int, "concurrency": int,
                            "timeout": float, "retries": int, "rpm": float, "tpm": float,
                            "budget": float, "variations": int}
RANGES: dict[str, tuple[float, float | None]] = {
    "temperature": (0, 2), "max_tokens": (1, None), "concurrency": (1, None),
    "timeout": (0, None), "retries": (1, None), "rpm": (1, None), "tpm": (1, None),
    "budget": (0, None), "variations": (1, MAX_VARIATIONS)}
"""The lowest and highest value of each number (None: no ceiling)."""
METADATA = ("status",)
"""The columns ``metadata`` may ask for beside each prompt's answers."""
BOOLS = frozenset({"use_cache", "skip_hidden", "csv_escape"})
CHOICES: dict[str, type[Rerun] | type[Via]] = {"rerun": Rerun, "via": Via}
NAMES = {f.name for f in fields(Settings)}
COMMAND_LINE = "the command line"


def _coerce(name: str, value: Any, where: str) -> Any:
    if name in NUMBERS:
        try:
            number = NUMBERS[name](float(value)) if NUMBERS[name] is int else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{_named(name, where)} must be a number, not {value!r}."
                              ) from None
        low, high = RANGES[name]
        if number < low or (high is not None and number > high):
            allowed = f"from {low:g} to {high:g}" if high is not None else f"{low:g} or more"
            raise ConfigError(f"{_named(name, where)} is {value!r}, out of range: it must be "
                              f"{allowed}.")
        return number
    if name == "metadata":
        asked = [part.strip().lower() for part in str(value).split(",") if part.strip()]
        unknown = [part for part in asked if part not in METADATA]
        if unknown:
            raise ConfigError(f"{_named(name, where)} asks for {', '.join(unknown)}; the "
                              f"metadata columns are: {', '.join(METADATA)}.")
        return ",".join(asked)
    if name in CHOICES:
        kind = CHOICES[name]
        try:
            return value if isinstance(value, kind) else kind(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(c.value for c in kind)
            raise ConfigError(f"{_named(name, where)} must be one of {choices}.") from None
    if name in BOOLS:
        return str(value).strip().lower() not in ("0", "false", "no", "off")
    return str(value)


def setting_name(key: str) -> str:
    """The setting a key names, however it is written: ``Base-URL`` is ``base_url``."""
    return key.strip().lower().replace("-", "_")


def is_set(value: Any) -> bool:
    """A layer sets a value unless it leaves it out or blank."""
    return value is not None and str(value).strip() != ""


def _named(name: str, where: str) -> str:
    """How a message names a setting: as the user typed it."""
    if where == COMMAND_LINE:
        return "--" + name.replace("_", "-")
    return f"Setting {name!r} in {where}"


def _layer(values: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = setting_name(key)
        if name in NAMES and is_set(value):
            out[name] = _coerce(name, value, where)
    return out


def resolve(flags: dict[str, Any], sheet: dict[str, str], sheet_name: str = "") -> Settings:
    """Merge the four layers; each named in the error if one of its values is wrong."""
    env = {name: os.environ.get(f"PROMPTBATCH_{name.upper()}") for name in NAMES}
    merged: dict[str, Any] = {}
    merged.update(_layer(load_user_config().get("defaults", {}), "the user config file"))
    merged.update(_layer(env, "the environment (PROMPTBATCH_*)"))
    merged.update(_layer(sheet, f"the {sheet_name or 'promptbatch.conf'} sheet"))
    merged.update(_layer(flags, COMMAND_LINE))
    return replace(Settings(), **merged)


def overlay(base: Settings, values: dict[str, Any], where: str) -> Settings:
    """``base`` with ``values`` on top, checked as any layer is: the HTTP server lays the
    settings a sheet sends over its own."""
    return replace(base, **_layer(values, where))
