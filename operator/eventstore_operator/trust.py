"""What an EventStore may make the operator do on its author's behalf: pure checks.

The operator runs with more rights than a user who may only create EventStores: it
creates StatefulSets whose pods read Secrets. Without limits, such a user could name any
Secret of the namespace as an External database's `credentialsSecret` and any image as
`spec.image`, and the operator would hand the Secret's keys to that image: a read of
every Secret through the operator. Two checks close that:

- A Secret an EventStore references must opt in with the label
  `eventstore.io/allow-reference: "true"`, set by someone who may edit that Secret.
  (The Secrets the operator generates for an EventStore are its own and need no label.)
- Images (the store's and the in-cluster databases') can be restricted to prefixes given
  to the operator (`--allowed-image-prefix`, repeatable, or
  EVENTSTORE_OPERATOR_ALLOWED_IMAGE_PREFIXES, comma-separated). Without any, every image
  is allowed: whoever may create an EventStore then runs code of their choosing with the
  EventStore's Secrets, as they could with a Pod of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The opt-in label on a Secret an EventStore may reference, and its value.
LABEL_ALLOW_REFERENCE = "eventstore.io/allow-reference"
ALLOW_REFERENCE_VALUE = "true"


def referenced_secrets(spec: Mapping[str, Any]) -> list[str]:
    """Names of the user's Secrets the (normalized) spec makes the store pods read."""
    return [db["credentialsSecret"]["name"] for db in (spec["postgres"], spec["mongodb"])
            if db["mode"] == "External"]


def secret_problems(spec: Mapping[str, Any],
                    secrets: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """Why the referenced Secrets (name -> the Secret as read, None: missing) may not be
    used; empty when they may."""
    problems = []
    for name in referenced_secrets(spec):
        secret = secrets.get(name)
        if secret is None:
            problems.append(f"Secret {name} does not exist")
            continue
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if labels.get(LABEL_ALLOW_REFERENCE) != ALLOW_REFERENCE_VALUE:
            problems.append(f"Secret {name} is not labelled {LABEL_ALLOW_REFERENCE}="
                            f"{ALLOW_REFERENCE_VALUE}: label it to let EventStores use it "
                            f"(kubectl label secret {name} {LABEL_ALLOW_REFERENCE}="
                            f"{ALLOW_REFERENCE_VALUE})")
    return problems


def image_problems(spec: Mapping[str, Any], allowed_prefixes: Sequence[str]) -> list[str]:
    """Images of the spec outside the operator's allow-list (none: all allowed)."""
    if not allowed_prefixes:
        return []
    images = {"spec.image": spec["image"]}
    for db in ("postgres", "mongodb"):
        if spec[db]["mode"] == "InCluster":
            images[f"spec.{db}.image"] = spec[db]["image"]
    return [f"{field} {image!r} is not allowed by this operator (allowed prefixes: "
            f"{', '.join(allowed_prefixes)})"
            for field, image in images.items()
            if not any(image.startswith(prefix) for prefix in allowed_prefixes)]
