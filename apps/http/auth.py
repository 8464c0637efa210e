"""The API token: where it comes from, how a request presents it, and the rule that binds beyond loopback need it."""

from __future__ import annotations

import hmac
import ipaddress
import os

from fastapi import Request

from alo.errors import AloError
from apps.http.errors import ApiError

TOKEN_ENV = "VAD_API_TOKEN"


def bearer(request: Request) -> str:
    """The token of an ``Authorization: Bearer`` header ('' when there is none; the scheme in any case)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def token_matches(given: str, token: str) -> bool:
    """Whether a presented token is the server's (constant-time; an empty one never is)."""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def check_token(given: str, token: str) -> None:
    """Refuse a request whose bearer token (``given``, '' when it sent none) is not the server's (401)."""
    if not token_matches(given, token):
        raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>' (the server's VAD_API_TOKEN)")


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond the loopback interface without a token.

    Args:
        host: The address to bind.
        token: The token, if set.

    Raises:
        AloError: A non-loopback address without a token.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        msg = f"plan error: serving on {host} needs a token: set {TOKEN_ENV} (clients send 'Authorization: Bearer')"
        raise AloError(msg)


def token_from_env() -> str | None:
    """The API token from the environment (None when unset or empty)."""
    return os.environ.get(TOKEN_ENV) or None
