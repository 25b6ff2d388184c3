"""The EventStore CustomResourceDefinition: the one source of its schema.

`python -m eventstore_operator.crd --write` renders it into every copy listed in
`CRD_COPIES` (manifests/ and the chart's crds/), and the chart's values.schema.json
(whose eventstore.spec is this spec schema); `--check` (and a unit test) fails when
a generated file drifts. The settings bounds come from `eventstore.settings`, so the API
server refuses exactly what the store pods would refuse.

Validation choices, written down because they are contracts:
- `replicas` is 1 (a single, unreplicated store for trials) or 3 or more (one pod
  can be disrupted while the others serve); 2 is refused by a CEL rule.
- Storage sizes only grow: a transition rule compares `quantity()` values (the CEL
  Kubernetes quantity library, available in every Kubernetes >= 1.29 API server,
  so "100Gi" -> "1Ti" passes and "1Ti" -> "500Gi" does not, which a string
  comparison would get wrong). Volume claim templates cannot shrink a volume.
- `storageClassName` is immutable once set (and cannot be added later): moving data
  between classes is a migration, not an edit.
- No `x-kubernetes-preserve-unknown-fields` in spec: with kubectl's default
  `--validate=strict`, unknown fields are refused, not silently pruned.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from eventstore.settings import (
    AGGREGATE_NAME_PATTERN,
    AGGREGATE_TARGET_PATTERN,
    ProjectionSettings,
    StoreSettings,
)
from eventstore_operator import names

#: spec.settings key -> (settings model, field): the seed values of the ConfigMap.
SETTINGS_FIELDS: dict[str, tuple[type[StoreSettings] | type[ProjectionSettings], str]] = {
    "snapshotFrequency": (StoreSettings, "snapshot_frequency"),
    "retentionDays": (StoreSettings, "retention_days"),
    "maxEventsPerAggregate": (StoreSettings, "max_events_per_aggregate"),
    "projectionWorkers": (ProjectionSettings, "workers"),
    "projectionBatchSize": (ProjectionSettings, "batch_size"),
    "projectionRetryAttempts": (ProjectionSettings, "retry_attempts"),
    "aggregates": (StoreSettings, "aggregates"),
}

#: Files (relative to the repository root) that hold a rendered copy of the CRD.
CRD_COPIES = (Path("manifests/crd.yaml"), Path("charts/eventstore/crds/eventstore.yaml"))

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
RESOURCE_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


def _bounds(model: type[StoreSettings] | type[ProjectionSettings], field: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for meta in model.model_fields[field].metadata:
        if hasattr(meta, "ge"):
            out["minimum"] = meta.ge
        if hasattr(meta, "le"):
            out["maximum"] = meta.le
    return out


def _settings_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, (model, field) in SETTINGS_FIELDS.items():
        info = model.model_fields[field]
        if field == "aggregates":
            props[key] = _aggregates_schema(info.description or "")
            continue
        props[key] = {
            "type": "integer",
            "description": (
                f"Seed value of {field} in the ConfigMap (default {info.default}). "
                f"{info.description} Used only when the ConfigMap is first created; "
                "afterwards edit the ConfigMap."
            ),
            **_bounds(model, field),
        }
    return {
        "type": "object",
        "description": (
            "Initial tuning settings written into the ConfigMap <name>-config when it is "
            "created. Later changes are made by editing that ConfigMap."
        ),
        "properties": props,
    }


def _aggregates_schema(description: str) -> dict[str, Any]:
    """`aggregates` (name -> "module:object"), checked as the settings model checks it."""
    return {
        "type": "object",
        "description": f"Seed value of aggregates in the ConfigMap. {description}",
        "maxProperties": 100,
        "additionalProperties": {"type": "string", "maxLength": 300,
                                 "pattern": AGGREGATE_TARGET_PATTERN},
        "x-kubernetes-validations": [{
            "rule": f"self.all(name, name.matches('{AGGREGATE_NAME_PATTERN}'))",
            "message": "aggregate names must be type names: a letter or '_' first, then "
                       "letters, digits, '_', '.' or '-' (at most 100)",
        }],
    }


def _quantity(default: str, description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "description": description,
        "default": default,
        "maxLength": 32,
        "pattern": QUANTITY_PATTERN,
    }


def _storage_schema(default_size: str, what: str) -> dict[str, Any]:
    return {
        "type": "object",
        # A complete default: the API server checks defaults against the CEL rules
        # without applying the nested defaults first.
        "default": {"size": default_size},
        "description": f"Persistent volume of each {what} pod.",
        "properties": {
            "size": _quantity(default_size, "Requested size per pod (can only grow), e.g. 100Gi."),
            "storageClassName": {
                "type": "string",
                "maxLength": 253,
                "description": "StorageClass of the volumes (immutable); cluster default if unset.",
            },
        },
        "x-kubernetes-validations": [
            {
                "rule": "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
                "message": "storage.size can only grow: volumes cannot be shrunk",
                "reason": "FieldValueForbidden",
            },
            {
                "rule": (
                    "has(self.storageClassName) == has(oldSelf.storageClassName) && "
                    "(!has(self.storageClassName) || "
                    "self.storageClassName == oldSelf.storageClassName)"
                ),
                "message": "storage.storageClassName is immutable",
                "reason": "FieldValueForbidden",
            },
        ],
    }


def _resources_schema(requests: dict[str, str], limits: dict[str, str]) -> dict[str, Any]:
    def amounts(default: dict[str, str]) -> dict[str, Any]:
        return {
            "type": "object",
            "default": default,
            "properties": {
                key: {"type": "string", "maxLength": 32, "pattern": RESOURCE_PATTERN}
                for key in ("cpu", "memory", "ephemeral-storage")
            },
        }

    return {
        "type": "object",
        "default": {},
        "description": "Container resource requests and limits.",
        "properties": {"requests": amounts(requests), "limits": amounts(limits)},
    }


def _database_schema(
    what: str, image: str, port: int, storage: str, requests: dict[str, str]
) -> dict[str, Any]:
    return {
        "type": "object",
        "default": {"mode": "InCluster"},
        "description": (
            f"The {what} backend: InCluster (a single-pod StatefulSet managed by the "
            "operator, credentials generated once) or External (host plus an existing "
            "Secret with the credentials)."
        ),
        "properties": {
            "mode": {"type": "string", "enum": ["InCluster", "External"], "default": "InCluster"},
            "image": {
                "type": "string",
                "default": image,
                "minLength": 1,
                "maxLength": 512,
                "description": (
                    "Image of the in-cluster database. A change of major version (for "
                    "example 16 to 17) is refused unless allowMajorVersionUpgrade is set."
                ),
            },
            "allowMajorVersionUpgrade": {
                "type": "boolean",
                "default": False,
                "description": (
                    "Let a change of the image's major version roll the database (after "
                    "you upgraded its data: see the README's 'Upgrading PostgreSQL or MongoDB')."
                ),
            },
            "storage": _storage_schema(storage, f"in-cluster {what}"),
            "resources": _resources_schema(requests, {"memory": "1Gi"}),
            "host": {
                "type": "string",
                "minLength": 1,
                "maxLength": 253,
                "description": "External mode: the database host name.",
            },
            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": port},
            "database": {
                "type": "string",
                "default": "eventstore",
                "minLength": 1,
                "maxLength": 63,
                "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$",
                "description": "Database name.",
            },
            "credentialsSecret": {
                "type": "object",
                "description": "External mode: an existing Secret with the credentials.",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "maxLength": 253, "pattern": DNS_LABEL_PATTERN},
                    "usernameKey": {
                        "type": "string",
                        "default": names.USERNAME_KEY,
                        "pattern": SECRET_KEY_PATTERN,
                    },
                    "passwordKey": {
                        "type": "string",
                        "default": names.PASSWORD_KEY,
                        "pattern": SECRET_KEY_PATTERN,
                    },
                },
            },
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.mode != 'External' || (has(self.host) && has(self.credentialsSecret))",
                "message": "mode External needs host and credentialsSecret",
            },
            {
                "rule": "self.mode != 'InCluster' || (!has(self.host) && !has(self.credentialsSecret))",
                "message": "host and credentialsSecret are only for mode External",
            },
        ],
    }


def _condition_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        },
    }


def _backup_target_schema(description: str, *, restoring: bool = False) -> dict[str, Any]:
    """A backup location: an existing PersistentVolumeClaim or an S3-compatible bucket.

    `restoring`: the location of spec.restore.from, whose S3 prefix is required. A backup
    defaults it to its own EventStore's name, which a restore cannot know: the default
    there would be the new EventStore's name, where no backup is."""
    s3_required = ["bucket", "credentialsSecret", *(["prefix"] if restoring else [])]
    prefix_description = (
        "Key prefix of the backups: the source's spec.backup.target.s3.prefix, or the "
        "source EventStore's name when that was unset." if restoring
        else "Key prefix; unset: this EventStore's name.")
    return {
        "type": "object",
        "description": description,
        "properties": {
            "pvc": {
                "type": "object",
                "description": "An existing PersistentVolumeClaim, mounted at /backup.",
                "required": ["claimName"],
                "properties": {
                    "claimName": {"type": "string", "maxLength": 253, "pattern": DNS_LABEL_PATTERN}
                },
            },
            "s3": {
                "type": "object",
                "description": "An S3-compatible bucket (AWS S3, MinIO, SeaweedFS, ...).",
                "required": s3_required,
                "properties": {
                    "bucket": {"type": "string", "minLength": 3, "maxLength": 63},
                    "prefix": {"type": "string", "maxLength": 512, "description": prefix_description},
                    "endpoint": {
                        "type": "string",
                        "maxLength": 512,
                        "description": "Endpoint URL; unset: AWS S3.",
                    },
                    "region": {"type": "string", "maxLength": 64},
                    "credentialsSecret": {
                        "type": "object",
                        "description": "A Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "maxLength": 253, "pattern": DNS_LABEL_PATTERN}
                        },
                    },
                },
            },
        },
        "x-kubernetes-validations": [
            {"rule": "has(self.pvc) != has(self.s3)", "message": "give exactly one of pvc and s3"}
        ],
    }


