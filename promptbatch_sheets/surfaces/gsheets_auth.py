"""Google credentials for the Sheets surface, found the way gcloud and gspread users expect.

Order: ``--credentials FILE``, then ``GOOGLE_APPLICATION_CREDENTIALS``, then gspread's user
OAuth files, then Application Default Credentials. The scope is spreadsheets only: the sheet is
opened by its key, so no Drive access is asked for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth
import gspread
from google.auth.credentials import Credentials
from google.auth.exceptions import DefaultCredentialsError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from ..errors import ConfigError

SCOPES = ["https://www.googleapis.com/auth/spreadsheets"]
ENV = "GOOGLE_APPLICATION_CREDENTIALS"
HOW = (
    "Give promptbatch Google credentials in one of three ways: "
    "(1) a service-account key: --credentials key.json or GOOGLE_APPLICATION_CREDENTIALS="
    "key.json, and share the sheet with the account's client_email as Editor; "
    "(2) your own Google account: save an OAuth client (Desktop app) as {oauth}, "
    "a browser opens once; "
    "(3) Application Default Credentials: gcloud auth application-default login "
    "--scopes=https://www.googleapis.com/auth/spreadsheets,"
    "https://www.googleapis.com/auth/cloud-platform"
)


@dataclass(frozen=True)
class Login:
    credentials: Credentials
    email: str | None
    """Whom the sheet must be shared with, when that is known (a service account)."""
    source: str
    """Where the credentials came from, for error messages."""


def login(path: str | None) -> Login:
    """The first credentials found, in the documented order; ConfigError says the three ways."""
    if path:
        return _from_file(Path(path), f"--credentials {path}")
    env = os.environ.get(ENV)
    if env:
        return _from_file(Path(env), f"{ENV}={env}")
    folder = gspread.auth.get_config_dir()
    client_file, user_file = folder / "credentials.json", folder / "authorized_user.json"
    if user_file.exists() or client_file.exists():
        return _user_oauth(client_file, user_file)
    try:
        creds, _project = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError:
        raise ConfigError("No Google credentials found. " + _how()) from None
    return Login(creds, _email(creds), "Application Default Credentials")


def _how() -> str:
    return HOW.format(oauth=gspread.auth.get_config_dir() / "credentials.json")


def _from_file(path: Path, source: str) -> Login:
    try:
        info: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: cannot read a JSON key file ({exc}). " + _how()) from None
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            sa = service_account.Credentials
            creds: Credentials = sa.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=SCOPES)
            return Login(creds, _email(creds), source)
        if kind == "authorized_user":
            user = user_credentials.Credentials
            creds = user.from_authorized_user_info(info)  # type: ignore[no-untyped-call]
            return Login(creds, None, source)
    except ValueError as exc:
        raise ConfigError(f"{source}: the key file is incomplete ({exc}).") from None
    if isinstance(info, dict) and ("installed" in info or "web" in info):
        return _user_oauth(path, gspread.auth.get_config_dir() / "authorized_user.json")
    raise ConfigError(f"{source} is not a service-account key (its \"type\" should be "
                      "\"service_account\"; download a JSON key in Google Cloud console > IAM > "
                      "Service accounts > Keys). " + _how())


def _user_oauth(client_file: Path, user_file: Path) -> Login:
    """gspread's own flow: a stored authorized user, else one browser consent, then stored."""
    try:
        client = gspread.oauth(scopes=SCOPES, credentials_filename=client_file,
                               authorized_user_filename=user_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Google sign-in with {client_file} failed: {exc}. " + _how()) from None
    return Login(client.http_client.auth, None, f"your Google account ({user_file})")


def _email(creds: Credentials) -> str | None:
    email = getattr(creds, "service_account_email", None)
    return email if isinstance(email, str) and "@" in email else None
