"""The operator's only door to the Kubernetes API: a few verbs on plain dicts.

Built on the official client's configuration, auth and connection pool, but speaking
JSON dicts (what the builders produce) rather than the generated model classes.

Error policy, in one place (`translate`):
- create tolerates 409 (the object exists: the caller decides whether to keep it);
  delete and get tolerate 404.
- 400/422 (the object is invalid: a bug or a spec the CRD could not catch) and 405
  become `kopf.PermanentError`: retrying cannot help.
- 401/403 become `kopf.TemporaryError(delay=60)`: RBAC is fixable by an admin
  without restarting the operator, so keep retrying, slowly.
- 409 on an update (conflict), 429, 5xx and connection errors become
  `kopf.TemporaryError` with a short delay.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import kopf
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from eventstore_operator import names

log = logging.getLogger(__name__)

Obj = dict[str, Any]

#: kind -> (API path prefix, plural). Only the kinds the operator touches.
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Service": ("/api/v1", "services"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Event": ("/api/v1", "events"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "CronJob": ("/apis/batch/v1", "cronjobs"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Pod": ("/api/v1", "pods"),
    names.KIND: (f"/apis/{names.API_VERSION}", names.PLURAL),
}

_client: client.ApiClient | None = None
_client_lock = threading.Lock()


def api_client() -> client.ApiClient:
    """One shared client: in-cluster config when run in a pod, else $KUBECONFIG."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            _client = client.ApiClient()
        return _client


def _path(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    if namespace is None:  # every namespace (list only)
        return f"{prefix}/{plural}"
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


def _reason(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def translate(exc: Exception, action: str) -> Exception:
    """Map a client error to the kopf error that says whether retrying can help."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        message = f"{action}: HTTP {status}: {_reason(exc)}"
        if status in (400, 405, 422):
            return kopf.PermanentError(message)
        if status in (401, 403):
            return kopf.TemporaryError(
                f"{message} (check the operator's RBAC: manifests/rbac.yaml)", delay=60
            )
        if status == 429:
            retry_after = (exc.headers or {}).get("Retry-After")
            delay = float(retry_after) if retry_after and retry_after.isdigit() else 5.0
            return kopf.TemporaryError(message, delay=delay)
        if status in (404, 409):
            return kopf.TemporaryError(message, delay=2)
        return kopf.TemporaryError(message, delay=10)
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError, socket.timeout)):
        return kopf.TemporaryError(f"{action}: API server unreachable: {exc}", delay=10)
    return exc


def request(
    method: str,
    path: str,
    body: Any = None,
    query: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> Obj:
    """One API call; raises `ApiException` on any non-2xx status."""
    api = api_client()
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    m, url, hdrs, data, _ = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(m, url, header_params=hdrs, body=data, _request_timeout=(5, 30))
    raw: bytes = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        ApiException.from_response(http_resp=response, body=raw.decode("utf-8", "replace"), data=None)
    result: Obj = json.loads(raw) if raw else {}
    return result


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc, action) from exc


def _describe(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"


def get(kind: str, namespace: str, name: str) -> Obj | None:
    """The object, or None if it does not exist."""
    try:
        return request("GET", _path(kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise translate(exc, f"get {kind} {namespace}/{name}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc, f"get {kind} {namespace}/{name}") from exc


def served(api_version: str, plural: str) -> bool:
    """Whether API discovery lists `plural` in `api_version` (a CRD installed and served).

    Any error but 404 counts as "not yet" too (logged): the caller polls.
    """
    try:
        found = request("GET", f"/apis/{api_version}")
    except ApiException as exc:
        if exc.status != 404:
            log.warning("discovery of %s: HTTP %s", api_version, exc.status)
        return False
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        log.warning("discovery of %s: %s", api_version, exc)
        return False
    return any(r.get("name") == plural for r in found.get("resources") or [])


def list_objects(kind: str, namespace: str | None, selector: Mapping[str, str] | None = None) -> list[Obj]:
    """Objects of a kind in a namespace (None: in every namespace), by label selector."""
    query = {}
    if selector:
        query["labelSelector"] = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    with _translated(f"list {kind} in {namespace or 'all namespaces'}"):
        items: list[Obj] = request("GET", _path(kind, namespace), query=query).get("items", [])
    return items


def create(obj: Obj) -> Obj | None:
    """Create; returns the new object, or None if it already existed (409 tolerated)."""
    meta = obj["metadata"]
    try:
        return request("POST", _path(obj["kind"], meta["namespace"]), body=obj)
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise translate(exc, f"create {_describe(obj)}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc, f"create {_describe(obj)}") from exc


def apply(obj: Obj) -> Obj:
    """Server-side apply with the operator's field manager, forcing ownership.

    Creates the object if missing and resets every field the operator set if someone
    edited it (drift repair), while leaving fields other managers own alone. A no-op
    apply does not change resourceVersion, so periodic re-applies are cheap.
    """
    meta = obj["metadata"]
    with _translated(f"apply {_describe(obj)}"):
        return request(
            "PATCH",
            _path(obj["kind"], meta["namespace"], meta["name"]),
            body=obj,
            query={"fieldManager": names.FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )


def merge_patch(kind: str, namespace: str, name: str, patch: Obj, subresource: str | None = None) -> Obj:
    with _translated(f"patch {kind} {namespace}/{name}"):
        return request(
            "PATCH",
            _path(kind, namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )


def delete(kind: str, namespace: str, name: str, propagation: str | None = None) -> None:
    """Delete; a missing object (404) counts as deleted."""
    body = {"propagationPolicy": propagation} if propagation else None
    try:
        request("DELETE", _path(kind, namespace, name), body=body)
    except ApiException as exc:
        if exc.status != 404:
            raise translate(exc, f"delete {kind} {namespace}/{name}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc, f"delete {kind} {namespace}/{name}") from exc


def post_event(involved: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
    """Record a Kubernetes Event on an object (best effort: never fails a reconcile)."""
    meta = involved["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", names.API_VERSION),
            "kind": involved.get("kind", names.KIND),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": names.MANAGED_BY},
        "reportingComponent": f"{names.GROUP}/operator",
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        request("POST", _path("Event", meta["namespace"]), body=event)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)
