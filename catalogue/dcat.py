"""DCAT 3 as JSON-LD, with schema.org Dataset terms, so other catalogues can harvest ours.

Each dataset is both a ``dcat:Dataset`` and a ``schema:Dataset``; its location becomes a
``dcat:Distribution`` / ``schema:DataDownload`` with size, media type and an SPDX checksum.
Access rights use the EU access-right vocabulary; persistent identifiers become resolvable IRIs.
The whole catalogue is streamed (``iter_catalogue``) so a large one never sits in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from catalogue.models import Dataset

CONTEXT: dict[str, Any] = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "schema": "https://schema.org/",
    "spdx": "http://spdx.org/rdf/terms#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "adms": "http://www.w3.org/ns/adms#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
}
ACCESS_RIGHTS = {
    "public": "http://publications.europa.eu/resource/authority/access-right/PUBLIC",
    "restricted": "http://publications.europa.eu/resource/authority/access-right/RESTRICTED",
}
_SPDX_LICENSES = "https://spdx.org/licenses/"


def _iri(value: str) -> dict[str, str]:
    return {"@id": value}


def _datetime(value: Any) -> dict[str, str]:
    return {"@value": value.isoformat(), "@type": "xsd:dateTime"}


def _license(value: str) -> dict[str, str]:
    return _iri(value if value.startswith(("http://", "https://")) else _SPDX_LICENSES + value)


def _creator(creator: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = {"@type": ["foaf:Agent", "schema:Person"], "foaf:name": creator["name"],
                            "schema:name": creator["name"]}
    if creator.get("orcid"):
        node["@id"] = f"https://orcid.org/{creator['orcid']}"
    if creator.get("affiliation"):
        node["schema:affiliation"] = {"@type": "schema:Organization", "schema:name": creator["affiliation"]}
    return node


def _distribution(dataset: Dataset, landing: str) -> dict[str, Any] | None:
    if dataset.protocol is None:
        return None
    node: dict[str, Any] = {"@id": f"{landing}#distribution", "@type": ["dcat:Distribution", "schema:DataDownload"],
                            "dcat:accessURL": _iri(f"{landing}/resolve")}
    if dataset.location_url and dataset.protocol == "https":
        node["dcat:downloadURL"] = _iri(dataset.location_url)
        node["schema:contentUrl"] = dataset.location_url
    if dataset.size_bytes is not None:
        node["dcat:byteSize"] = {"@value": str(dataset.size_bytes), "@type": "xsd:nonNegativeInteger"}
        node["schema:contentSize"] = f"{dataset.size_bytes} B"
    if dataset.format:
        key = "dcat:mediaType" if "/" in dataset.format else "dct:format"
        node[key] = dataset.format
        node["schema:encodingFormat"] = dataset.format
    if dataset.checksum_sha256:
        node["spdx:checksum"] = {
            "@type": "spdx:Checksum",
            "spdx:algorithm": _iri("spdx:checksumAlgorithm_sha256"),
            "spdx:checksumValue": {"@value": dataset.checksum_sha256, "@type": "xsd:hexBinary"},
        }
    if dataset.license:
        node["dct:license"] = _license(dataset.license)
    return node


def dataset_node(dataset: Dataset, base_url: str) -> dict[str, Any]:
    """One dataset as a JSON-LD node (without @context)."""
    landing = f"{base_url.rstrip('/')}/catalogue/datasets/{dataset.id}"
    node: dict[str, Any] = {
        "@id": landing,
        "@type": ["dcat:Dataset", "schema:Dataset"],
        "dct:identifier": dataset.id,
        "dct:title": dataset.title,
        "schema:name": dataset.title,
        "dct:issued": _datetime(dataset.created_at),
        "dct:modified": _datetime(dataset.modified_at),
        "schema:dateCreated": _datetime(dataset.created_at),
        "schema:dateModified": _datetime(dataset.modified_at),
        "dct:accessRights": _iri(ACCESS_RIGHTS[dataset.access]),
        "schema:isAccessibleForFree": dataset.access == "public",
        "dcat:landingPage": _iri(f"{base_url.rstrip('/')}/catalogue/ui/datasets/{dataset.id}"),
        "schema:url": f"{base_url.rstrip('/')}/catalogue/ui/datasets/{dataset.id}",
    }
    if dataset.description:
        node["dct:description"] = dataset.description
        node["schema:description"] = dataset.description
    if dataset.keywords:
        node["dcat:keyword"] = list(dataset.keywords)
        node["schema:keywords"] = list(dataset.keywords)
    if dataset.creators:
        creators = [_creator(c) for c in dataset.creators]
        node["dct:creator"] = creators
        node["schema:creator"] = creators
    if dataset.license:
        node["dct:license"] = _license(dataset.license)
        node["schema:license"] = _license(dataset.license)
    if dataset.version:
        node["dcat:version"] = dataset.version
        node["schema:version"] = dataset.version
    identifiers = []
    if dataset.doi:
        identifiers.append(f"https://doi.org/{dataset.doi}")
    if dataset.handle:
        identifiers.append(f"https://hdl.handle.net/{dataset.handle}")
    if identifiers:
        node["adms:identifier"] = [{"@type": "adms:Identifier", "skos:notation": i} for i in identifiers]
        node["schema:identifier"] = identifiers
        node["schema:sameAs"] = [_iri(i) for i in identifiers]
    distribution = _distribution(dataset, landing)
    if distribution is not None:
        node["dcat:distribution"] = [distribution]
        node["schema:distribution"] = [distribution]
    return node


def dataset_document(dataset: Dataset, base_url: str) -> dict[str, Any]:
    """One dataset as a JSON-LD document."""
    return {"@context": CONTEXT, **dataset_node(dataset, base_url)}


def iter_catalogue(datasets: Iterable[Dataset], base_url: str, title: str = "hpcwaas data catalogue") -> Iterator[str]:
    """The catalogue as a JSON-LD document, in pieces of text (stream them)."""
    head = {
        "@context": CONTEXT,
        "@id": f"{base_url.rstrip('/')}/catalogue/dcat",
        "@type": ["dcat:Catalog", "schema:DataCatalog"],
        "dct:title": title,
        "schema:name": title,
        "foaf:homepage": _iri(f"{base_url.rstrip('/')}/catalogue"),
    }
    yield json.dumps(head)[:-1] + ', "dcat:dataset": ['
    for number, dataset in enumerate(datasets):
        yield ("," if number else "") + json.dumps(dataset_node(dataset, base_url))
    yield "]}"
