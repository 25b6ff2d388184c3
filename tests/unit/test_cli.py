"""The `eventstore` command line, in-process with click's runner on real SQLite files."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from eventstore import EventStore, NewEvent
from eventstore.cli import main


def test_check_config_valid_and_invalid(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "good"
    good.mkdir()
    (good / "event-store.yaml").write_text("snapshot_frequency: 50\n")
    result = runner.invoke(main, ["check-config", str(good)])
    assert result.exit_code == 0, result.output
    assert '"snapshot_frequency": 50' in result.output

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "projections.yaml").write_text("batch_size: many\n")
    result = runner.invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 1
    assert "projections.yaml: batch_size:" in result.output and "many" in result.output

    result = runner.invoke(main, ["check-config", str(tmp_path / "absent")])
    assert result.exit_code == 1 and "no such directory" in result.output


def test_migrate_stats_and_replay(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/e.db"
    runner = CliRunner()
    result = runner.invoke(main, ["migrate", "--url", url])
    assert result.exit_code == 0 and "schema is at version" in result.output
    with EventStore.connect(url) as store:
        store.append("acc-1", [NewEvent("AccountOpened", {"owner": "a"}),
                               NewEvent("Deposited", {"amount": 4})])
    result = runner.invoke(main, ["stats", "--url", url, "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["events"] == 2

    config = tmp_path / "config"
    config.mkdir()
    (config / "projections.yaml").write_text(
        'projections:\n  balances: "eventstore.projections.bank:AccountBalances"\n')
    result = runner.invoke(main, ["replay", "balances", "--url", url, "--config-dir",
                                  str(config), "--timeout", "30"])
    assert result.exit_code == 0, result.output
    assert "balances: caught up" in result.output
    result = runner.invoke(main, ["replay", "nope", "--url", url, "--config-dir", str(config)])
    assert result.exit_code == 1 and "no projection named 'nope'" in result.output


def test_stats_on_a_bad_url_fails_cleanly() -> None:
    result = CliRunner().invoke(main, ["stats", "--url", "mysql://x/y"])
    assert result.exit_code == 1 and "unsupported event store URL" in result.output


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--url", f"sqlite:///{tmp_path}/demo.db"])
    assert result.exit_code == 0, result.output
    assert "demo finished" in result.output
    result = CliRunner().invoke(main, ["demo"])  # a fresh temp file
    assert result.exit_code == 0, result.output
