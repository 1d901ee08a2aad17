"""API tokens: random, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "hpcw_"


def new_token() -> str:
    """A new random API token (256 bits of entropy)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token.

    A plain SHA-256 suffices: tokens are 256-bit random values, so there is nothing to brute
    force, and a fast hash keeps authentication cheap on every request.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    """The first characters of a token, safe to show so a person can tell tokens apart."""
    return token[: len(TOKEN_PREFIX) + 6]
