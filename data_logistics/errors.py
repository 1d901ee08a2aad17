"""Errors of the data-logistics package (one root: :class:`StagingError`)."""

from __future__ import annotations

from hpcwaas.errors import HpcwaasError


class StagingError(HpcwaasError):
    """Root of the errors raised while staging data."""

    code = "staging_error"


class InvalidTransfer(StagingError):
    """The transfer's parameters are not acceptable (bad URL, path, checksum format...)."""

    code = "invalid_transfer"


class PathOutsideWorkDir(InvalidTransfer):
    """A path resolves outside the directory it must stay in (the site user's work dir)."""

    code = "path_outside_work_dir"


class DestinationExists(StagingError):
    """The destination already exists and overwriting was not asked for."""

    code = "destination_exists"


class SourceUnavailable(StagingError):
    """The source cannot be read (HTTP error, missing file, unreachable site)."""

    code = "source_unavailable"


class DatasetUnresolved(StagingError):
    """A catalogue dataset could not be resolved to a location: the run fails, no fallback."""

    code = "dataset_unresolved"


class ChecksumMismatch(StagingError):
    """The data at the destination does not hash to what the source holds: the transfer failed."""

    code = "checksum_mismatch"


class CredentialUnavailable(StagingError):
    """The single-use Vault token of a run was already used, has expired, or is malformed."""

    code = "credential_unavailable"


class AirflowUnavailable(StagingError):
    """Airflow's API server cannot be reached or refused our credentials."""

    code = "airflow_unavailable"
    transient = True
    service = "Airflow's API server"


class AirflowError(StagingError):
    """Airflow answered a request with an unexpected error."""

    code = "airflow_error"


class PipelineNotFound(StagingError):
    """No such pipeline (DAG) or run."""

    code = "pipeline_not_found"
