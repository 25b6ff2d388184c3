"""Lay out a pod template's ConfigMap and Secret volumes as files, the way the kubelet does."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def kubelet_layout(
    root: Path,
    sts: dict[str, Any],
    config_maps: dict[str, dict[str, Any]],
    secrets: dict[str, dict[str, str]] | None = None,
) -> Path:
    """Write each configMap/secret volume the store container mounts under `root`.

    As the kubelet does: the data in a timestamped dir, a `..data` symlink to it, and one
    symlink per item path (`items`, or every key when the volume lists none). `secrets`
    maps a Secret's name to its decoded data.
    """
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in pod["containers"][0]["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        if "configMap" in volume:
            source = volume["configMap"]
            data = config_maps[source["name"]]["data"]
        elif "secret" in volume and secrets is not None:
            source = volume["secret"]
            data = secrets[source["secretName"]]
        else:
            continue
        target = root / mount["mountPath"].lstrip("/")
        stamp = target / "..2026_01_01_00_00_00.000000001"
        stamp.mkdir(parents=True)
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        mode = source.get("defaultMode", 0o644)
        for item in items:
            path = stamp / item["path"]
            path.write_text(data[item["key"]])
            path.chmod(mode | 0o600)  # the test process must read what the pod's group would
            (target / item["path"]).symlink_to(f"..data/{item['path']}")
        (target / "..data").symlink_to(stamp.name)
    return root
