"""Each published text rule accepts exactly what its validator accepts: the OpenAPI document's
``pattern`` and the gateway's answer never disagree (checked on generated strings made of the
characters that matter: separators, dots, spaces, line ends, C0 and C1 controls, wide letters)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from catalogue import schemas as catalogue
from gateway.schemas import mirrors
from hpcwaas import text

ALPHABET = st.sampled_from([*list("a/. -:\t\n\r\x00\x1c\x7f\x85\xa0Kİ0fF"), "sha256:", "\u2028"])
STRINGS = st.lists(ALPHABET, max_size=12).map("".join)
URLS = st.tuples(st.sampled_from(["sftp://", "SFTP://", "https://", "file://", "file:///", "ftp://", " http://"]),
                 st.lists(st.sampled_from([*list("ab/.?#@:8 -\x00"), "localhost", "65536", "[::1]"]), max_size=8)
                 .map("".join)).map("".join)
HEX = st.text("0123456789abcdefABCDEF", min_size=63, max_size=65).map(lambda h: f" sha256:{h}")

RULES: list[tuple[str, Any, str]] = [
    ("title", catalogue.Title, text.NON_BLANK_LINE),
    ("affiliation", catalogue.Optional200, text.ONE_LINE),
    ("description", catalogue.Description, text.MULTI_LINE),
    ("host", catalogue.Host, text.HOST),
    ("checksum", catalogue.Checksum, text.CHECKSUM),
    ("absolute path", catalogue.AbsolutePath, text.ABSOLUTE_PATH),
    ("relative path", catalogue.RelativePath, text.RELATIVE_PATH),
    ("mirror path", mirrors.RelativePath, text.MIRROR_PATH),
    ("location", catalogue.LocationUrl, text.LOCATION_URL),
]


def _accepts(kind: Any) -> Callable[[str], bool]:
    adapter = TypeAdapter(kind)

    def accepts(value: str) -> bool:
        try:
            adapter.validate_python(value)
            return True
        except ValidationError:
            return False
    return accepts


@pytest.mark.parametrize(("name", "kind", "pattern"), RULES, ids=[r[0] for r in RULES])
def test_the_published_pattern_is_the_rule(name: str, kind: Any, pattern: str) -> None:
    accepts = _accepts(kind)
    schema = TypeAdapter(kind).json_schema()
    assert schema["pattern"] == pattern, schema

    low, high = schema.get("minLength", 0), schema.get("maxLength", 10**6)

    def published(value: str) -> bool:
        return low <= len(value) <= high and text.matches(pattern, value)

    @settings(max_examples=1000, deadline=None, database=None)
    @given(value=STRINGS | HEX | URLS)
    def agree(value: str) -> None:
        assert accepts(value) == published(value), (name, value)

    agree()