LABEL_VALUE_SCHEMA: dict[str, Any] = {"type": "string", "maxLength": 63}


def _label_selector_schema(what: str) -> dict[str, Any]:
    """metav1.LabelSelector, as the NetworkPolicy API takes it ({}: all)."""
    return {
        "type": "object",
        "description": what,
        "properties": {
            "matchLabels": {
                "type": "object",
                "maxProperties": 32,
                "additionalProperties": LABEL_VALUE_SCHEMA,
            },
            "matchExpressions": {
                "type": "array",
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string", "minLength": 1, "maxLength": 317},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "maxItems": 64, "items": LABEL_VALUE_SCHEMA},
                    },
                },
            },
        },
    }


def _network_schema() -> dict[str, Any]:
    """spec.network: who may reach the store pods' port (see builders.store_network_policy)."""
    peer = {
        "type": "object",
        "description": (
            "A NetworkPolicyPeer (networking.k8s.io/v1): podSelector and/or "
            "namespaceSelector, or ipBlock."
        ),
        "properties": {
            "podSelector": _label_selector_schema(
                "Pods (in the EventStore's namespace, or in the namespaces namespaceSelector picks)."
            ),
            "namespaceSelector": _label_selector_schema("Every pod of these namespaces ({}: all)."),
            "ipBlock": {
                "type": "object",
                "required": ["cidr"],
                "properties": {
                    "cidr": {"type": "string", "minLength": 9, "maxLength": 43},
                    "except": {
                        "type": "array",
                        "maxItems": 32,
                        "items": {"type": "string", "minLength": 9, "maxLength": 43},
                    },
                },
            },
        },
        "x-kubernetes-validations": [
            {
                "rule": "has(self.podSelector) || has(self.namespaceSelector) || has(self.ipBlock)",
                "message": "a peer needs podSelector, namespaceSelector or ipBlock",
            },
            {
                "rule": "!has(self.ipBlock) || (!has(self.podSelector) && !has(self.namespaceSelector))",
                "message": "ipBlock cannot be combined with podSelector or namespaceSelector",
            },
        ],
    }
    return {
        "type": "object",
        "description": (
            "Network access. The operator gives the store pods a NetworkPolicy: ingress to "
            "port 8080 (the API and /metrics) from allowFrom only; egress to DNS and their "
            "databases only. The databases accept only the store pods (and backup/restore "
            "Jobs) and reach nothing but DNS."
        ),
        "properties": {
            "allowFrom": {
                "type": "array",
                "maxItems": 50,
                "items": peer,
                "description": (
                    "Who may connect to the store pods' port 8080: NetworkPolicy peers. "
                    "Unset: every pod in the EventStore's namespace. An empty list: no pod (traffic "
                    "from the pod's own node, such as kubelet probes, is always allowed). "
                    "Widen with e.g. a namespaceSelector for your monitoring namespace."
                ),
            },
        },
    }


