"""Tuning settings of the store: parse and validate the two files of the ConfigMap.

The store pods (`eventstore serve`), `eventstore check-config` and the operator all
validate with this one module, so an edit the operator accepts is exactly an edit the
pods will start with. The models here are also the single source of the defaults:
`render_defaults()` writes them (with a comment per key) and `config/*.yaml` are
copies that a unit test keeps byte-identical.

Everything but `load_settings` is pure: no file or network access.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic import ValidationError as PydanticValidationError

from eventstore import envcontract
from eventstore.errors import SettingsError as SettingsError  # re-exported

EVENT_STORE_FILE = "event-store.yaml"
PROJECTIONS_FILE = "projections.yaml"
CONFIG_FILES = (EVENT_STORE_FILE, PROJECTIONS_FILE)
DEFAULT_CONFIG_DIR = envcontract.DEFAULT_CONFIG_DIR
CONFIG_DIR_ENV = envcontract.CONFIG_DIR

#: Pseudo-keys used in errors that concern a whole file or directory, not one key.
DOCUMENT_KEY = "<document>"
FILE_KEY = "<file>"
DIRECTORY_KEY = "<directory>"

_PROJECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_PROJECTION_TARGET = re.compile(rf"^{_DOTTED}:{_DOTTED}$")
#: Aggregate type names: what events carry in their metadata and snapshots are filed under
#: (the same alphabet as event types, so a name is safe in a URL path and a metric label).
#: The CRD checks the same patterns (operator/eventstore_operator/crd.py).
AGGREGATE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$"
AGGREGATE_TARGET_PATTERN = _PROJECTION_TARGET.pattern
_AGGREGATE_NAME = re.compile(AGGREGATE_NAME_PATTERN)
#: The projection name of the store's own snapshotter (see eventstore/snapshotter.py).
SNAPSHOTTER = "snapshotter"


def _check_projection_name(name: str) -> str:
    if not _PROJECTION_NAME.fullmatch(name):
        raise ValueError(
            f"projection name {name!r} must be a DNS label: lower-case letters, digits and "
            "'-', at most 63 characters, starting and ending with a letter or digit"
        )
    return name


def _check_projection_target(target: str) -> str:
    if not _PROJECTION_TARGET.fullmatch(target):
        raise ValueError(f"{target!r} must be 'module:object', for example 'myapp.projections:Balances'")
    return target


def _check_aggregate_name(name: str) -> str:
    if not _AGGREGATE_NAME.fullmatch(name):
        raise ValueError(
            f"aggregate name {name!r} is not a valid type name: a letter or '_' first, then "
            "letters, digits, '_', '.' or '-', at most 100 characters (for example Account)"
        )
    return name


def _check_aggregate_target(target: str) -> str:
    if not _PROJECTION_TARGET.fullmatch(target):
        raise ValueError(f"{target!r} must be 'module:object', for example 'myapp.domain:Account'")
    return target


ProjectionName = Annotated[str, AfterValidator(_check_projection_name)]
ProjectionTarget = Annotated[str, AfterValidator(_check_projection_target)]
AggregateName = Annotated[str, AfterValidator(_check_aggregate_name)]
AggregateTarget = Annotated[str, AfterValidator(_check_aggregate_target)]

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class StoreSettings(BaseModel):
    """`event-store.yaml`: how the store snapshots, archives and replays aggregates."""

    model_config = _STRICT

    snapshot_frequency: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description="Take a snapshot of an aggregate every N events it records.",
        ),
    ] = 100
    retention_days: Annotated[
        int,
        Field(
            ge=1,
            le=36_500,
            description=("Events older than this many days that a snapshot already covers are archived."),
        ),
    ] = 365
    max_events_per_aggregate: Annotated[
        int,
        Field(
            ge=1,
            le=10_000_000,
            description=(
                "Most events a load may replay after the newest snapshot; past it a snapshot is forced."
            ),
        ),
    ] = 1000
    aggregates: Annotated[
        dict[AggregateName, AggregateTarget],
        Field(
            description=(
                "Aggregate classes the store pods snapshot, serve at /aggregates and retain: "
                'type name -> "module:object" (for example Account: '
                '"eventstore.examples.bank:Account"). A stream belongs to a type when its '
                "events carry metadata.aggregate_type (Repository.save adds it)."
            ),
        ),
    ] = Field(default_factory=dict)


class ProjectionSettings(BaseModel):
    """`projections.yaml`: how the projection runner consumes the global log."""

    model_config = _STRICT

    workers: Annotated[
        int,
        Field(ge=1, le=64, description="Projections processed concurrently."),
    ] = 5
    batch_size: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description="Events a projection reads and handles per batch (one checkpoint each).",
        ),
    ] = 100
    retry_attempts: Annotated[
        int,
        Field(
            ge=0,
            le=100,
            description=("Retries (with exponential backoff) of an event a projection fails on, "
                         "before it is parked in the dead-letter table and the projection "
                         "goes on with the next event."),
        ),
    ] = 3
    projections: Annotated[
        dict[ProjectionName, ProjectionTarget],
        Field(
            description=(
                'Projections to run: name (a DNS label) -> "module:object" '
                '(for example balances: "myapp.projections:Balances").'
            ),
        ),
    ] = Field(default_factory=dict)
    local_projections: Annotated[
        dict[ProjectionName, ProjectionTarget],
        Field(
            description=(
                "Projections every pod runs over the whole log into its own read model on "
                "its /data volume, so reads scale with replicas: name -> \"module:object\"."
            ),
        ),
    ] = Field(default_factory=dict)

    @field_validator("projections", "local_projections")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        if SNAPSHOTTER in value:
            raise ValueError(f"{SNAPSHOTTER!r} is the store's own snapshotter: choose another "
                             "projection name")
        return value

    @field_validator("local_projections")
    @classmethod
    def _names_are_unique(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        both = sorted(set(value) & set(info.data.get("projections") or {}))
        if both:
            raise ValueError(f"{', '.join(both)} also named in projections: a projection "
                             "name must be unique")
        return value


class Settings(BaseModel):
    """Both files together, as the store pods load them at startup."""

    model_config = _STRICT

    store: StoreSettings = Field(default_factory=StoreSettings)
    projections: ProjectionSettings = Field(default_factory=ProjectionSettings)


_FILE_MODELS: dict[str, type[BaseModel]] = {
    EVENT_STORE_FILE: StoreSettings,
    PROJECTIONS_FILE: ProjectionSettings,
}


def _reason(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    """Turn one pydantic error into a sentence that says what to do."""
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return f"unknown key; allowed keys are: {allowed}"
    message = str(error["msg"])
    if kind.startswith("value_error"):
        message = message.removeprefix("Value error, ")
        return message
    got = f"{value!r} ({type(value).__name__})" if not isinstance(value, dict) else "a mapping"
    return f"{message[0].lower()}{message[1:]}, got {got}"


def _key(loc: tuple[int | str, ...]) -> str:
    # pydantic marks a failing dict key with a trailing "[key]" part; the path is enough.
    return ".".join(str(part) for part in loc if part != "[key]") or DOCUMENT_KEY


def _parse(text: str, file: str, model: type[BaseModel]) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(file, DOCUMENT_KEY, f"invalid YAML{_yaml_where(exc)}") from None
    if data is None:  # an empty file (or only comments) means "all defaults"
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(
            file,
            DOCUMENT_KEY,
            f"the top level must be a mapping of keys to values, got {type(data).__name__}",
        )
    for key in data:
        if not isinstance(key, str):
            raise SettingsError(file, str(key), "keys must be strings")
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        every = [(file, _key(e["loc"]), _reason(e, model)) for e in exc.errors()]
        raise SettingsError(*every[0], others=tuple(every[1:])) from None


def _yaml_where(exc: yaml.YAMLError) -> str:
    """Where the YAML is broken: the line of the bad construct, not only where the parser
    noticed. An unclosed bracket or quote, or a key without its colon, is noticed lines
    later (at the next key); PyYAML's context mark is where that construct started."""
    problem = str(getattr(exc, "problem", None) or exc)
    noticed = getattr(exc, "problem_mark", None)
    started = getattr(exc, "context_mark", None)
    context = str(getattr(exc, "context", None) or "")
    if started is not None and noticed is not None and started.line < noticed.line and (
        "scanning" in context or "flow" in context
    ):
        return (
            f" at line {started.line + 1}, column {started.column + 1}: {context} started here, "
            f"{problem} (noticed at line {noticed.line + 1})"
        )
    if noticed is not None:
        return f" at line {noticed.line + 1}, column {noticed.column + 1}: {problem}"
    return f": {problem}"


