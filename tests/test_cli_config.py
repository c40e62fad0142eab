"""Settings from flags, environment, project file, user file and defaults;
``assetcache config``, ``path`` and ``completion``."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from cli_support import invoke, script

from assetcache import AssetCache
from assetcache._errors import ConfigurationError
from assetcache._settings import resolve


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """A user file and a project, the working folder inside the project."""
    user = tmp_path / "user" / "config.toml"
    user.parent.mkdir()
    user.write_text('concurrency = 3\nupload_task = "mediaStorage"\nmargin = "2d"\n')
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.assetcache]\nconcurrency = 5\ndb = "state/cache.db"\n'
    )
    monkeypatch.chdir(project / "sub")
    return {"user": user, "project": project}


def env_for(layers, **extra):
    return {"ASSETCACHE_CONFIG": str(layers["user"]), "ASSETCACHE_NO_PROJECT_CONFIG": None, **extra}


def test_precedence_flag_env_project_user_default(layers):
    env = {"ASSETCACHE_CONFIG": str(layers["user"])}
    r = resolve(env=env)
    assert (r["concurrency"], r.source("concurrency")) == (5, "project")
    assert (r["upload_task"], r.source("upload_task")) == ("mediaStorage", "user")
    assert (r["margin"], r.source("margin")) == (2 * 86400.0, "user")
    assert (r["batch_size"], r.source("batch_size")) == (32, "default")
    assert r["db"] == str(layers["project"] / "state" / "cache.db")
    r = resolve(env={**env, "ASSETCACHE_CONCURRENCY": "7", "ASSETCACHE_UPLOAD_TASK": "imageUpload"})
    assert (r["concurrency"], r.source("concurrency")) == (7, "env")
    assert r.values["concurrency"].origin == "env ASSETCACHE_CONCURRENCY"
    assert r["upload_task"] == "imageUpload"
    r = resolve({"concurrency": 9}, given_origin={"concurrency": "--x"}, env=env)
    assert (r["concurrency"], r.source("concurrency"), r.values["concurrency"].origin) == (
        9,
        "flag",
        "--x",
    )


def test_bad_values_name_their_origin(layers, tmp_path):
    with pytest.raises(ConfigurationError, match="env ASSETCACHE_CONCURRENCY"):
        resolve(env={"ASSETCACHE_CONFIG": "", "ASSETCACHE_CONCURRENCY": "lots"})
    layers["user"].write_text("concurrncy = 3\n")
    with pytest.raises(ConfigurationError, match="unknown setting.*concurrncy"):
        resolve(env={"ASSETCACHE_CONFIG": str(layers["user"])})
    layers["user"].write_text('keep_copies = "maybe"\n')
    with pytest.raises(ConfigurationError, match=r"config\.toml.*keep_copies"):
        resolve(env={"ASSETCACHE_CONFIG": str(layers["user"])})


def test_config_command_shows_values_and_origins(layers):
    result = invoke("--keep-copies", "config", env=env_for(layers, ASSETCACHE_BATCH_SIZE="4"))
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert lines["keep_copies"].split()[1:] == ["true", "--keep-copies"]
    assert lines["batch_size"].split()[1:] == ["4", "env", "ASSETCACHE_BATCH_SIZE"]
    assert "pyproject.toml [tool.assetcache]" in lines["concurrency"]
    assert str(layers["user"]) in lines["upload_task"]
    assert lines["retention"].split()[1:] == ["30d", "default"]
    assert str(layers["user"]) in result.stderr


def test_config_json_never_holds_the_key(layers):
    key = "sk-super-secret-0123456789"
    result = invoke("config", "--json", env=env_for(layers, RUNWARE_API_KEY=key))
    assert result.exit_code == 0
    assert key not in result.output
    data = json.loads(result.stdout)
    entry = data["settings"]["api_key"]
    assert entry["set"] is True and entry["value"] is None and entry["source"] == "env"
    assert len(entry["account"]) == 16
    assert data["settings"]["concurrency"] == {
        "value": 5,
        "source": "project",
        "origin": f"project file {layers['project'] / 'pyproject.toml'} [tool.assetcache]",
    }
    assert data["files"]["user"] == {"path": str(layers["user"]), "exists": True}


def test_api_key_from_user_file_only_when_private(layers, tmp_path):
    key = "sk-from-the-user-file-42"
    layers["user"].write_text(f'api_key = "{key}"\n')
    os.chmod(layers["user"], 0o644)
    result = invoke("config", env=env_for(layers))
    assert result.exit_code == 2
    assert "chmod 600" in result.stderr and key not in result.output
    os.chmod(layers["user"], 0o600)
    result = invoke("config", "--json", env=env_for(layers))
    assert result.exit_code == 0 and key not in result.output
    assert json.loads(result.stdout)["settings"]["api_key"]["source"] == "user"


def test_the_library_reads_the_same_layers(layers, emu):
    (layers["project"] / "state").mkdir()
    os.environ["ASSETCACHE_CONFIG"] = str(layers["user"])
    try:
        with AssetCache("k", base_url=emu.base_url) as cache:
            assert cache.db_path == str(layers["project"] / "state" / "cache.db")
            settings = cache.doctor().settings
            assert settings["task_type"] == "mediaStorage"  # user file
        with AssetCache("k", base_url=emu.base_url, upload_task="imageUpload") as cache:
            assert cache.doctor().settings["task_type"] == "imageUpload"  # argument wins
    finally:
        os.environ["ASSETCACHE_CONFIG"] = ""


def test_path_prints_the_database_path(tmp_path):
    result = invoke("--db", tmp_path / "x.db", "path")
    assert result.exit_code == 0 and result.stdout == f"{tmp_path / 'x.db'}\n"
    assert not (tmp_path / "x.db").exists()  # nothing created
    pg = invoke("--db", "postgresql://app:hunter2@db.internal/assets", "path")
    assert pg.exit_code == 0 and "hunter2" not in pg.stdout and "db.internal" in pg.stdout


def test_explicit_db_in_a_missing_folder_is_an_error(tmp_path):
    db = tmp_path / "no" / "such" / "dir" / "x.db"
    result = invoke("--emulator", "--db", db, "ls")
    assert result.exit_code == 2
    assert f"folder {db.parent} does not exist" in result.stderr
    assert not (tmp_path / "no").exists()
    result = invoke("--emulator", "ls", env={"ASSETCACHE_DB": str(db)})
    assert result.exit_code == 2 and "env ASSETCACHE_DB" in result.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell):
    result = invoke("completion", shell)
    assert result.exit_code == 0
    assert "_ASSETCACHE_COMPLETE" in result.stdout


def test_completion_really_completes_in_a_subprocess():
    env = {
        **os.environ,
        "_ASSETCACHE_COMPLETE": "bash_complete",
        "COMP_WORDS": "assetcache sta",
        "COMP_CWORD": "1",
    }
    out = subprocess.run([script()], env=env, capture_output=True, text=True, timeout=60)
    assert "stats" in out.stdout and "status" in out.stdout


def test_quiet_silences_summaries_before_or_after_the_command(tmp_path):
    db = tmp_path / "cache.db"
    loud = invoke("--emulator", "--db", db, "stats")
    assert loud.exit_code == 0
    for args in (["-q", "prune"], ["prune", "--quiet"]):
        result = invoke("--emulator", "--db", db, *args)
        assert result.exit_code == 0 and result.stderr == "", args


def test_every_command_takes_quiet_and_every_listing_nl():
    from assetcache._cli import cli

    for name, command in cli.commands.items():
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        assert {"-q", "--quiet"} <= opts, name
    for name in ("upload", "status", "ls", "refresh", "verify", "forget", "prune"):
        opts = {o for p in cli.commands[name].params for o in getattr(p, "opts", [])}
        assert "--nl" in opts, name
