"""The CRD has one source (crd.py) and every copy matches it byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from eventstore.settings import (
    AGGREGATE_NAME_PATTERN,
    AGGREGATE_TARGET_PATTERN,
    ProjectionSettings,
    StoreSettings,
)
from eventstore_operator import crd

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("copy", crd.CRD_COPIES, ids=str)
def test_every_copy_is_byte_identical(copy: Path) -> None:
    path = REPO / copy
    assert path.exists(), f"{copy} is missing: run python -m eventstore_operator.crd --write"
    assert path.read_text(encoding="utf-8") == crd.render_crd(), (
        f"{copy} drifted from operator/eventstore_operator/crd.py: "
        "run python -m eventstore_operator.crd --write"
    )


def test_check_mode_detects_drift(tmp_path: Path) -> None:
    assert crd.main(["--root", str(tmp_path), "--write"]) == 0
    assert crd.main(["--root", str(tmp_path), "--check"]) == 0
    (tmp_path / crd.CRD_COPIES[0]).write_text(crd.render_crd() + "# edited\n")
    assert crd.main(["--root", str(tmp_path), "--check"]) == 1


def _version() -> dict[str, Any]:
    (version,) = crd.build_crd()["spec"]["versions"]
    assert isinstance(version, dict)
    return version


def _walk(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(schema, dict):
        out.append((path, schema))
        for key, sub in (schema.get("properties") or {}).items():
            out += _walk(sub, f"{path}.{key}")
        if "items" in schema:
            out += _walk(schema["items"], f"{path}[]")
    return out


def test_crd_identity() -> None:
    doc = yaml.safe_load(crd.render_crd())
    assert doc["metadata"]["name"] == "eventstores.eventstore.io"
    assert doc["spec"]["scope"] == "Namespaced"
    assert doc["spec"]["names"]["kind"] == "EventStore"
    version = _version()
    assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Replicas"] == ".spec.replicas"
    assert columns["Config-Hash"] == ".status.configHash"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_no_unknown_fields_preserved_in_spec() -> None:
    spec = _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in _walk(spec, "spec"):
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        if node.get("type") == "object":
            # Closed: named properties, or a map whose values have a schema of their own.
            typed_map = isinstance(node.get("additionalProperties"), dict)
            assert "properties" in node or typed_map, \
                f"{path} is an object without a closed schema"


def test_settings_bounds_come_from_the_settings_models() -> None:
    props = _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    settings = props["settings"]["properties"]
    assert settings["snapshotFrequency"]["minimum"] == 1
    for key, (model, field) in crd.SETTINGS_FIELDS.items():
        if key == "aggregates":
            continue  # a map, not a number: see test_crd_aggregates_follow_the_settings_model
        meta = {type(m).__name__: m for m in model.model_fields[field].metadata}
        assert settings[key]["minimum"] == meta["Ge"].ge
        assert settings[key]["maximum"] == meta["Le"].le
    assert StoreSettings.model_fields.keys() | ProjectionSettings.model_fields.keys() >= {
        f for _, f in crd.SETTINGS_FIELDS.values()
    }


def test_defaults_and_rules() -> None:
    spec = _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["replicas"]["default"] == 3
    assert spec["replicas"]["x-kubernetes-validations"][0]["rule"] == "self == 1 || self >= 3"
    assert spec["storage"]["properties"]["size"]["default"] == "100Gi"
    rules = [r["rule"] for r in spec["storage"]["x-kubernetes-validations"]]
    assert any("quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0" in r for r in rules)
    assert any("storageClassName" in r for r in rules)
    # No default for the store image: the API server would freeze it into every
    # EventStore, and upgrading the operator could not roll the stores (issue 13 #5).
    assert "default" not in spec["image"]
    assert spec["postgres"]["properties"]["image"]["default"] == "postgres:16"
    assert spec["mongodb"]["properties"]["image"]["default"] == "mongo:7"


def test_status_conditions_carry_observed_generation() -> None:
    status = _version()["schema"]["openAPIV3Schema"]["properties"]["status"]
    item = status["properties"]["conditions"]["items"]
    assert "observedGeneration" in item["properties"]
    assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_crd_aggregates_follow_the_settings_model() -> None:
    """The CRD checks aggregate names and targets with the settings model's own patterns."""
    props = _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    aggregates = props["settings"]["properties"]["aggregates"]
    assert aggregates["additionalProperties"]["pattern"] == AGGREGATE_TARGET_PATTERN
    (rule,) = aggregates["x-kubernetes-validations"]
    assert AGGREGATE_NAME_PATTERN in rule["rule"]
