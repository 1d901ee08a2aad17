"""Server-rendered pages of the catalogue at ``/catalogue`` (Jinja2, a little CSS and JavaScript).

Browse and search with highlighted matches and filters, a page per dataset (metadata, history,
stage-in hints), and, after logging in with an API token, forms to create, edit and delete
one's own entries.

The token is posted once from the login form and kept in an HttpOnly, SameSite=Strict cookie
scoped to ``/catalogue``: never in a URL, never readable by scripts. Every form carries a CSRF
token that must match a second cookie (double submit). The host supplies the session dependency
and an ``authenticate(db, token) -> Principal`` function that raises on a bad token.
"""

# No `from __future__ import annotations`: FastAPI must see the dependency aliases made inside
# make_router as objects, not as strings it would look up in the module's globals.

import hmac
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from catalogue import errors as err
from catalogue import listing, service
from catalogue.schemas import DatasetCreate, DatasetFilters, DatasetUpdate, VersionOut
from catalogue.service import Principal
from hpcwaas.errors import HpcwaasError

HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "hpcwaas_catalogue_token"
CSRF_COOKIE = "hpcwaas_catalogue_csrf"
COOKIE_PATH = "/catalogue"
STATIC = {"catalogue.css": "text/css", "catalogue.js": "text/javascript"}
_FILTER_KEYS = ("q", "keyword", "format", "owner", "access", "site", "protocol", "sort", "order", "cursor")


def _size(value: int | None) -> str:
    if value is None:
        return "\u2013"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["size"] = _size
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d else "\u2013"
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
    return env


def _status_of(exc: HpcwaasError) -> int:
    from catalogue.api import STATUS

    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _safe_next(value: str | None) -> str:
    """Only local catalogue pages are valid places to go back to (no open redirects)."""
    if value and value.startswith("/catalogue") and "//" not in value and "\\" not in value:
        return value
    return "/catalogue"


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.replace("\n", ",").split(",") if v.strip()]


def _creators(value: str) -> list[dict[str, str]]:
    """One creator per line: ``Name; ORCID; affiliation`` (the last two optional)."""
    out = []
    for line in value.splitlines():
        parts = [p.strip() for p in line.split(";")]
        if not parts or not parts[0]:
            continue
        creator = {"name": parts[0]}
        if len(parts) > 1 and parts[1]:
            creator["orcid"] = parts[1]
        if len(parts) > 2 and parts[2]:
            creator["affiliation"] = parts[2]
        out.append(creator)
    return out


def _creator_line(name: str, orcid: str | None, affiliation: str | None) -> str:
    parts = [name, orcid or "", affiliation or ""]
    while parts and not parts[-1]:
        parts.pop()
    return "; ".join(parts)


def form_to_fields(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    """The dataset fields of a submitted form, and the problems found before validation."""
    text = {k: str(v) for k, v in form.items()}
    problems: dict[str, str] = {}
    fields: dict[str, Any] = {
        "title": text.get("title", ""),
        "description": text.get("description", ""),
        "format": text.get("format") or None,
        "size_bytes": text.get("size_bytes") or None,
        "checksum_sha256": text.get("checksum_sha256") or None,
        "license": text.get("license") or None,
        "version": text.get("version") or None,
        "access": text.get("access") or "restricted",
        "doi": text.get("doi") or None,
        "handle": text.get("handle") or None,
        "keywords": _split(text.get("keywords", "")),
        "readers": _split(text.get("readers", "").replace(" ", ",")),
        "creators": _creators(text.get("creators", "")),
        "location": None,
        "storage_target": None,
        "path": None,
    }
    mode = text.get("location_mode", "url")
    if mode == "url":
        fields["location"] = text.get("location") or None
    elif mode == "target":
        fields["storage_target"] = text.get("storage_target") or None
        fields["path"] = text.get("path") or None
    raw = text.get("metadata", "").strip()
    try:
        metadata = json.loads(raw) if raw else {}
        if not isinstance(metadata, dict):
            raise ValueError("not an object")
        fields["metadata"] = metadata
    except ValueError:
        problems["metadata"] = 'must be a JSON object, e.g. {"instrument": "CTD"}'
    return fields, problems


def _field_problems(exc: ValidationError) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ())]
        name = loc[0] if loc else "form"
        out.setdefault(name, e.get("msg", "invalid value").removeprefix("Value error, "))
    return out


