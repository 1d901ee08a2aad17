"""Unknown query parameters are refused, like unknown body fields: ``?limt=5`` is a 422 naming
``limt``, not a listing of the default 100 (a typo must not silently change what is asked).
This holds for the API (the operations of the OpenAPI document), not for the web pages."""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

_KNOWN: dict[int, frozenset[str] | None] = {}  # by id(route): routes live as long as the app


def _known(route: APIRoute) -> frozenset[str] | None:
    """The query parameters ``route`` takes; None when a model takes them (it refuses extras itself)."""
    if id(route) in _KNOWN:
        return _KNOWN[id(route)]
    names: set[str] = set()
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        pending.extend(dependant.dependencies)
        for field in dependant.query_params:
            annotation = field.field_info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                _KNOWN[id(route)] = None
                return None
            names.add(field.alias)
    _KNOWN[id(route)] = frozenset(names)
    return _KNOWN[id(route)]


async def refuse_unknown_query(request: Request) -> None:
    """A dependency of every route (async: it does no I/O, so no thread is taken for it)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.include_in_schema:
        return  # the web pages read their forms themselves
    known = _known(route)
    if known is None:
        return
    unknown = sorted({name for name in request.query_params if name not in known})
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise RequestValidationError([
            {"loc": ("query", name or "(empty name)"), "type": "extra_forbidden",
             "msg": f"unknown query parameter; this operation takes: {takes}", "input": request.query_params[name]}
            for name in unknown])
