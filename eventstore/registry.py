"""Resolve the aggregate classes that `event-store.yaml` registers (`aggregates:`).

Parsing (settings.py) only checks the shape of `"module:object"`; this module imports it,
which runs code, so it is kept apart from the pure settings model. The store pods do it at
startup, and `eventstore check-config` and the operator's ConfigMap validation do it too,
so an unimportable registration is refused before any pod restarts onto it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from eventstore.aggregate import Aggregate
from eventstore.settings import EVENT_STORE_FILE, SettingsError, StoreSettings


def load_aggregate(name: str, target: str, file: str = EVENT_STORE_FILE) -> type[Aggregate]:
    """The Aggregate subclass `target` ("module:Class") registered as `name`.

    Refused (SettingsError naming `aggregates.<name>`) when the module does not import, the
    object is missing or not an Aggregate subclass, or its `aggregate_type` is not `name`
    (the type is what events carry and snapshots are filed under, so the two must agree).
    """
    key = f"aggregates.{name}"
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises at import
        raise SettingsError(file, key, f"cannot import {module_name!r}: "
                                       f"{type(exc).__name__}: {exc}") from None
    obj: object = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise SettingsError(file, key, f"{module_name!r} has no {attribute!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Aggregate)):
        raise SettingsError(file, key, f"{target!r} is a {type(obj).__name__}, not a subclass of "
                                       "eventstore.Aggregate")
    if obj.aggregate_type != name:
        raise SettingsError(
            file, key, f"{target!r} has aggregate_type {obj.aggregate_type!r}: register it as "
                       f"{obj.aggregate_type!r}, or set aggregate_type = {name!r} on the class")
    return obj


def load_aggregates(registered: Mapping[str, str],
                    file: str = EVENT_STORE_FILE) -> dict[str, type[Aggregate]]:
    """Every registration of `aggregates:`, resolved; the first failure is raised."""
    return {name: load_aggregate(name, target, file) for name, target in sorted(registered.items())}


def check_store_settings(settings: StoreSettings, file: str = EVENT_STORE_FILE) -> None:
    """Raise SettingsError if a registered aggregate cannot be resolved."""
    load_aggregates(settings.aggregates, file)
