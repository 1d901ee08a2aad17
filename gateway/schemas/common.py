"""Shared field types and the error body every endpoint uses."""

from __future__ import annotations

import json
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Union

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    TypeAdapter,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from typing_extensions import TypeAliasType

from hpcwaas.settings import get_settings
from hpcwaas.text import INPUT_TEXT, MAX_INT  # noqa: F401 - MAX_INT is the routes' bound

Username = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{1,63}$"),
    Field(description="2-64 characters: lower-case letters, digits, '_', '.', '-'; starts with a letter."),
]
SiteName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$"),
    Field(description="1-63 characters: lower-case letters, digits and '-'; starts with a letter."),
]
Login = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$"),
    Field(description="A POSIX user name on the site."),
]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.@:-]{0,99}$")]
def _iso_time(value: Any) -> Any:
    """Only ISO 8601 text (pydantic would also read a number as seconds since 1970)."""
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError("give a date and time with its zone, e.g. 2026-12-06T10:00:00Z") from None
    return value


#: A moment in a query: ISO 8601 with a time zone (what the OpenAPI ``date-time`` format says).
Moment = Annotated[AwareDatetime, BeforeValidator(_iso_time)]


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    """Every string in ``value`` (keys too) with where it is, e.g. ``inputs.files[2]``."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in [(f"{path} (a key)", str(k)),
                                                              *_strings(v, f"{path}.{k}")]]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _strings(v, f"{path}[{i}]")]
    return []


def _checked_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Workflow inputs as they arrive: no control characters (they would reach paths, the database
    and the site), and within the operator's size limit (HPCWAAS_MAX_INPUT_BYTES)."""
    for path, text in _strings(inputs, "inputs"):
        bad = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
        if bad is not None:
            raise ValueError(f"{path} contains the control character U+{ord(bad):04X}")
    limit = get_settings().max_input_bytes
    size = len(json.dumps(inputs, default=str).encode())
    if size > limit:
        raise ValueError(f"the inputs are {size} bytes, more than this gateway takes ({limit}); pass large "
                         "data as a catalogue dataset")
    return inputs


_InputText = Annotated[str, StringConstraints(pattern=INPUT_TEXT)]
#: A workflow input value as the OpenAPI document describes it: JSON whose strings (keys too, at
#: any depth) hold no control character but tabs and line ends.
# (Only its JSON Schema is used; mypy cannot follow the recursion through a runtime alias.)
InputValue = TypeAliasType(  # type: ignore[misc]
    "InputValue",
    Union[_InputText, int, float, bool, list["InputValue"], dict[str, "InputValue"], None],  # type: ignore[misc]  # noqa: UP007
)


class _InputsSchema:
    """Publishes the inputs' rule (what ``_checked_inputs`` checks, but the total size)."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        top = handler(TypeAdapter(dict[str, InputValue]).core_schema)
        top["propertyNames"] = {"pattern": INPUT_TEXT}
        value = handler.resolve_ref_schema(top["additionalProperties"])
        for variant in value["anyOf"]:
            if variant.get("type") == "object":
                variant["propertyNames"] = {"pattern": INPUT_TEXT}
        return top


#: Workflow inputs of a request, checked when they arrive (control characters, size).
Inputs = Annotated[dict[str, Any], AfterValidator(_checked_inputs), _InputsSchema]


class RequestModel(BaseModel):
    """A request body: a field it does not know is refused (422 naming it), never ignored."""

    model_config = ConfigDict(extra="forbid")


class ORMModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorInfo(BaseModel):
    code: str = Field(description="A stable machine-readable code, e.g. not_found.")
    message: str = Field(description="What went wrong, for a person.")
    hint: str | None = Field(default=None, description="What to do next.")
    details: dict[str, Any] | list[Any] | None = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    """The one error shape of the whole API."""

    error: ErrorInfo
