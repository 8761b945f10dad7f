"""``promptbatch serve``: the HTTP API that the Apps Script bridge (addin/gsheets) calls.

Apps Script cannot run Python, so the sheet sends rows here and gets answers back. The server
holds the model choice, the API keys and the one answer cache; a request carries only the
template, the rows and a few sampling options. A caller cannot pick the model or its base URL:
whoever holds the token could otherwise aim our keys at any server, or at a pricier model.
To offer two models, start two servers on two ports.

Every route needs ``Authorization: Bearer TOKEN``; the token is made on first start and kept
(mode 0600) beside the user config.
"""

from .app import create_app, serve
from .backend import load_token, token_path

__all__ = ["create_app", "load_token", "serve", "token_path"]
