"""The user's config file (TOML): default settings and API keys, readable by the user only.

    [defaults]
    model = "openai:gpt-4o-mini"

    [keys]
    openai = "sk-..."
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError


def config_path() -> Path:
    if os.environ.get("PROMPTBATCH_CONFIG"):
        return Path(os.environ["PROMPTBATCH_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "promptbatch" / "config.toml"


def load_user_config() -> dict[str, Any]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read the config file {path}: {exc}") from None
    return data


def api_key(provider: str, variable: str | None) -> str | None:
    """The key for ``provider``: its environment variable first, then ``[keys]`` in the file."""
    if variable and os.environ.get(variable):
        return os.environ[variable]
    keys = load_user_config().get("keys", {})
    value = keys.get(provider) if isinstance(keys, dict) else None
    return str(value) if value else None


def save_api_key(provider: str, key: str) -> Path:
    """Write a key into the config file, created with mode 0600 before any secret lands."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_user_config()
    data.setdefault("keys", {})[provider] = key
    lines: list[str] = []
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_string(str(v))}" for k, v in values.items()]
            lines.append("")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    return path


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
