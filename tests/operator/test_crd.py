"""The CRD in crds/ is generated from the models and describes every field."""

from __future__ import annotations

from typing import Any

import yaml
from mlperf_operator import crd


def test_crds_dir_matches_models() -> None:
    assert crd.CRD_PATH.read_text() == crd.render(), "crds/ drifted from the models: run `make crds`"


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, child in node.get("properties", {}).items():
        where = f"{path}.{name}"
        if not child.get("description"):
            missing.append(where)
        missing += _undescribed(child, where)
    if "items" in node:
        missing += _undescribed(node["items"], f"{path}[]")
    return missing


def test_every_spec_and_status_field_has_a_description() -> None:
    schema = yaml.safe_load(crd.render())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _undescribed(schema["properties"]["spec"], "spec") == []
    assert _undescribed(schema["properties"]["status"], "status") == []


def test_schema_is_structural() -> None:
    text = crd.render()
    for forbidden in ("$ref", "anyOf", "$defs", "title:"):
        assert forbidden not in text


def test_suite_rules_cover_every_benchmark_and_category() -> None:
    rules = crd.suite_rules()
    assert any("3d-unet" in r["rule"] and "['Offline']" in r["rule"] for r in rules)
    assert any(r.get("fieldPath") == ".configVer" for r in rules)