def parse_store_settings(text: str, file: str = EVENT_STORE_FILE) -> StoreSettings:
    """Parse the text of `event-store.yaml`; raise `SettingsError` if it is refused."""
    result: StoreSettings = _parse(text, file, StoreSettings)
    return result


def parse_projection_settings(text: str, file: str = PROJECTIONS_FILE) -> ProjectionSettings:
    """Parse the text of `projections.yaml`; raise `SettingsError` if it is refused."""
    result: ProjectionSettings = _parse(text, file, ProjectionSettings)
    return result


def config_dir_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """The directory `eventstore serve` reads: $EVENTSTORE_CONFIG_DIR or /etc/eventstore."""
    return envcontract.config_dir(os.environ if environ is None else environ)


def load_settings(directory: Path) -> Settings:
    """Read both files from `directory` (a mounted ConfigMap).

    A missing file means its defaults, so an empty ConfigMap is valid; a missing
    directory is an error because it almost always means a wrong mount path.
    Other files in the directory (the kubelet's `..data` links) are ignored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SettingsError(
            str(directory),
            DIRECTORY_KEY,
            f"no such directory; mount the ConfigMap there or set {CONFIG_DIR_ENV}",
        )
    texts: dict[str, str] = {}
    for name in CONFIG_FILES:
        path = directory / name
        if path.exists():
            try:
                texts[name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SettingsError(str(path), FILE_KEY, f"cannot read the file: {exc}") from None
    store = parse_store_settings(texts.get(EVENT_STORE_FILE, ""), str(directory / EVENT_STORE_FILE))
    projections = parse_projection_settings(
        texts.get(PROJECTIONS_FILE, ""), str(directory / PROJECTIONS_FILE)
    )
    return Settings(store=store, projections=projections)


def validate_config_data(data: Mapping[str, str]) -> Settings:
    """Validate a ConfigMap's `.data` (file name -> text) exactly as the pods will load it."""
    for name in sorted(data):
        if name not in _FILE_MODELS:
            raise SettingsError(
                name,
                FILE_KEY,
                "unknown file; the ConfigMap may hold only " + " and ".join(CONFIG_FILES),
            )
        if not isinstance(data[name], str):
            raise SettingsError(name, FILE_KEY, "the file content must be text")
    errors: list[SettingsError] = []
    store: StoreSettings | None = None
    projections: ProjectionSettings | None = None
    try:
        store = parse_store_settings(data.get(EVENT_STORE_FILE, ""), EVENT_STORE_FILE)
    except SettingsError as exc:
        errors.append(exc)
    try:
        projections = parse_projection_settings(data.get(PROJECTIONS_FILE, ""), PROJECTIONS_FILE)
    except SettingsError as exc:
        errors.append(exc)
    if errors or store is None or projections is None:
        raise SettingsError.combine(errors)
    return Settings(store=store, projections=projections)