def spec_schema() -> dict[str, Any]:
    """The OpenAPI schema of `.spec`."""
    return {
        "type": "object",
        "description": "Desired state of an event store deployment.",
        "properties": {
            "image": {
                # No schema default on purpose: the API server would write it into every
                # EventStore at creation, and `helm upgrade --set image.tag=...` could then
                # never roll the stores (issue 13 #5). Unset means the operator's default.
                "type": "string",
                "minLength": 1,
                "maxLength": 512,
                "description": (
                    "Image of the store pods (runs `eventstore serve`). Unset: the operator's "
                    "own image (EVENTSTORE_DEFAULT_IMAGE, which the chart sets from image.tag), "
                    "so upgrading the operator rolls the store pods too."
                ),
            },
            "imagePullPolicy": {
                "type": "string",
                "enum": ["Always", "IfNotPresent", "Never"],
                "default": "IfNotPresent",
            },
            "replicas": {
                "type": "integer",
                "format": "int32",
                "default": 3,
                "minimum": 1,
                "maximum": 99,
                "description": "Store pods: 1, or 3 and more.",
                "x-kubernetes-validations": [
                    {
                        "rule": "self == 1 || self >= 3",
                        "message": (
                            "replicas must be 1 (a single store) or at least 3 "
                            "(so one pod can be disrupted while the others serve)"
                        ),
                    }
                ],
            },
            "storage": _storage_schema("100Gi", "store"),
            "resources": _resources_schema({"cpu": "250m", "memory": "256Mi"}, {"memory": "1Gi"}),
            "settings": _settings_schema(),
            "backup": {
                "type": "object",
                "description": (
                    "Scheduled incremental backups of the events (`eventstore backup`) by a "
                    "CronJob <name>-backup; status.lastBackup and the BackupSucceeded "
                    "condition report them. Snapshots are not backed up: the snapshotter "
                    "rebuilds them."
                ),
                "required": ["schedule", "target"],
                "properties": {
                    "schedule": {
                        "type": "string",
                        "minLength": 9,
                        "maxLength": 100,
                        "description": "Cron schedule, e.g. '0 * * * *' (hourly).",
                    },
                    "suspend": {"type": "boolean", "default": False},
                    "target": _backup_target_schema(
                        "Where the segments and their manifest go."
                    ),
                    "fullEvery": {
                        "type": "integer",
                        "format": "int32",
                        "default": 7,
                        "minimum": 1,
                        "maximum": 10000,
                        "description": (
                            "Start a new chain with a full backup once the current chain "
                            "has this many segments (the rest are incremental). Retention "
                            "removes whole chains, so this bounds what it keeps beyond "
                            "the retention window."
                        ),
                    },
                    "retention": {
                        "type": "string",
                        "pattern": "^[1-9][0-9]{0,4}[dw]$",
                        "description": (
                            "Keep every restore point of this period, e.g. '30d' or '4w' "
                            "(CloudNativePG's retentionPolicy). After each backup, the "
                            "chains no restore point in the period needs are removed; the "
                            "newest chain always stays. Unset: keep every backup."
                        ),
                    },
                },
            },
            "restore": {
                "type": "object",
                "description": (
                    "Create this EventStore from a backup (`eventstore restore`): when the "
                    "EventStore is created, a Job <name>-restore restores every segment into "
                    "the empty PostgreSQL before any store pod starts. Ignored afterwards."
                ),
                "required": ["from"],
                "properties": {
                    "from": _backup_target_schema("The backup to restore (as spec.backup.target).",
                                                  restoring=True),
                    "asOf": {
                        "type": "string",
                        "format": "date-time",
                        "description": (
                            "Restore the newest backup written at or before this time "
                            "(RFC 3339, e.g. 2026-01-31T12:00:00Z). Unset: the newest backup."
                        ),
                    },
                },
            },
            "network": _network_schema(),
            "postgres": _database_schema(
                "PostgreSQL (events)",
                names.DEFAULT_POSTGRES_IMAGE,
                names.POSTGRES_PORT,
                "10Gi",
                {"cpu": "250m", "memory": "256Mi"},
            ),
            "mongodb": _database_schema(
                "MongoDB (snapshots)",
                names.DEFAULT_MONGODB_IMAGE,
                names.MONGODB_PORT,
                "10Gi",
                {"cpu": "250m", "memory": "512Mi"},
            ),
        },
    }


