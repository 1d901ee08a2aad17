"""The caller's SSH credentials: private halves stay in Vault, responses carry public halves only."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.api.deps import CurrentUser, SessionDep, SettingsDep, VaultDep
from gateway.schemas.ssh_keys import SSHKeyCheck, SSHKeyCheckResult, SSHKeyCreate, SSHKeyImport, SSHKeyOut
from gateway.services import ssh_keys as service

router = APIRouter(prefix="/ssh_keys", tags=["ssh keys"])


@router.post("", response_model=SSHKeyOut, status_code=201, summary="Generate a key pair (private half to Vault)")
def generate(data: SSHKeyCreate, db: SessionDep, vault: VaultDep, user: CurrentUser) -> SSHKeyOut:
    return SSHKeyOut.model_validate(service.generate(db, vault, user, data))


@router.post("/import", response_model=SSHKeyOut, status_code=201, summary="Import an existing private key")
def import_key(data: SSHKeyImport, db: SessionDep, vault: VaultDep, user: CurrentUser) -> SSHKeyOut:
    return SSHKeyOut.model_validate(service.import_key(db, vault, user, data))


@router.get("", response_model=list[SSHKeyOut], summary="List your keys")
def list_keys(db: SessionDep, user: CurrentUser) -> list[SSHKeyOut]:
    return [SSHKeyOut.model_validate(k) for k in service.list_own(db, user)]


@router.get("/{key_id}", response_model=SSHKeyOut,
            summary="Show one of your keys (an admin: any key's public half and fingerprint)")
def show(key_id: str, db: SessionDep, user: CurrentUser) -> SSHKeyOut:
    return SSHKeyOut.model_validate(service.get_visible(db, user, key_id))


@router.delete("/{key_id}", status_code=204, summary="Delete one of your keys (and its Vault secret)")
def delete(key_id: str, db: SessionDep, vault: VaultDep, user: CurrentUser) -> Response:
    service.delete(db, vault, user, key_id)
    return Response(status_code=204)


@router.post("/{key_id}/check", response_model=SSHKeyCheckResult, summary="Log in to a site with the key")
def check(key_id: str, data: SSHKeyCheck, db: SessionDep, vault: VaultDep, settings: SettingsDep,
          user: CurrentUser) -> SSHKeyCheckResult:
    return service.check(db, vault, user, key_id, data.site, data.login, settings.ssh_connect_timeout)
