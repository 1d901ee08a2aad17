"""Users and tokens."""

from __future__ import annotations

import typer

from hpcwaas.cli._common import client, console, emit, errors, fields, table

users = typer.Typer(help="Users (admin).", no_args_is_help=True)
tokens = typer.Typer(help="API tokens.", no_args_is_help=True)
USER_COLS = ["id", "username", "role", "full_name", "email", "disabled", "created_at"]
TOKEN_COLS = ["id", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]


@users.command("me")
def me() -> None:
    """Who am I."""
    with errors(), client() as api:
        emit(api.me(), fields)


@users.command("list")
def list_users() -> None:
    """List users."""
    with errors(), client() as api:
        emit(api.list_users(), lambda d: table(d, USER_COLS))


@users.command("create")
def create(
    username: str,
    role: str = typer.Option("scientist", help="admin, developer or scientist."),
    full_name: str = typer.Option(None),
    email: str = typer.Option(None),
) -> None:
    """Create a user."""
    with errors(), client() as api:
        emit(api.create_user(username, role, full_name=full_name, email=email), fields)


@users.command("show")
def show(user: str) -> None:
    """Show a user (by id or name)."""
    with errors(), client() as api:
        emit(api.get_user(user), fields)


@users.command("update")
def update(
    user: str,
    role: str = typer.Option(None),
    disable: bool = typer.Option(None, "--disable/--enable"),
) -> None:
    """Change a user's role, or disable/enable them."""
    changes = {k: v for k, v in {"role": role, "disabled": disable}.items() if v is not None}
    with errors(), client() as api:
        emit(api.update_user(user, **changes), fields)


@tokens.command("create")
def create_token(
    name: str = typer.Option("default"),
    days: int = typer.Option(None, help="Lifetime in days (server default otherwise)."),
    expires_in: str = typer.Option(None, "--expires-in", help="Lifetime as an ISO 8601 duration, e.g. PT12H."),
    expires_at: str = typer.Option(None, "--expires-at", help="Expiry time, e.g. 2027-01-31T18:00:00Z."),
    user: str = typer.Option(None, help="Issue for another user (admin)."),
) -> None:
    """Create a token; it is printed once."""
    with errors(), client() as api:
        out = api.create_token(name, days, user, expires_in=expires_in, expires_at=expires_at)
    emit(out, lambda d: console.print(f"token [bold]{d['name']}[/bold] (expires {d['expires_at']}), shown once:\n"
                                      f"{d['token']}"))


@tokens.command("list")
def list_tokens(user: str = typer.Option(None, help="Another user's tokens (admin).")) -> None:
    """List tokens (never the tokens themselves)."""
    with errors(), client() as api:
        emit(api.list_tokens(user), lambda d: table(d, TOKEN_COLS))


@tokens.command("revoke")
def revoke(token_id: str) -> None:
    """Revoke a token."""
    with errors(), client() as api:
        emit(api.revoke_token(token_id), lambda d: console.print(f"revoked {d['id']} at {d['revoked_at']}"))
