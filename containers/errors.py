"""Errors of the image service. One root, :class:`ImageError`; subclasses carry their context.

A host application maps them to its own statuses; :data:`HTTP_STATUS` is the mapping the
gateway applies (``gateway/services/images.py``).
"""

from __future__ import annotations

from typing import Any

from hpcwaas.errors import HpcwaasError


class ImageError(HpcwaasError):
    """Root of the image service's errors."""

    code = "image_error"


class SpecError(ImageError):
    """An ``image.yaml`` (or a Dockerfile) is not acceptable; ``problems`` name the fields.

    Each problem is ``{"field": "apt.2", "message": "...", "line": 7}`` (``line`` when the spec
    came from a file).
    """

    code = "invalid_image_spec"

    def __init__(self, message: str, *, problems: list[dict[str, Any]] | None = None, **context: Any) -> None:
        super().__init__(message, hint="fix the spec and send it again", **context)
        self.problems = problems or []


class ImageNotFound(ImageError):
    """No image with that id in the store (or the caller may not see it)."""

    code = "not_found"


class BuildNotFound(ImageError):
    """No build with that id (or the caller may not see it)."""

    code = "not_found"


class ImageBusy(ImageError):
    """The image cannot be deleted while a build of it is in flight."""

    code = "conflict"


class NotAllowed(ImageError):
    """Only the owner of an image or an admin may do this."""

    code = "permission_denied"


class BuilderUnavailable(ImageError):
    """The Apptainer builder is not prepared or cannot be entered (the reason says which)."""

    code = "builder_unavailable"


class BuildFailed(ImageError):
    """``apptainer build`` failed or timed out; ``reason`` is the tool's own last lines."""

    code = "build_failed"

    def __init__(self, message: str, *, reason: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.reason = reason


HTTP_STATUS: dict[type[ImageError], int] = {
    SpecError: 422,
    ImageNotFound: 404,
    BuildNotFound: 404,
    ImageBusy: 409,
    NotAllowed: 403,
    BuilderUnavailable: 503,
    BuildFailed: 422,
}
