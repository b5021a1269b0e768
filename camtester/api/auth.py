"""Bearer tokens: HS256 JWTs signed with the secret from CAMTESTER_JWT_SECRET."""

from __future__ import annotations

import time
from typing import Any

import jwt

from camtester.errors import Unauthorized

ALGORITHM = "HS256"


def issue_token(secret: str, ttl_s: int, subject: str = "camtester") -> str:
    """A token valid for `ttl_s` seconds."""
    if not secret:
        raise ValueError("CAMTESTER_JWT_SECRET is not set")
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_header(header: str | None, secret: str) -> dict[str, Any]:
    """The claims of the `Authorization: Bearer` token, or Unauthorized."""
    if not secret:
        raise Unauthorized("the API has no JWT secret configured")
    if not header:
        raise Unauthorized("missing Authorization: Bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'")

    # Only HS256 is accepted: `alg: none` and every other algorithm fail here,
    # and a token without an expiry is refused rather than valid forever.
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}") from exc

    # pyjwt reads an `exp` of "9999999999" as a number; RFC 7519 says NumericDate.
    expiry = claims["exp"]
    if isinstance(expiry, bool) or not isinstance(expiry, int | float):
        raise Unauthorized("invalid token: exp must be a number of seconds")
    return claims
