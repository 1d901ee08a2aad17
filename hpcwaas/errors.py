"""The exception root of hpcwaas and the errors of the shared primitives.

Every package has one root derived from :class:`HpcwaasError`; subclasses carry the context a
person needs (site, host, user, operation, stderr). The gateway maps them to HTTP in one place.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HpcwaasError(Exception):
    """Root of every error hpcwaas raises on purpose.

    ``message`` is safe to show a user; ``hint`` says what to do next; ``context`` holds
    structured fields (never secrets).
    """

    code = "error"
    #: A service is away for a while (unreachable, sealed, restarting): work that met this error
    #: waits and tries again (the engine's transient window) instead of failing. ``service``
    #: names it for the person who waits.
    transient: ClassVar[bool] = False
    service: ClassVar[str] = ""

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigurationError(HpcwaasError):
    """The installation is misconfigured (a setting is missing or wrong)."""

    code = "configuration_error"


class VaultError(HpcwaasError):
    """Vault answered with an error."""

    code = "vault_error"


class VaultUnavailable(VaultError):
    """Vault cannot be reached, is sealed, or refused the gateway's token."""

    code = "vault_unavailable"
    transient = True
    service = "Vault"


class SecretNotFound(VaultError):
    """No secret at the expected Vault path."""

    code = "secret_not_found"


class SSHError(HpcwaasError):
    """A problem talking SSH to a site."""

    code = "ssh_error"


class InvalidKey(SSHError):
    """A public or private key could not be parsed."""

    code = "invalid_key"


class SiteUnreachable(SSHError):
    """The site's login host did not answer (connection refused, timeout, DNS)."""

    code = "site_unreachable"
    transient = True
    service = "the site's login node (SSH)"


class HostKeyMismatch(SSHError):
    """The site presented a host key other than the pinned one: refused."""

    code = "host_key_mismatch"


class AuthenticationFailed(SSHError):
    """The site refused the SSH key for this login."""

    code = "ssh_authentication_failed"


class RemoteCommandFailed(SSHError):
    """A command on the site exited non-zero."""

    code = "remote_command_failed"


class SchedulerError(HpcwaasError):
    """The batch scheduler refused or failed a request."""

    code = "scheduler_error"


class SchedulerUnavailable(SchedulerError):
    """The scheduler's controller does not answer (restarting, overloaded)."""

    code = "scheduler_unavailable"
    transient = True
    service = "the site's batch scheduler"
