"""HPC sites: registration with a pinned host key, and host-key scanning for admins."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.errors import Conflict, NotFound
from gateway.persistence import repositories as repo
from gateway.persistence.models import Site, User
from gateway.schemas.sites import HostKeyOut, SiteCreate, SiteUpdate
from hpcwaas.ssh import SiteEndpoint, parse_public_key, scan_host_keys


def scan(login_host: str, port: int, timeout: float) -> list[HostKeyOut]:
    """The host keys a login node offers, with fingerprints for the admin to confirm."""
    return [
        HostKeyOut(key=k.line, key_type=k.key_type, fingerprint=k.fingerprint)
        for k in scan_host_keys(login_host, port, timeout=timeout)
    ]


def register(db: Session, actor: User, data: SiteCreate) -> Site:
    """Register a site; its host key is validated and pinned."""
    key = parse_public_key(data.host_key)
    if repo.site_by_name(db, data.name) is not None:
        raise Conflict(f"site {data.name!r} already exists", field="name")
    site = Site(
        name=data.name,
        description=data.description,
        login_host=data.login_host,
        port=data.port,
        scheduler=data.scheduler,
        partitions=list(data.partitions),
        work_dir=data.work_dir,
        host_key=key.line,
        host_key_fingerprint=key.fingerprint,
        ssh_certificates=data.ssh_certificates,
        created_by=actor.id,
    )
    db.add(site)
    try:
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise Conflict(f"site {data.name!r} already exists", field="name") from exc
    return site


def get(db: Session, name: str) -> Site:
    site = repo.site_by_name(db, name)
    if site is None:
        raise NotFound(f"site {name!r} does not exist", hint="list sites with 'waas sites list'", site=name)
    return site


def list_all(db: Session) -> Sequence[Site]:
    return repo.list_sites(db)


def update(db: Session, name: str, data: SiteUpdate) -> Site:
    """Change a site; a new host key must be given explicitly (re-pinning is a deliberate act)."""
    site = get(db, name)
    changes = data.model_dump(exclude_unset=True)
    if "host_key" in changes and changes["host_key"] is not None:
        key = parse_public_key(changes.pop("host_key"))
        site.host_key, site.host_key_fingerprint = key.line, key.fingerprint
    for field, value in changes.items():
        if value is not None:
            setattr(site, field, value)
    db.commit()
    return site


def delete(db: Session, name: str) -> None:
    db.delete(get(db, name))
    db.commit()


def endpoint(site: Site) -> SiteEndpoint:
    """Where to connect, with the pinned host key."""
    return SiteEndpoint(site.login_host, site.port, site.host_key)


def work_dir_for(site: Site, login: str) -> str:
    """The site's work folder for one site user."""
    return site.work_dir.replace("{login}", login).rstrip("/") or "/"
