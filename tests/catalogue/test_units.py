"""Unit tests: validation of entries, search-text escaping, highlighting and DCAT, without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from catalogue import dcat, search
from catalogue.errors import InvalidQuery
from catalogue.models import Dataset
from catalogue.schemas import DatasetCreate, DatasetFilters, DatasetUpdate, StorageTargetCreate, join_under


@pytest.mark.parametrize("url", ["sftp://juwels/p/scratch/a.nc", "https://data.example.org/x.csv?v=2",
                                 "file:///data/x", "SFTP://Site/x/y/"])
def test_good_locations_are_normalised(url: str) -> None:
    d = DatasetCreate(title="t", location=url)
    assert d.location is not None and d.location.split("://")[0] == url.split("://")[0].lower()
    assert not d.location.endswith("/")


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://host/x", "scheme"), ("sftp:///x", "host"), ("sftp://u:p@h/x", "user name"), ("sftp://h/a/../b", ".."),
    ("file://host/x", "no host"), ("https://h/x#frag", "fragment"), ("sftp://h/x?y=1", "query"),
    ("https://h", "path"), ("sftp://h/a b", "spaces"), ("sftp://h:99999/x", "port"),
])
def test_bad_locations_say_why(url: str, why: str) -> None:
    with pytest.raises(ValidationError) as info:
        DatasetCreate(title="t", location=url)
    assert info.value.errors()[0]["loc"] == ("location",) and why in str(info.value)


def test_location_is_a_url_or_a_target_and_path() -> None:
    with pytest.raises(ValidationError, match="not both"):
        DatasetCreate(title="t", location="file:///x", storage_target="s", path="a")
    with pytest.raises(ValidationError, match="go together"):
        DatasetCreate(title="t", storage_target="s")
    for bad in ("/abs", "a/../b", "a//b", "./a", ""):
        with pytest.raises(ValidationError):
            DatasetCreate(title="t", storage_target="s", path=bad)
    assert DatasetCreate(title="t", storage_target="s", path="runs/2024/").path == "runs/2024"


def test_join_under_refuses_to_leave_the_base() -> None:
    assert join_under("/gpfs/p", "a/b.nc") == "/gpfs/p/a/b.nc"
    for bad in ("../x", "a/../../x"):
        with pytest.raises(ValueError, match="leaves"):
            join_under("/gpfs/p", bad)


def test_keywords_checksum_and_defaults() -> None:
    d = DatasetCreate(title="  Title  ", keywords=["Ocean", " ocean ", "Sea  Ice"],
                      checksum_sha256="sha256:" + "AB" * 32)
    assert d.title == "Title" and d.keywords == ["ocean", "sea ice"] and d.checksum_sha256 == "ab" * 32
    assert d.access == "restricted"  # publishing is deliberate


def test_update_cannot_clear_required_fields_and_metadata_is_bounded() -> None:
    with pytest.raises(ValidationError, match="cannot be cleared"):
        DatasetUpdate(title=None)
    with pytest.raises(ValidationError, match="KiB"):
        DatasetCreate(title="t", metadata={"k": "x" * 70_000})
    with pytest.raises(ValidationError):
        StorageTargetCreate(name="Bad Name", site="h", protocol="sftp", base_path="/x")
    with pytest.raises(ValidationError):
        DatasetFilters.model_validate({"limit": 0})


@pytest.mark.parametrize(("text", "terms"), [
    ("Ocean temperature", ["ocean", "temperature"]),
    ('"; DROP TABLE x; --', ["drop", "table", "x"]),
    ("NEAR(a b) OR c*", ["near", "a", "b", "or", "c"]),
    ("foo_bar-baz", ["foo", "bar", "baz"]),
    ("Ünïcödé 海洋", ["ünïcödé", "海洋"]),
])
def test_search_text_becomes_words(text: str, terms: list[str]) -> None:
    assert search.terms_of(text) == terms


@pytest.mark.parametrize("text", ["", "***", "'\"();--", "   "])
def test_search_text_without_words_is_invalid(text: str) -> None:
    with pytest.raises(InvalidQuery) as info:
        search.terms_of(text)
    assert info.value.context["field"] == "q"


def test_too_many_words_is_invalid() -> None:
    with pytest.raises(InvalidQuery, match="more than"):
        search.terms_of(" ".join(f"w{n}" for n in range(20)))


def test_query_syntax_is_quoted() -> None:
    assert search.fts5_query(["ocean", 'x"y']) == '"ocean"* AND "x""y"*'
    assert search.tsquery(["ocean", "o'k", "a\\b"]) == "'ocean':* & 'o''k':* & 'a\\\\b':*"


def test_highlight_escapes_and_marks_word_prefixes() -> None:
    out = search.highlight("Temp <b>&</b> temperatures attempt", ["temp"])
    assert out == "<mark>Temp</mark> &lt;b&gt;&amp;&lt;/b&gt; <mark>temperatures</mark> attempt"
    long = "x " * 300 + "the ocean is deep " + "y " * 300
    snippet = search.snippet(long, ["ocean"])
    assert "<mark>ocean</mark>" in snippet and snippet.startswith("…") and snippet.endswith("…")


def test_dcat_document_of_a_dataset() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    d = Dataset(id="a" * 32, title="T", description="D", keywords=["k"], access="public", protocol="https",
                location_url="https://h/x.csv", size_bytes=10, checksum_sha256="c" * 64, format="text/csv",
                license="CC-BY-4.0", creators=[{"name": "N", "orcid": "0000-0002-1825-0097"}], doi="10.1/x",
                created_at=now, modified_at=now, version="2")
    doc = dcat.dataset_document(d, "https://gw.example.org/")
    assert doc["@id"] == "https://gw.example.org/catalogue/datasets/" + "a" * 32
    assert doc["@type"] == ["dcat:Dataset", "schema:Dataset"]
    assert doc["dct:license"] == {"@id": "https://spdx.org/licenses/CC-BY-4.0"}
    dist = doc["dcat:distribution"][0]
    assert dist["dcat:downloadURL"] == {"@id": "https://h/x.csv"} and dist["dcat:mediaType"] == "text/csv"
    assert dist["spdx:checksum"]["spdx:checksumValue"]["@value"] == "c" * 64
    assert doc["schema:identifier"] == ["https://doi.org/10.1/x"]
    assert doc["dct:accessRights"]["@id"].endswith("/PUBLIC")
