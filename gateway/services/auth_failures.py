"""Failed authentications, counted per client address and per user, and refused past a limit.

A token is 43 random characters, so guessing one is hopeless; the limit is there so that nobody
can make the attempt cheap (and so that a broken client hammering with a revoked token shows up
as 429s, not as load). Each app has its own limiter (each gateway process counts its own). The
client is the address the server saw (``uvicorn --forwarded-allow-ips`` behind a proxy); the
middleware sets both for each request (:data:`current`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass

from gateway.errors import TooManyAttempts


class FailureLimiter:
    """At most ``limit`` failures per key in any ``window`` seconds; then refused until one ages out."""

    def __init__(self, limit: int = 20, window: float = 300.0) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, *keys: str) -> None:
        """Raise TooManyAttempts when any key is over the limit."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                seen = self._recent(key, now)
                if len(seen) >= self.limit:
                    wait = max(1, math.ceil(seen[0] + self.window - now))
                    raise TooManyAttempts(
                        f"too many failed authentications from this {key.split(':')[0]}; try again in {wait} s",
                        hint="check the token you send (an administrator gives you a new one)", retry_after=wait)

    def failed(self, *keys: str) -> None:
        """Count one failure against every key."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)
            if len(self._failures) > 10_000:  # many clients once: forget the quiet ones
                for key in [k for k, v in self._failures.items() if not v or v[-1] < now - self.window]:
                    del self._failures[key]

    def _recent(self, key: str, now: float) -> deque[float]:
        seen = self._failures.setdefault(key, deque())
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        return seen


@dataclass(frozen=True)
class Guard:
    """The limiter of the app serving the request, and the request's client address."""

    limiter: FailureLimiter
    client: str | None

    def keys(self, user_id: str | None = None) -> list[str]:
        return [key for key in (self.client and f"client:{self.client}", user_id and f"user:{user_id}") if key]


#: Set for each request by ``gateway.api.middleware``; None outside a request (the CLI, workers).
current: ContextVar[Guard | None] = ContextVar("hpcwaas_auth_guard", default=None)


def check(user_id: str | None = None) -> None:
    """Refuse the request when its client (or ``user_id``) failed too often."""
    guard = current.get()
    if guard is not None:
        guard.limiter.check(*guard.keys(user_id))


def failed(user_id: str | None = None) -> None:
    """Count a failed authentication of the current request."""
    guard = current.get()
    if guard is not None:
        guard.limiter.failed(*guard.keys(user_id))
