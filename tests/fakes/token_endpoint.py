"""A fake Google OAuth token endpoint for service-account keys made in the test.

google-auth signs a JWT (RS256) with the key file's private key and POSTs it to the key's
``token_uri``; this endpoint checks the signature against the public key the test registered,
the audience and the expiry, and hands out a bearer token that the fake Sheets API accepts.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.requests import Request
from starlette.responses import JSONResponse

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
"""google-auth sets this audience whatever the key's token_uri; Google accepts either."""


def service_account_key(email: str, token_uri: str) -> tuple[dict[str, Any], rsa.RSAPublicKey]:
    """A key file's JSON (as Google Cloud console downloads it) and its public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "fake-project",
            "private_key_id": secrets.token_hex(20), "private_key": pem, "client_email": email,
            "client_id": "1" * 21, "token_uri": token_uri}
    return info, private.public_key()


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TokenEndpoint:
    """``POST /token``: a JWT bearer grant in, an access token out (Google's error shapes)."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPublicKey] = {}
        self.tokens: dict[str, str] = {}
        """access token -> the service account's email"""
        self.grants: list[dict[str, Any]] = []
        """The verified JWT claims, in order (tests read the scope from them)."""

    def trust(self, email: str, key: rsa.RSAPublicKey) -> None:
        self.keys[email] = key

    async def handle(self, request: Request) -> JSONResponse:
        form = await request.form()
        if form.get("grant_type") != JWT_GRANT:
            return self._error("unsupported_grant_type", "Invalid grant_type.")
        try:
            head, body, signature = str(form.get("assertion", "")).split(".")
            header, claims = json.loads(_b64(head)), json.loads(_b64(body))
        except ValueError:
            return self._error("invalid_grant", "Invalid JWT: malformed assertion.")
        key = self.keys.get(claims.get("iss", ""))
        if header.get("alg") != "RS256" or key is None:
            return self._error("invalid_grant", "Invalid JWT Signature.")
        try:
            key.verify(_b64(signature), f"{head}.{body}".encode(), padding.PKCS1v15(),
                       hashes.SHA256())
        except InvalidSignature:
            return self._error("invalid_grant", "Invalid JWT Signature.")
        audience_ok = claims.get("aud") in (GOOGLE_TOKEN_URI, str(request.url))
        if not audience_ok or claims.get("exp", 0) < time.time():
            return self._error("invalid_grant", "Invalid JWT: Token must be a short-lived "
                               "token (60 minutes) and in a reasonable timeframe.")
        self.grants.append(claims)
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self.tokens[token] = claims["iss"]
        return JSONResponse({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    @staticmethod
    def _error(code: str, description: str) -> JSONResponse:
        return JSONResponse({"error": code, "error_description": description}, status_code=400)