def make_router(
    *,
    session: Callable[..., Any],
    authenticate: Callable[[Session, str], Principal],
) -> APIRouter:
    """The HTML pages; ``authenticate`` turns a token into a principal or raises."""
    env = _environment()
    Db = Annotated[Session, Depends(session)]
    router = APIRouter(include_in_schema=False)

    def principal(request: Request, db: Session) -> Principal | None:
        token = request.cookies.get(TOKEN_COOKIE)
        if not token:
            return None
        try:
            return authenticate(db, token)
        except HpcwaasError:
            return None

    def render(request: Request, name: str, who: Principal | None, status: int = 200, **context: Any) -> HTMLResponse:
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        html = env.get_template(name).render(request=request, who=who, csrf=csrf, **context)
        response = HTMLResponse(html, status_code=status)
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, csrf, path=COOKIE_PATH, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def error_page(request: Request, who: Principal | None, exc: HpcwaasError) -> HTMLResponse:
        return render(request, "error.html", who, status=_status_of(exc), error=exc)

    def login_redirect(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/catalogue/ui/login?{urlencode({'next': target})}", status_code=303)

    async def checked_form(request: Request) -> FormData:
        form = await request.form()
        sent = str(form.get("csrf", ""))
        expected = request.cookies.get(CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(sent, expected):
            raise err.NotAllowed("the form has expired or did not come from this site",
                                 hint="reload the page and submit it again")
        return form

    @router.get("/catalogue", response_class=HTMLResponse)
    def browse(request: Request, db: Db) -> HTMLResponse:
        who = principal(request, db)
        params: dict[str, Any] = {k: v for k, v in request.query_params.items() if k in _FILTER_KEYS and v}
        if request.query_params.getlist("keyword"):
            params["keyword"] = [k for k in request.query_params.getlist("keyword") if k]
        problem = None
        page = None
        try:
            page = listing.list_datasets(db, who, DatasetFilters.model_validate({**params, "limit": 20}))
        except ValidationError as exc:
            problem = "; ".join(f"{k}: {v}" for k, v in _field_problems(exc).items())
        except err.CatalogueError as exc:
            problem = exc.message + (f" ({exc.hint})" if exc.hint else "")
        facets = listing.facets(db, who, limit=12)
        next_url = None
        if page and page.next_cursor:
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
            next_url = "/catalogue?" + urlencode([*query, ("cursor", page.next_cursor)])
        return render(request, "browse.html", who, status=422 if problem else 200, page=page, problem=problem,
                      params=params, facets=facets, next_url=next_url,
                      filter_url=lambda **kw: "/catalogue?" + urlencode(
                          {**{k: v for k, v in params.items() if k not in ("cursor", *kw)}, **kw}, doseq=True))

    @router.get("/catalogue/ui/datasets/{dataset_id}", response_class=HTMLResponse)
    def dataset_page(dataset_id: str, request: Request, db: Db) -> HTMLResponse:
        who = principal(request, db)
        try:
            dataset = service.get_dataset(db, who, dataset_id)
            versions = [VersionOut.model_validate(v) for v in service.history(db, who, dataset_id)]
            try:
                resolved = service.resolve(db, who, dataset_id)
            except err.Unresolvable:
                resolved = None
        except err.CatalogueError as exc:
            return error_page(request, who, exc)
        return render(request, "dataset.html", who, d=service.to_out(dataset, who), versions=versions,
                      resolved=resolved, can_write=service.can_write(dataset.owner_id, who),
                      base_url=str(request.base_url).rstrip("/"))

    def form_page(request: Request, who: Principal | None, db: Session, values: dict[str, Any],
                  problems: dict[str, str], status: int = 200, dataset_id: str | None = None,
                  revision: int | None = None, message: str | None = None) -> HTMLResponse:
        return render(request, "form.html", who, status=status, values=values, problems=problems,
                      dataset_id=dataset_id, revision=revision, message=message,
                      targets=service.list_targets(db))

    @router.get("/catalogue/ui/new", response_class=HTMLResponse, response_model=None)
    def new_form(request: Request, db: Db) -> Response:
        who = principal(request, db)
        if who is None:
            return login_redirect(request)
        return form_page(request, who, db, {"access": "restricted", "location_mode": "url"}, {})

    @router.post("/catalogue/ui/new", response_class=HTMLResponse, response_model=None)
    async def create(request: Request, db: Db) -> Response:
        who = principal(request, db)
        if who is None:
            return login_redirect(request)
        try:
            form = await checked_form(request)
        except err.CatalogueError as exc:
            return error_page(request, who, exc)
        fields, problems = form_to_fields(form)
        values = {k: str(v) for k, v in form.items()}
        try:
            data = DatasetCreate.model_validate(fields)
        except ValidationError as exc:
            problems = {**_field_problems(exc), **problems}
        if problems:
            return form_page(request, who, db, values, problems, status=422)
        try:
            dataset = await run_in_threadpool(service.create_dataset, db, who, data)
        except err.CatalogueError as exc:
            return form_page(request, who, db, values, {exc.context.get("field", "form"): exc.message}, status=422)
        return RedirectResponse(f"/catalogue/ui/datasets/{dataset.id}", status_code=303)

    def values_of(d: Any) -> dict[str, Any]:
        return {
            **{k: ("" if getattr(d, k) is None else str(getattr(d, k))) for k in (
                "title", "description", "format", "size_bytes", "checksum_sha256", "license", "version", "access",
                "doi", "handle", "location", "path")},
            "storage_target": d.storage_target.name if d.storage_target else "",
            "location_mode": "url" if d.location else ("target" if d.storage_target else "none"),
            "keywords": ", ".join(d.keywords),
            "readers": ", ".join(d.readers or []),
            "creators": "\n".join(_creator_line(c.name, c.orcid, c.affiliation) for c in d.creators),
            "metadata": json.dumps(d.metadata, indent=2, ensure_ascii=False) if d.metadata else "",
        }

    @router.get("/catalogue/ui/datasets/{dataset_id}/edit", response_class=HTMLResponse, response_model=None)
    def edit_form(dataset_id: str, request: Request, db: Db) -> Response:
        who = principal(request, db)
        if who is None:
            return login_redirect(request)
        try:
            dataset = service.get_dataset(db, who, dataset_id)
            if not service.can_write(dataset.owner_id, who):
                raise err.NotAllowed(f"only the owner ({dataset.owner_name}) or an admin may change this dataset")
        except err.CatalogueError as exc:
            return error_page(request, who, exc)
        return form_page(request, who, db, values_of(service.to_out(dataset, who)), {}, dataset_id=dataset_id,
                         revision=dataset.revision)

    @router.post("/catalogue/ui/datasets/{dataset_id}/edit", response_class=HTMLResponse, response_model=None)
    async def edit(dataset_id: str, request: Request, db: Db) -> Response:
        who = principal(request, db)
        if who is None:
            return login_redirect(request)
        try:
            form = await checked_form(request)
        except err.CatalogueError as exc:
            return error_page(request, who, exc)
        fields, problems = form_to_fields(form)
        values = {k: str(v) for k, v in form.items()}
        revision = str(form.get("expected_revision", "")) or None
        try:
            data = DatasetUpdate.model_validate({**fields, "expected_revision": revision})
        except ValidationError as exc:
            problems = {**_field_problems(exc), **problems}
        if problems:
            return form_page(request, who, db, values, problems, status=422, dataset_id=dataset_id,
                             revision=int(revision) if revision and revision.isdigit() else None)
        try:
            await run_in_threadpool(service.update_dataset, db, who, dataset_id, data)
        except (err.DatasetNotFound, err.NotAllowed) as exc:
            return error_page(request, who, exc)
        except err.CatalogueError as exc:
            return form_page(request, who, db, values, {exc.context.get("field", "form"): exc.message},
                             status=_status_of(exc), dataset_id=dataset_id, message=exc.hint,
                             revision=int(revision) if revision and revision.isdigit() else None)
        return RedirectResponse(f"/catalogue/ui/datasets/{dataset_id}", status_code=303)

    @router.post("/catalogue/ui/datasets/{dataset_id}/delete", response_model=None)
    async def remove(dataset_id: str, request: Request, db: Db) -> Response:
        who = principal(request, db)
        if who is None:
            return login_redirect(request)
        try:
            await checked_form(request)
            await run_in_threadpool(service.delete_dataset, db, who, dataset_id)
        except err.CatalogueError as exc:
            return error_page(request, who, exc)
        return RedirectResponse("/catalogue", status_code=303)

    @router.get("/catalogue/ui/login", response_class=HTMLResponse)
    def login_form(request: Request, db: Db) -> HTMLResponse:
        return render(request, "login.html", principal(request, db), next=_safe_next(request.query_params.get("next")))

    @router.post("/catalogue/ui/login", response_class=HTMLResponse, response_model=None)
    async def login(request: Request, db: Db) -> Response:
        try:
            form = await checked_form(request)
        except err.CatalogueError as exc:
            return render(request, "login.html", None, status=403, problem=exc.message, next="/catalogue")
        token = str(form.get("token", "")).strip()
        target = _safe_next(str(form.get("next", "")))
        try:
            who = await run_in_threadpool(authenticate, db, token)
        except HpcwaasError as exc:
            return render(request, "login.html", None, status=401, problem=exc.message, next=target)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(TOKEN_COOKIE, token, path=COOKIE_PATH, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        del who
        return response

    @router.post("/catalogue/ui/logout", response_model=None)
    async def logout(request: Request) -> Response:
        try:
            await checked_form(request)
        except err.CatalogueError as exc:
            return error_page(request, None, exc)
        response = RedirectResponse("/catalogue", status_code=303)
        response.delete_cookie(TOKEN_COOKIE, path=COOKIE_PATH)
        return response

    @router.get("/catalogue/ui/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise err.DatasetNotFound(f"no static file {name!r}")
        return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                        headers={"Cache-Control": "public, max-age=3600"})

    return router
