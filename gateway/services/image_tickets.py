"""Download tickets for images: what an image-transfer pipeline uses to fetch a SIF from the gateway.

A ticket is an HMAC over the image id and an expiry, made with a key only the gateway has. It
names one image, is read-only and expires within minutes, so the ``conf`` of a pipeline run holds
no credential worth stealing: no API token and no SSH key ever goes there.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode

from fastapi.responses import FileResponse

from containers.store import ImageStore
from gateway.errors import NotAuthenticated, NotFound
from hpcwaas.settings import Settings

TICKET_SECONDS = 900


def _key(settings: Settings) -> bytes:
    path: Path = settings.home / "secrets" / "image-tickets.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _sign(settings: Settings, image_id: str, expires: int) -> str:
    return hmac.new(_key(settings), f"{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def ticket_url(settings: Settings, image_id: str, ttl: int = TICKET_SECONDS) -> str:
    """A URL that downloads one image without a token, for ``ttl`` seconds."""
    expires = int(time.time()) + ttl
    query = urlencode({"expires": expires, "sig": _sign(settings, image_id, expires)})
    return f"{settings.public_url.rstrip('/')}/images/{image_id}/ticketed?{query}"


def check(settings: Settings, image_id: str, expires: int, sig: str) -> None:
    """Raise NotAuthenticated unless the ticket is genuine and unexpired."""
    if expires < time.time():
        raise NotAuthenticated("the download ticket has expired", hint="start the transfer again")
    if not hmac.compare_digest(_sign(settings, image_id, expires), sig):
        raise NotAuthenticated("the download ticket is not valid for this image")


def file_response(store: ImageStore, image_id: str) -> FileResponse:
    """The SIF with Range support (starlette's FileResponse), for a checked ticket."""
    if not store.has(image_id):
        raise NotFound(f"no image {image_id}")
    meta = store.inspect(image_id, definition=False)
    return FileResponse(store.sif(image_id), media_type="application/vnd.sylabs.sif",
                        headers={"X-Image-Digest": f"sha256:{meta.sha256}"})
