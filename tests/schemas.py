"""Offline JSON-schema validation of the STAC item and the GeoParquet ``geo`` metadata: the
published schemas copied in ``../shared/reference/schemas`` (see its PROVENANCE.md), each served
at its web address by a ``referencing`` registry, with GeoJSON from pystac and PROJJSON from
pyproj. Tests skip when ``../shared`` is absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "schemas"
STAC = "https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
PROJJSON = "https://proj.org/schemas/v0.7/projjson.schema.json"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _schemas() -> dict[str, dict[str, Any]]:
    """Web address -> schema document, from local files only."""
    if not SCHEMAS.is_dir():
        pytest.skip(f"offline schemas not available: {SCHEMAS}")
    jsonschema = pytest.importorskip("jsonschema")  # noqa: F841 - the validator itself
    pystac = pytest.importorskip("pystac")
    import pyproj

    docs = {STAC + p.name: _load(p) for p in (SCHEMAS / "stac-1.0.0").glob("*.json")}
    docs["https://stac-extensions.github.io/projection/v2.0.0/schema.json"] = _load(
        SCHEMAS / "projection-v2.0.0.json")
    docs["https://stac-extensions.github.io/raster/v1.1.0/schema.json"] = _load(
        SCHEMAS / "raster-v1.1.0.json")
    # PROVENANCE.md: the commit that was released as v2.0.0, before its version strings were
    # bumped; the release differs only there, so the copy is served with them bumped
    text = (SCHEMAS / "classification-2022-12.json").read_text(encoding="utf-8")
    docs[CLASSIFICATION] = json.loads(text.replace("/classification/v1.1.0/",
                                                   "/classification/v2.0.0/"))
    geojson = Path(pystac.__file__).parent / "validation" / "jsonschemas" / "geojson"
    if not (geojson / "Feature.json").is_file():
        pytest.skip(f"pystac {pystac.__version__} ships no GeoJSON schemas")
    for name in ("Feature.json", "Geometry.json"):
        docs[f"https://geojson.org/schema/{name}"] = _load(geojson / name)
    projjson = Path(pyproj.datadir.get_data_dir()) / "projjson.schema.json"
    docs[PROJJSON] = _load(projjson)
    docs["geoparquet-1.1.0"] = _load(SCHEMAS / "geoparquet-1.1.0-schema.json")
    return docs


def _validator(schema_key: str) -> Any:
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    docs = _schemas()
    registry = Registry().with_resources(
        (url, Resource.from_contents(doc, default_specification=DRAFT7))
        for url, doc in docs.items())
    schema = docs[schema_key]
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)


def stac_item_errors(item: dict[str, Any]) -> list[str]:
    """Every schema error of a STAC 1.0.0 item: the core item schema and each extension it
    declares (as stac-validator checks), as ``schema: path: message`` lines."""
    errors = []
    for url in [STAC + "item.json", *item.get("stac_extensions", [])]:
        validator = _validator(url)
        for err in validator.iter_errors(item):
            path = "/".join(str(p) for p in err.absolute_path)
            errors.append(f"{url.rsplit('/', 3)[-3]}: {path}: {err.message[:200]}")
    return errors


def geoparquet_errors(geo: dict[str, Any]) -> list[str]:
    """Schema errors of a GeoParquet ``geo`` metadata document (GeoParquet 1.1.0)."""
    validator = _validator("geoparquet-1.1.0")
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
            for e in validator.iter_errors(geo)]
