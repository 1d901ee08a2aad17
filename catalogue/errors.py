"""Errors of the data catalogue. The host application maps them to HTTP statuses
(``catalogue.api.STATUS`` lists the mapping the gateway uses)."""

from __future__ import annotations

from hpcwaas.errors import HpcwaasError


class CatalogueError(HpcwaasError):
    """Root of the catalogue's errors."""

    code = "catalogue_error"


class DatasetNotFound(CatalogueError):
    """No such dataset, or the caller may not read it (the two are not told apart)."""

    code = "not_found"


class StorageTargetNotFound(CatalogueError):
    """No storage target with that id or name."""

    code = "not_found"


class NotAllowed(CatalogueError):
    """The caller may read the entry but not change it: only its owner or an admin may."""

    code = "permission_denied"


class LoginRequired(CatalogueError):
    """The operation needs an authenticated caller."""

    code = "not_authenticated"


class Conflict(CatalogueError):
    """The change conflicts with the stored state (a stale revision, a name taken, a target in use)."""

    code = "conflict"


class InvalidQuery(CatalogueError):
    """A search text, filter or cursor that cannot be used."""

    code = "invalid_query"


class InvalidEntry(CatalogueError):
    """An entry whose values are well-formed but not acceptable (an unknown storage target, say)."""

    code = "invalid_input"


class ImportRejected(CatalogueError):
    """A bulk import with bad lines; nothing was written. ``context['lines']`` lists the problems."""

    code = "import_rejected"


class Unresolvable(CatalogueError):
    """The dataset has no concrete location to stage from; no fallback location is guessed."""

    code = "dataset_unresolvable"
