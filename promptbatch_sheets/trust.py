"""A workbook never redirects a key.

A key from the user's environment or config file goes only to its provider's own address, or
to an address the user gave for that provider: ``--base-url`` (for this run, whatever the
model), or ``base_url`` from the environment or the config file together with a model of
that provider there, or OLLAMA_HOST for Ollama. A workbook is someone else's file: its
promptbatch.conf sheet (or a =PROMPTBATCH argument) may choose the model and the server only
where no key of the user's would go somewhere else. A server that gets no key (a keyless
openai-compatible or Ollama server) may be chosen by the workbook; preview shows it.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import userconfig
from .errors import ConfigError
from .providers import ModelSpec, same_address, server_address
from .settings import Settings


def check_server(spec: ModelSpec, user: Settings, choices: Mapping[str, str],
                 flag_base_url: bool = False) -> None:
    """Refuse, before any call, a run whose key would reach an address the user never gave.

    ``user`` holds the settings without the workbook's; ``choices`` says where the workbook set
    the ``model`` or ``base_url`` the run uses (a cell, or a formula's argument);
    ``flag_base_url`` is true when the address was given on the command line.
    """
    if not choices or spec.own_server or flag_base_url or not _sends_key(spec):
        return
    assert spec.base_url is not None  # only the embedded model has none, and it is own_server
    user_provider = (user.model or "local").partition(":")[0].strip().lower()
    given = server_address(spec.provider,
                           user.base_url if user_provider == spec.provider else None)
    if same_address(spec.base_url, given):
        return
    url = spec.base_url
    said = [f"{choices[name]} sets {name} {value}" for name, value in
            (("model", f"{spec.provider}:{spec.model}"), ("base_url", url)) if name in choices]
    whose = "" if "base_url" in choices else \
        f" (your base_url, given for {user.model})" if user.model else " (your base_url)"
    raise ConfigError(
        f"{' and '.join(said)}, which would send your {_key_name(spec)} to {url}{whose}. A "
        f"workbook cannot choose where your keys go: if you trust that server, pass --base-url "
        f"{url} yourself (from Excel: set model and base_url in your config file).")


def _sends_key(spec: ModelSpec) -> bool:
    return spec.key_required or userconfig.api_key(spec.provider, spec.key_variable) is not None


def _key_name(spec: ModelSpec) -> str:
    return spec.key_variable or f"{spec.provider} key"
