"""The registry-free image recipes (tests/harness/images.py) keep the Dockerfile's runtime
contract and the operator's: no root, no build, only the declared recipes and the files.

The store image is built twice in this project: by Docker from the Dockerfile, and without
Docker for the one-node cluster. Both must give pods the same user, entrypoint, command,
working directory, port, /data ownership and environment.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from eventstore_operator import builders, names
from tests.harness import images

REPO = Path(__file__).resolve().parents[2]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions(REPO / "Dockerfile")
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from + 1:]


def _one(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [rest for k, rest in stage if k == keyword]
    assert len(values) == 1, f"expected one {keyword} in the Dockerfile's final stage: {values}"
    return values[0]


def _pairs(text: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(text))


def _commands(stage: list[tuple[str, str]]) -> list[list[str]]:
    """Every simple command of the final stage's RUN lines, split into words."""
    out: list[list[str]] = []
    for keyword, rest in stage:
        if keyword == "RUN":
            for command in rest.split("&&"):
                words = shlex.split(command)
                while words and words[0].startswith("--mount="):
                    words.pop(0)
                if words:
                    out.append(words)
    return out


def _option(words: list[str], *flags: str) -> str:
    for i, word in enumerate(words):
        if word in flags:
            return words[i + 1]
    raise AssertionError(f"none of {flags} in {words}")


STAGE = _final_stage()
STORE = images.STORE.config


def test_user_entrypoint_cmd_workdir_and_port_match_the_dockerfile() -> None:
    assert STORE.user == _one(STAGE, "USER")
    assert list(STORE.entrypoint) == json.loads(_one(STAGE, "ENTRYPOINT"))
    assert list(STORE.cmd) == json.loads(_one(STAGE, "CMD"))
    assert STORE.working_dir == _one(STAGE, "WORKDIR")
    exposed = {p if "/" in p else f"{p}/tcp" for p in _one(STAGE, "EXPOSE").split()}
    assert set(STORE.exposed_ports) == exposed


def test_every_dockerfile_env_is_in_the_recipe() -> None:
    declared: dict[str, str] = {}
    for keyword, rest in STAGE:
        if keyword == "ENV":
            declared.update(_pairs(rest))
    assert declared, "the Dockerfile's final stage sets no ENV?"
    env = STORE.env_dict()
    assert {k: env.get(k) for k in declared} == declared
    # The Dockerfile's base image puts its python on PATH; the recipe's venv must be there.
    assert env["PATH"].split(":")[0] == f"{images.STORE_VENV}/bin"


def test_labels_match_the_dockerfile() -> None:
    assert dict(STORE.labels) == _pairs(_one(STAGE, "LABEL"))


def test_user_group_and_data_dir_match_the_dockerfile() -> None:
    commands = _commands(STAGE)
    groupadd = next(c for c in commands if c[0] == "groupadd")
    useradd = next(c for c in commands if c[0] == "useradd")
    install = next(c for c in commands if c[:2] == ["install", "-d"])
    account = images.STORE_ACCOUNT
    assert (account.name, str(account.uid)) == (groupadd[-1], _option(groupadd, "--gid", "-g"))
    assert account.name == useradd[-1]
    assert str(account.uid) == _option(useradd, "--uid", "-u") == _option(useradd, "--gid", "-g")
    assert account.home == _option(useradd, "--home-dir", "-d")
    assert account.shell == _option(useradd, "--shell", "-s") == "/usr/sbin/nologin"
    data = images.OwnedDir(install[-1], int(_option(install, "-o")), int(_option(install, "-g")),
                           int(_option(install, "-m"), 8))
    assert data in images.STORE.dirs
    assert data.path == STORE.working_dir


def test_recipes_match_what_the_operator_runs() -> None:
    assert images.STORE_ACCOUNT.uid == builders.RUN_AS_USER
    assert STORE.user == f"{builders.RUN_AS_USER}:{builders.RUN_AS_USER}"
    for recipe in (images.POSTGRES, images.MONGODB):
        assert [a.uid for a in recipe.accounts] == [builders.DB_RUN_AS_USER], recipe.key
    spec = {"postgres": {"mode": "InCluster"}, "mongodb": {"mode": "InCluster"}}
    owner = builders.Owner(name="demo", namespace="ns", uid="0")
    postgres = builders.postgres_statefulset(owner, spec)["spec"]["template"]["spec"]["containers"][0]
    # The operator's args replace CMD and must reach the server through the entrypoint.
    assert postgres["args"][0] == images.POSTGRES.config.cmd[0] == "postgres"
    assert "command" not in postgres
    assert images.POSTGRES.config.stop_signal == "SIGINT"
    pgdata = next(e["value"] for e in postgres["env"] if e["name"] == "PGDATA")
    data_mount = next(m["mountPath"] for m in postgres["volumeMounts"] if m["name"] == names.data_volume())
    assert pgdata.startswith(data_mount + "/")
    mongodb = builders.mongodb_statefulset(owner, spec)["spec"]["template"]["spec"]["containers"][0]
    data_mount = next(m["mountPath"] for m in mongodb["volumeMounts"] if m["name"] == names.data_volume())
    env = images.MONGODB.config.env_dict()
    assert env["FERRETDB_SQLITE_URL"] == f"file:{data_mount}/"
    assert env["FERRETDB_LISTEN_ADDR"] == f":{names.MONGODB_PORT}"


def test_store_image_name_is_the_charts_and_examples() -> None:
    chart = yaml.safe_load((REPO / "charts" / "eventstore" / "Chart.yaml").read_text())
    example = yaml.safe_load((REPO / "manifests" / "examples" / "eventstore.yaml").read_text())
    assert f"ghcr.io/eventstore-py/eventstore:{chart['appVersion']}" == images.STORE_IMAGE
    assert example["spec"]["image"] == images.STORE_IMAGE == names.DEFAULT_IMAGE


def test_cache_keys_are_stable_and_follow_the_inputs() -> None:
    assert images.PAUSE.cache_key() == images.PAUSE.cache_key()
    changed = images.Recipe(**{**vars(images.PAUSE), "version": images.PAUSE.version + "x"})
    assert changed.cache_key() != images.PAUSE.cache_key()


@pytest.mark.parametrize("script", [images.POSTGRES_ENTRYPOINT, images.MONGODB_ENTRYPOINT])
def test_entrypoints_are_valid_posix_sh(script: str) -> None:
    result = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr


def _file_env(tmp_path: Path, env: dict[str, str], *call: str) -> subprocess.CompletedProcess[str]:
    script = images.FILE_ENV_SH + f"file_env {' '.join(map(shlex.quote, call))}\n" \
        'printf "%s|%s" "$SECRET" "${SECRET_FILE-unset}"\n'
    return subprocess.run(["sh", "-euc", script], text=True, capture_output=True, check=False,
                          env={"PATH": "/usr/bin:/bin", **env}, cwd=tmp_path)


def test_file_env_reads_the_file_variant_like_the_official_images(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from file\n")
    assert _file_env(tmp_path, {"SECRET_FILE": str(secret)}, "SECRET").stdout == "from file|unset"
    assert _file_env(tmp_path, {"SECRET": "plain"}, "SECRET").stdout == "plain|unset"
    assert _file_env(tmp_path, {}, "SECRET", "fallback").stdout == "fallback|unset"
    both = _file_env(tmp_path, {"SECRET": "a", "SECRET_FILE": str(secret)}, "SECRET")
    assert both.returncode != 0 and "exclusive" in both.stderr