def status_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "replicas": {"type": "integer", "format": "int32"},
            "readyReplicas": {"type": "integer", "format": "int32"},
            "configHash": {
                "type": "string",
                "description": "Hash of the last valid ConfigMap data, on the pod template.",
            },
            "configMapName": {
                "type": "string",
                "description": "The immutable ConfigMap the store pods mount.",
            },
            "image": {
                "type": "string",
                "description": "The image the store StatefulSet runs.",
            },
            "restore": {
                "type": "object",
                "description": "The restore this EventStore was created from (spec.restore).",
                "properties": {
                    "job": {"type": "string"},
                    "completionTime": {"type": "string", "format": "date-time"},
                },
            },
            "lastBackup": {
                "type": "object",
                "description": "The last successful backup Job (spec.backup).",
                "properties": {
                    "job": {"type": "string"},
                    "position": {
                        "type": "integer",
                        "format": "int64",
                        "description": "The highest event position the backup holds.",
                    },
                    "completionTime": {"type": "string", "format": "date-time"},
                },
            },
            "images": {
                "type": "object",
                "description": "The image each StatefulSet runs (store, postgres, mongodb).",
                "additionalProperties": {"type": "string"},
            },
            "conditions": {
                "type": "array",
                "items": _condition_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        },
    }


def build_crd() -> dict[str, Any]:
    """The CRD as a dict (apiextensions.k8s.io/v1)."""
    ready = '.status.conditions[?(@.type=="Ready")].status'
    config_valid = '.status.conditions[?(@.type=="ConfigValid")].status'
    reconciled = '.status.conditions[?(@.type=="Reconciled")].status'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": names.CRD_NAME,
            "labels": {names.LABEL_NAME: names.APP_NAME, names.LABEL_PART_OF: names.APP_NAME},
        },
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": names.KIND,
                "listKind": f"{names.KIND}List",
                "plural": names.PLURAL,
                "singular": names.SINGULAR,
                "shortNames": list(names.SHORT_NAMES),
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Ready", "type": "string", "jsonPath": ready},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                        {
                            "name": "Ready-Replicas",
                            "type": "integer",
                            "jsonPath": ".status.readyReplicas",
                        },
                        {"name": "Config-Valid", "type": "string", "jsonPath": config_valid},
                        {"name": "Reconciled", "type": "string", "jsonPath": reconciled},
                        {"name": "Config-Hash", "type": "string", "jsonPath": ".status.configHash"},
                        {"name": "Image", "type": "string", "jsonPath": ".status.image", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "An event store: store pods (StatefulSet), PostgreSQL for "
                                "events, MongoDB for snapshots and a ConfigMap of settings."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"size(self.metadata.name) <= {names.MAX_NAME_LENGTH}",
                                    "message": (
                                        f"metadata.name must be at most {names.MAX_NAME_LENGTH} "
                                        "characters (child objects and pods add suffixes)"
                                    ),
                                }
                            ],
                        }
                    },
                }
            ],
        },
    }