def config_hash(data: Mapping[str, str]) -> str:
    """A short, stable sha256 of the settings valid ConfigMap data parses to.

    Over the parsed values, not the text: an edit of comments, spacing or key order
    gives the same hash, so it does not roll the store pods. Raises `SettingsError`
    for data `validate_config_data` refuses.
    """
    return settings_hash(validate_config_data(data))


def settings_hash(settings: Settings) -> str:
    """A short, stable sha256 of settings (what the pod template carries)."""
    canonical = json.dumps(settings.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


_HEADERS = {
    EVENT_STORE_FILE: (
        "# event-store.yaml: tuning of the event store, read by `eventstore serve` at startup.\n"
        "# On Kubernetes this is a key of the ConfigMap <name>-config: edit it there and the\n"
        "# operator validates the change and rolls the store pods; an invalid edit is\n"
        "# reported on the EventStore's status and the pods keep the last good settings.\n"
    ),
    PROJECTIONS_FILE: (
        "# projections.yaml: the projection runner, read by `eventstore serve` at startup.\n"
        "# Same rules as event-store.yaml: edit the ConfigMap, the operator validates it.\n"
    ),
}


def _render(file: str, model: BaseModel) -> str:
    lines = [_HEADERS[file].rstrip("\n")]
    for name, field in type(model).model_fields.items():
        lines.append("")
        meta = {type(m).__name__: m for m in field.metadata}
        bounds = ""
        lower = getattr(meta.get("Ge"), "ge", None)
        upper = getattr(meta.get("Le"), "le", None)
        if lower is not None and upper is not None:
            bounds = f" Range {lower}..{upper}."
        comment = textwrap.wrap(f"{field.description}{bounds}", width=86)
        lines.extend(f"# {line}" for line in comment)
        value = getattr(model, name)
        if isinstance(value, dict) and value:
            lines.append(f"{name}:")
            for key, item in sorted(value.items()):
                lines.append(f"  {key}: {json.dumps(item)}")
        else:
            rendered = json.dumps(value) if not isinstance(value, dict) else "{}"
            lines.append(f"{name}: {rendered}")
    return "\n".join(lines) + "\n"


def render_config_data(
    store: StoreSettings | None = None, projections: ProjectionSettings | None = None
) -> dict[str, str]:
    """File name -> commented YAML for the given settings (the operator seeds its ConfigMap)."""
    return {
        EVENT_STORE_FILE: _render(EVENT_STORE_FILE, store or StoreSettings()),
        PROJECTIONS_FILE: _render(PROJECTIONS_FILE, projections or ProjectionSettings()),
    }


def render_defaults() -> dict[str, str]:
    """File name -> commented YAML of the defaults; `config/*.yaml` are copies of this."""
    return render_config_data()
