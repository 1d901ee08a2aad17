"""Errors of the gateway. HTTP status codes are assigned in one place: ``gateway.api.errors``."""

from __future__ import annotations

from hpcwaas.errors import HpcwaasError


class GatewayError(HpcwaasError):
    """Root of the gateway's own errors."""

    code = "gateway_error"


class NotAuthenticated(GatewayError):
    """No token, or a token that is unknown, expired or revoked."""

    code = "not_authenticated"


class TooManyAttempts(GatewayError):
    """Too many failed authentications from one client or for one user; ``retry_after`` seconds."""

    code = "too_many_attempts"


class QuotaExceeded(GatewayError):
    """A user is at an operator's limit (executions in flight, say)."""

    code = "quota_exceeded"


class PermissionDenied(GatewayError):
    """The caller's role does not allow this."""

    code = "permission_denied"


class NotFound(GatewayError):
    """The resource does not exist, or the caller may not see it."""

    code = "not_found"


class Conflict(GatewayError):
    """The request conflicts with an existing record (a duplicate name, say)."""

    code = "conflict"


class InvalidInput(GatewayError):
    """The request is well-formed but its values are not acceptable."""

    code = "invalid_input"


class DatabaseUnavailable(GatewayError):
    """The database cannot be reached."""

    code = "database_unavailable"
