"""Rules for the text people type, each one regular expression.

The request schemas check values with these, and publish the same expression as the field's
``pattern`` in the OpenAPI document (:func:`published`), so that what the document calls valid is
what the gateway accepts (schemathesis checks both ways). Values are trimmed of surrounding
whitespace where a rule says so; the expressions allow that whitespace.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

_C = r"\x00-\x1f\x7f"  # C0 control characters and DEL
# Whitespace as Python's str.strip() sees it, spelled out: regex engines disagree on what \s is
# (ECMA-262's, which schema tools use, leaves out U+0085 and U+001C..U+001F).
_WS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: Whitespace, as a character class.
WS = rf"[{_WS}]"
#: Anything but whitespace.
NOT_WS = rf"[^{_WS}]"
#: One line of text, possibly empty, trimmed: no control character inside.
ONE_LINE = rf"^{WS}*(?:[^{_C}]*[^{_WS}{_C}])?{WS}*$"
#: One line with something in it besides spaces.
NON_BLANK_LINE = rf"^{WS}*[^{_C}]*[^{_WS}{_C}]{WS}*$"
#: Text over several lines: tabs and line ends allowed, no other control character.
MULTI_LINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
#: A host or site name (letters, digits, '-', labels joined by '.'), trimmed.
HOST = rf"^{WS}*[A-Za-z0-9][A-Za-z0-9-]{{0,62}}(?:\.[A-Za-z0-9][A-Za-z0-9-]{{0,62}})*{WS}*$"
#: A SHA-256 checksum: 64 hex digits, optionally prefixed ``sha256:``, trimmed.
CHECKSUM = rf"^{WS}*(?:[Ss][Hh][Aa]256:)?[0-9A-Fa-f]{{64}}{WS}*$"

# A path segment: no '/', no control character, and neither '.' nor '..'.
_N, _ND = rf"[^/{_C}]", rf"[^/.{_C}]"
_SEGMENT = rf"(?:{_ND}{_N}*|\.{_ND}{_N}*|\.\.{_N}+)"
#: An absolute POSIX path without '.', '..' or empty segments (repeated and trailing '/' allowed).
ABSOLUTE_PATH = rf"^/+(?:{_SEGMENT}(?:/{_SEGMENT})*/*)?$"
#: A relative POSIX path of at least one segment, without '.', '..' or empty segments.
RELATIVE_PATH = rf"^{_SEGMENT}(?:/{_SEGMENT})*/*$"
# A dataset URL (sftp://site/path, https://host/path?query, file:///path): no spaces, credentials
# or fragment, a path without '.', '..' or empty segments, a query for https only.
_U, _UD = rf"[^/?# {_C}]", rf"[^/.?# {_C}]"
_URL_SEGMENT = rf"(?:{_UD}{_U}*|\.{_UD}{_U}*|\.\.{_U}+)"
_URL_PATH = rf"(?://+|/+{_URL_SEGMENT}(?:/{_URL_SEGMENT})*/*)"
_HOST_NAME = r"[A-Za-z0-9][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*"
_PORT = r"(?::0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])?)?"
#: A dataset location URL, trimmed.
LOCATION_URL = (rf"^{WS}*(?:[Ff][Ii][Ll][Ee]://(?:localhost)?{_URL_PATH}\??"
                rf"|[Ss][Ff][Tt][Pp]://{_HOST_NAME}{_PORT}{_URL_PATH}\??"
                rf"|[Hh][Tt][Tt][Pp][Ss]://{_HOST_NAME}{_PORT}{_URL_PATH}(?:\?[^# {_C}]*)?)#?{WS}*$")

# A mirror's path: '' and '.' segments are dropped (so '' is the base itself); '..' is refused.
_M, _MD = r"[^/\x00-\x1f]", r"[^/.\x00-\x1f]"
_MIRROR_SEGMENT = rf"(?:{_MD}{_M}*|\.(?:{_MD}{_M}*)?|\.\.{_M}+)"
#: A relative path in a mirror: no leading '/', no '..' segment, no C0 control character.
MIRROR_PATH = rf"^(?:{_MIRROR_SEGMENT}(?:/{_MIRROR_SEGMENT}?)*)?$"
#: Workflow input text (keys and values, at any depth): tabs and line ends allowed, no other
#: control character (Unicode's Cc, C1 included).
INPUT_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"


#: The largest integer a request may carry: the largest JSON carries exactly (2^53 - 1; beyond
#: it, clients in JavaScript round, and the databases' 64-bit integers overflow a little later).
MAX_INT = 2**53 - 1


def published(pattern: str) -> Any:
    """A field annotation that publishes ``pattern`` in the JSON Schema without making pydantic
    check it (the field's own validator checks it, with a message a person understands)."""
    return Field(json_schema_extra={"pattern": pattern})


def matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None
