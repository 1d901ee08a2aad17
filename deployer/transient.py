"""Which failures are a service away for a while, to be waited out rather than reported.

An error class says so itself (``HpcwaasError.transient``, with the ``service`` it names): the
site's SSH server not answering, Slurm's controller restarting, Vault sealed or unreachable,
Airflow's API server restarting. Executors wrap what they meet (``OperationError`` from a
``SiteUnreachable``...), so the whole chain of causes is looked at.
"""

from __future__ import annotations

from hpcwaas.errors import HpcwaasError, SSHError

#: An SSH error of exactly this class is a connection dropped mid-command (its subclasses are
#: a refused key, a changed host key, a failed command: not transient).
_DROPPED = SSHError


def transient_cause(exc: BaseException) -> HpcwaasError | None:
    """The transient error behind ``exc``, if one is (``exc`` itself or a cause of it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, HpcwaasError) and (current.transient or type(current) is _DROPPED):
            return current
        current = current.__cause__ or current.__context__
    return None


def describe(cause: HpcwaasError) -> str:
    """What is away, for the person who waits: ``the site's login node (SSH): connection refused``."""
    service = cause.service or "the site's login node (SSH)"
    return f"{service}: {cause.message}"