HEADER = (
    "# Generated by `python -m eventstore_operator.crd --write` from\n"
    "# operator/eventstore_operator/crd.py. Do not edit: edit crd.py and regenerate.\n"
)


def render_crd() -> str:
    """The CRD as YAML text, exactly as written into every copy."""
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


_JSON_SCHEMA_KEYS = (
    "type",
    "description",
    "enum",
    "minimum",
    "maximum",
    "pattern",
    "minLength",
    "maxLength",
    "required",
)


def _to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI (CRD) schema node as JSON Schema for Helm: closed objects, no CEL.

    The CEL rules stay with the API server (it still refuses what they forbid).
    """
    out = {k: node[k] for k in _JSON_SCHEMA_KEYS if k in node}
    if "properties" in node:
        out["properties"] = {k: _to_json_schema(v) for k, v in node["properties"].items()}
        out["additionalProperties"] = False
    if "items" in node:
        out["items"] = _to_json_schema(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _to_json_schema(node["additionalProperties"])
    if "maxProperties" in node:
        out["maxProperties"] = node["maxProperties"]
    return out


VALUES_SCHEMA_PATH = Path("charts/eventstore/values.schema.json")


def _strings(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
    }


def _closed(description: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "properties": properties,
    }


def values_schema() -> dict[str, Any]:
    """values.schema.json of the chart; eventstore.spec is the CRD's spec schema."""
    boolean = {"type": "boolean"}
    string = {"type": "string"}
    quantity = {"type": ["string", "number"]}
    amounts = {"type": "object", "additionalProperties": quantity}
    dns_label = {"type": "string", "pattern": DNS_LABEL_PATTERN, "maxLength": 63}
    return {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "Values of the eventstore chart",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "global": {"type": "object", "description": "Helm globals (unused)."},
            "nameOverride": string,
            "fullnameOverride": string,
            "image": _closed(
                "Image of the operator (the store pods use the EventStore's spec.image).",
                repository={"type": "string", "minLength": 1},
                tag=string,
                pullPolicy={"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
            ),
            "imagePullSecrets": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": string},
                },
            },
            "rbac": _closed("RBAC objects.", create=boolean),
            "serviceAccount": _closed(
                "The operator's ServiceAccount.",
                create=boolean,
                name=string,
                annotations=_strings("Annotations."),
            ),
            "operator": _closed(
                "Operator behaviour.",
                watchNamespaces={"type": "array", "uniqueItems": True, "items": dns_label},
                resyncSeconds={"type": "integer", "minimum": 1, "maximum": 3600},
                verbose=boolean,
            ),
            "replicaCount": {
                "type": "integer",
                "minimum": 0,
                "maximum": 1,
                "description": "The operator runs standalone: 1 (or 0 to pause it).",
            },
            "resources": _closed("Operator resources.", requests=amounts, limits=amounts),
            "podSecurityContext": {"type": "object"},
            "securityContext": {"type": "object"},
            "podAnnotations": _strings("Pod annotations."),
            "podLabels": _strings("Pod labels."),
            "nodeSelector": _strings("Node selector."),
            "tolerations": {"type": "array", "items": {"type": "object"}},
            "affinity": {"type": "object"},
            "priorityClassName": string,
            "eventstore": _closed(
                "An optional EventStore in the release namespace.",
                create=boolean,
                name={
                    "type": "string",
                    "pattern": DNS_LABEL_PATTERN,
                    "maxLength": names.MAX_NAME_LENGTH,
                },
                spec=_to_json_schema(spec_schema()),
            ),
            "metrics": _closed(
                "Monitoring.",
                serviceMonitor=_closed(
                    "Prometheus Operator ServiceMonitor.",
                    enabled=boolean,
                    interval={"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                    labels=_strings("Extra labels."),
                ),
                grafanaDashboard=_closed(
                    "Grafana dashboard ConfigMap.", enabled=boolean, labels=_strings("Labels.")
                ),
            ),
        },
    }


def render_values_schema() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


def generated_files() -> dict[Path, str]:
    """Every file rendered from this module (relative to the repository root)."""
    files = dict.fromkeys(CRD_COPIES, render_crd())
    files[VALUES_SCHEMA_PATH] = render_values_schema()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write every copy")
    mode.add_argument("--check", action="store_true", help="fail if a copy differs")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        sys.stdout.write(render_crd())
        return 0
    stale = []
    for rel, text in generated_files().items():
        path = args.root / rel
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(str(rel))
    if stale:
        print(f"generated files out of date: {', '.join(stale)}; run with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
