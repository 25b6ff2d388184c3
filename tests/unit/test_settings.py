"""Settings validation: every refusal names file, key and reason; defaults have one source."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from eventstore.errors import EventStoreError
from eventstore.settings import (
    DEFAULT_CONFIG_DIR,
    EVENT_STORE_FILE,
    PROJECTIONS_FILE,
    ProjectionSettings,
    Settings,
    SettingsError,
    StoreSettings,
    config_dir_from_env,
    config_hash,
    load_settings,
    parse_projection_settings,
    parse_store_settings,
    render_config_data,
    render_defaults,
    validate_config_data,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_seed_values() -> None:
    store, proj = StoreSettings(), ProjectionSettings()
    assert (store.snapshot_frequency, store.retention_days, store.max_events_per_aggregate) == (
        100,
        365,
        1000,
    )
    assert (proj.workers, proj.batch_size, proj.retry_attempts, proj.projections) == (5, 100, 3, {})


@pytest.mark.parametrize("name", [EVENT_STORE_FILE, PROJECTIONS_FILE])
def test_config_files_are_byte_identical_to_render_defaults(name: str) -> None:
    # render_defaults() (from the models) is the source; config/*.yaml are the copies.
    assert (REPO / "config" / name).read_text(encoding="utf-8") == render_defaults()[name], (
        f"config/{name} drifted from eventstore.settings.render_defaults(); regenerate it with "
        "python -c 'from eventstore.settings import render_defaults; ...'"
    )


def test_config_files_parse_to_exactly_the_model_defaults() -> None:
    settings = load_settings(REPO / "config")
    assert settings == Settings(store=StoreSettings(), projections=ProjectionSettings())


def test_every_default_key_has_a_comment() -> None:
    for name, text in render_defaults().items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line and not line.startswith("#") and not line.startswith(" "):
                assert lines[i - 1].startswith("#"), f"{name}: {line!r} has no comment"


def test_render_config_data_round_trips_non_defaults() -> None:
    store = StoreSettings(snapshot_frequency=7, retention_days=30, max_events_per_aggregate=9)
    proj = ProjectionSettings(
        workers=2, batch_size=10, retry_attempts=0, projections={"balances": "app.proj:Balances"}
    )
    data = render_config_data(store, proj)
    assert validate_config_data(data) == Settings(store=store, projections=proj)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("snapshot_frequency: true", "snapshot_frequency", "valid integer"),
        ('snapshot_frequency: "100"', "snapshot_frequency", "valid integer"),
        ("snapshot_frequency: 1.5", "snapshot_frequency", "valid integer"),
        ("snapshot_frequency: null", "snapshot_frequency", "valid integer"),
        ("snapshot_frequency: 0", "snapshot_frequency", "greater than or equal to 1"),
        ("snapshot_frequency: 1000001", "snapshot_frequency", "less than or equal to 1000000"),
        ("retention_days: 36501", "retention_days", "less than or equal to 36500"),
        ("max_events_per_aggregate: -1", "max_events_per_aggregate", "greater than or equal"),
        ("snapshot_frequncy: 50", "snapshot_frequncy", "unknown key"),
        ("- 1\n- 2", "<document>", "top level must be a mapping"),
        ("just text", "<document>", "top level must be a mapping"),
        ("a: [", "<document>", "invalid YAML at line"),
        ("1: 2", "1", "keys must be strings"),
    ],
)
def test_store_settings_refusals_name_file_key_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_store_settings(text)
    err = info.value
    assert (err.file, err.key) == (EVENT_STORE_FILE, key)
    assert reason in err.reason
    assert str(err) == f"{EVENT_STORE_FILE}: {key}: {err.reason}"
    assert isinstance(err, EventStoreError) and isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("workers: 0", "workers", "greater than or equal to 1"),
        ("workers: 65", "workers", "less than or equal to 64"),
        ("batch_size: 10001", "batch_size", "less than or equal to 10000"),
        ("retry_attempts: -1", "retry_attempts", "greater than or equal to 0"),
        ("retry_attempts: false", "retry_attempts", "valid integer"),
        ("projections: [a]", "projections", "valid dictionary"),
        ('projections: {Bad_Name: "a:b"}', "projections.Bad_Name", "DNS label"),
        ('projections: {good: "no-colon"}', "projections.good", "module:object"),
        ('projections: {good: "a:b:c"}', "projections.good", "module:object"),
        # A trailing newline passes Python's `$`: the checks match the whole name.
        ('projections: {"good\\n": "a:b"}', "projections.good\n", "DNS label"),
        ('projections: {good: "a:b\\n"}', "projections.good", "module:object"),
        ("projections: {good: 3}", "projections.good", "valid string"),
        ("threads: 3", "threads", "unknown key"),
    ],
)
def test_projection_settings_refusals(text: str, key: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_projection_settings(text)
    assert (info.value.file, info.value.key) == (PROJECTIONS_FILE, key)
    assert reason in info.value.reason


def test_valid_values_parse() -> None:
    assert parse_store_settings("snapshot_frequency: 50").snapshot_frequency == 50
    assert parse_store_settings("").snapshot_frequency == 100
    assert parse_store_settings("# only a comment\n") == StoreSettings()
    proj = parse_projection_settings('projections:\n  balances: "myapp.projections:Balances"\n')
    assert proj.projections == {"balances": "myapp.projections:Balances"}


def test_models_are_frozen_and_strict() -> None:
    store = StoreSettings()
    with pytest.raises(ValueError):
        store.snapshot_frequency = 5
    with pytest.raises(ValueError):
        StoreSettings(snapshot_frequency=True)
    with pytest.raises(ValueError):
        StoreSettings.model_validate({"unknown": 1})


def test_settings_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(SettingsError("f.yaml", "k", "bad")))
    assert (err.file, err.key, err.reason, str(err)) == ("f.yaml", "k", "bad", "f.yaml: k: bad")


def test_load_settings_missing_files_mean_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path) == Settings()
    (tmp_path / EVENT_STORE_FILE).write_text("snapshot_frequency: 50\n")
    assert load_settings(tmp_path).store.snapshot_frequency == 50


def test_load_settings_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path / "nope")
    assert info.value.file == str(tmp_path / "nope")
    assert "EVENTSTORE_CONFIG_DIR" in info.value.reason


def test_load_settings_names_the_full_path(tmp_path: Path) -> None:
    (tmp_path / PROJECTIONS_FILE).write_text("workers: 100\n")
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path)
    assert info.value.file == str(tmp_path / PROJECTIONS_FILE)
    assert info.value.key == "workers"


def test_load_settings_follows_kubelet_symlink_layout(tmp_path: Path) -> None:
    # The kubelet writes files into a timestamped dir and links them via ..data.
    stamp = tmp_path / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir()
    (stamp / EVENT_STORE_FILE).write_text("snapshot_frequency: 42\n")
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / EVENT_STORE_FILE).symlink_to(f"..data/{EVENT_STORE_FILE}")
    assert load_settings(tmp_path).store.snapshot_frequency == 42


def test_validate_config_data_refuses_unknown_files() -> None:
    with pytest.raises(SettingsError) as info:
        validate_config_data({"event-store.yml": "snapshot_frequency: 5"})
    assert info.value.file == "event-store.yml"
    assert "event-store.yaml" in info.value.reason


def test_validate_config_data_names_file_and_key() -> None:
    with pytest.raises(SettingsError, match=r"^event-store.yaml: snapshot_frequency: "):
        validate_config_data({EVENT_STORE_FILE: "snapshot_frequency: 0"})
    assert validate_config_data({}) == Settings()


def test_config_hash_is_stable_and_sensitive() -> None:
    a = {EVENT_STORE_FILE: "snapshot_frequency: 50\n", PROJECTIONS_FILE: ""}
    b = dict(reversed(list(a.items())))
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash(a) != config_hash({**a, EVENT_STORE_FILE: "snapshot_frequency: 51\n"})
    # A known value: the hash is part of the pod template, so it must not change by accident.
    assert config_hash({}) == "a903ec60562b717b"


def test_config_hash_ignores_comments_spacing_and_order() -> None:
    """Issue 13 #7: a comment-only edit must not roll the store pods."""
    a = {EVENT_STORE_FILE: "snapshot_frequency: 50\nretention_days: 30\n"}
    b = {EVENT_STORE_FILE: "# tuned\nretention_days:   30   # a month\n\nsnapshot_frequency: 50\n"}
    assert config_hash(a) == config_hash(b)
    assert config_hash({}) == config_hash(render_defaults())


def test_an_invalid_edit_reports_every_error() -> None:
    data = {
        EVENT_STORE_FILE: "snapshot_frequency: 0\nretention_days: -1\nbogus: 1\n",
        PROJECTIONS_FILE: "workers: 0\n",
    }
    with pytest.raises(SettingsError) as info:
        validate_config_data(data)
    message = str(info.value)
    for part in (
        "event-store.yaml: snapshot_frequency: ",
        "event-store.yaml: retention_days: ",
        "event-store.yaml: bogus: unknown key",
        "projections.yaml: workers: ",
    ):
        assert part in message, (part, message)
    keys = [k for _, k, _ in info.value.errors]
    assert keys == ["snapshot_frequency", "retention_days", "bogus", "workers"]
    assert pickle.loads(pickle.dumps(info.value)).errors == info.value.errors


@pytest.mark.parametrize(("text", "line"), [
    ("snapshot_frequency: 50\nretention_days: [1, 2\nmax_events_per_aggregate: 3\n", 2),
    ('snapshot_frequency: 50\nretention_days 3\nmax_events_per_aggregate: 3\n', 2),
    ('snapshot_frequency: 50\n  retention_days: 3\n', 2),
    ("aggregates:\n  Account: a:b\n Bad: x\nsnapshot_frequency: 3\n", 3),
])
def test_broken_yaml_names_the_bad_line(text: str, line: int) -> None:
    with pytest.raises(SettingsError, match=rf"invalid YAML at line {line}, "):
        validate_config_data({EVENT_STORE_FILE: text})


def test_config_dir_from_env() -> None:
    assert config_dir_from_env({}) == DEFAULT_CONFIG_DIR == Path("/etc/eventstore")
    assert config_dir_from_env({"EVENTSTORE_CONFIG_DIR": "/x"}) == Path("/x")
